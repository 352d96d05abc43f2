package registrytest

import "syscall"

// sysProcAttr has the kernel kill a registry process when the thread that
// started it ends, so that none outlives a test binary that dies without
// running its cleanups (a test timeout, for one).
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
