//go:build !unix

package vault

import (
	"io/fs"
	"os"
	"time"
)

// lutimes sets the times of rel; a symlink's are left as they are.
func lutimes(root *os.Root, rel string, t time.Time) error {
	if fi, err := root.Lstat(rel); err == nil && fi.Mode()&fs.ModeSymlink != 0 {
		return nil
	}
	return root.Chtimes(rel, t, t)
}
