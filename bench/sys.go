package main

import (
	"bufio"
	"bytes"
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Peak resident memory of this process, from /proc/self/status. The
// registry is another process and is not counted.

// rssReset tells whether the peak can be reset between phases: writing 5
// to /proc/self/clear_refs resets VmHWM to the current RSS (Linux 4.0+).
var rssReset = resetPeakRSS()

// resetPeakRSS returns what can be returned to the system and resets the
// peak to what is left.
func resetPeakRSS() bool {
	runtime.GC()
	debug.FreeOSMemory()
	return os.WriteFile("/proc/self/clear_refs", []byte("5"), 0) == nil
}

// settle writes back the dirty pages of the registry's storage before a
// slice is timed. The kernel writes them back when it sees fit, tens of
// seconds later: the gigabytes that puts leave behind would otherwise be
// written on the clock of whatever runs then, another variant or the next
// workload, and take CPU and disk from it.
func settle() { syscall.Sync() }

// peakRSS is VmHWM in bytes, or 0 where /proc is not there.
func peakRSS() int64 { return procStatus("self", "VmHWM") }

// procStatus is the value of key in /proc/PID/status, in bytes.
func procStatus(pid, key string) int64 {
	b, err := os.ReadFile("/proc/" + pid + "/status")
	if err != nil {
		return 0
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok || k != key {
			continue
		}
		f := strings.Fields(v)
		if len(f) == 0 {
			return 0
		}
		n, _ := strconv.ParseInt(f[0], 10, 64)
		return n << 10 // kB
	}
	return 0
}

// cpuModel names the processor, for the report.
func cpuModel() string {
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return runtime.GOARCH
	}
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return runtime.GOARCH
}

// loadAverage is the first three fields of /proc/loadavg: the benchmark
// shares the machine with whatever else runs.
func loadAverage() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], " ")
}

// cpuTime is the CPU time this process used so far, user and system.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
