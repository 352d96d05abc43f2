//go:build unix

package vault

import (
	"io/fs"
	"os"
	"path"
	"time"

	"golang.org/x/sys/unix"
)

// atParent runs fn on the directory that holds rel, opened through root,
// and rel's last component: the *at system calls that os.Root does not
// offer act on that name without following it.
func atParent(root *os.Root, rel string, fn func(dirfd int, name string) error) error {
	d, err := root.Open(path.Dir(rel))
	if err != nil {
		return err
	}
	defer d.Close()
	return fn(int(d.Fd()), path.Base(rel))
}

// lutimes sets the times of rel itself, a symlink's and not its target's.
func lutimes(root *os.Root, rel string, t time.Time) error {
	return atParent(root, rel, func(dirfd int, name string) error {
		ts := unix.NsecToTimespec(t.UnixNano())
		return unix.UtimesNanoAt(dirfd, name, []unix.Timespec{ts, ts}, unix.AT_SYMLINK_NOFOLLOW)
	})
}

// mknod makes a fifo or a socket at rel, with mode's permission bits
// (the umask applies; setMeta sets them exactly afterwards).
func mknod(root *os.Root, rel string, mode fs.FileMode, dev int) error {
	kind := uint32(unix.S_IFIFO)
	if mode&fs.ModeSocket != 0 {
		kind = unix.S_IFSOCK
	}
	return atParent(root, rel, func(dirfd int, name string) error {
		return unix.Mknodat(dirfd, name, kind|uint32(mode.Perm()), dev)
	})
}
