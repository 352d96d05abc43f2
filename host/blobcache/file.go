package blobcache

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
)

// Corrupted starts the message of a download whose bytes do not match
// their digest (here and in session's streams). The message crosses the
// sandbox as text, so this is how it is recognised (host.IsCorrupted).
const Corrupted = "corrupted download"

// A window file: a header (magic, the blob's digest and size, the window's
// offset and length), the sha256 of each block (4 KiB) of the window, then the
// window. Reads check the header against what they ask for and the blocks
// they return against their sums, so that a file damaged on disk is found
// and fetched again rather than returned. The sums guard the disk, not
// the registry: a window's bytes are what the registry sent for that range
// (only a whole blob is checked against its digest, in writeWindow).

const (
	magic     = "ociwin01"
	headerLen = len(magic) + sha256.Size + 3*8
	// blockSize is the grain of the sums: a read hashes its own bytes and
	// at most a block either side, and a window of 20 MiB has 160 KiB of
	// sums.
	blockSize = 4 << 10
)

// tempPrefix names the files being written, renamed into place when whole.
const tempPrefix = ".tmp-"

func diskError(err error) error {
	return fmt.Errorf("read-ahead cache: %w: free space, set readahead_cache_dir to another directory, or readahead_cache_size to 0 to read without it", err)
}

func blocks(n uint64) uint64 { return (n + blockSize - 1) / blockSize }

func header(digest string, size uint64, r Range) ([]byte, error) {
	raw, err := hex.DecodeString(strings.TrimPrefix(digest, "sha256:"))
	if err != nil || len(raw) != sha256.Size || !strings.HasPrefix(digest, "sha256:") {
		return nil, fmt.Errorf("read-ahead cache: %q is not a sha256 digest", digest)
	}
	h := make([]byte, 0, headerLen)
	h = append(h, magic...)
	h = append(h, raw...)
	h = binary.LittleEndian.AppendUint64(h, size)
	h = binary.LittleEndian.AppendUint64(h, r.Off)
	return binary.LittleEndian.AppendUint64(h, r.N), nil
}

// writeWindow writes the window r of the blob from body into path, through
// a temporary file renamed into place, and returns the file's size. body
// must hold exactly r.N bytes; a whole blob must match digest.
func writeWindow(path string, body io.Reader, digest string, size uint64, r Range) (int64, error) {
	hdr, err := header(digest, size, r)
	if err != nil {
		return 0, err
	}
	f, err := os.CreateTemp(filepath.Dir(path), tempPrefix+"*")
	if err != nil {
		return 0, diskError(err)
	}
	ok := false
	defer func() {
		if !ok {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	nb := blocks(r.N)
	sums := make([]byte, nb*sha256.Size)
	dataStart := int64(headerLen) + int64(len(sums))
	if _, err := f.Seek(dataStart, io.SeekStart); err != nil {
		return 0, err
	}
	whole := sha256.New()
	// Read and written 16 blocks at a time, summed a block at a time.
	buf := make([]byte, 16*blockSize)
	var got uint64
	for {
		m, err := io.ReadFull(body, buf)
		if m > 0 {
			if got+uint64(m) > r.N {
				return 0, fmt.Errorf("the registry sent more than the %d bytes asked at offset %d of blob %s", r.N, r.Off, digest)
			}
			for i := 0; i < m; i += blockSize {
				s := sha256.Sum256(buf[i:min(i+blockSize, m)])
				copy(sums[(got/blockSize+uint64(i/blockSize))*sha256.Size:], s[:])
			}
			whole.Write(buf[:m])
			if _, werr := f.Write(buf[:m]); werr != nil {
				return 0, diskError(werr)
			}
			got += uint64(m)
		}
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			break
		}
		if err != nil {
			return 0, err
		}
	}
	if got != r.N {
		return 0, fmt.Errorf("the registry sent %d bytes where %d were asked at offset %d of blob %s: try again", got, r.N, r.Off, digest)
	}
	if r.Off == 0 && r.N == size {
		if sum := "sha256:" + hex.EncodeToString(whole.Sum(nil)); sum != digest {
			return 0, fmt.Errorf("%s: expected %s (%d bytes), got %s: the registry or the network altered the data; try again", Corrupted, digest, size, sum)
		}
	}
	if _, err := f.WriteAt(append(hdr, sums...), 0); err != nil {
		return 0, diskError(err)
	}
	if err := f.Close(); err != nil {
		return 0, diskError(err)
	}
	if err := os.Rename(f.Name(), path); err != nil {
		return 0, diskError(err)
	}
	ok = true
	return dataStart + int64(got), nil
}

// open opens the file of window w of the blob, once: the window is kept
// open while it is in the cache, so that a read costs no open. Its header
// is checked then, and its sums kept: a read then reads its own bytes
// only, and a file written over since (in place: windows are replaced by
// rename, which an open file does not see) fails the sums of what it
// returns. Called with c.mu held.
func (w *window) open(digest string, size uint64) error {
	if w.f != nil {
		return nil
	}
	want, err := header(digest, size, Range{w.off, w.n})
	if err != nil {
		return err
	}
	f, err := os.Open(w.path)
	if err != nil {
		return err
	}
	head := make([]byte, headerLen+int(blocks(w.n))*sha256.Size)
	if _, err := f.ReadAt(head, 0); err != nil || !bytes.Equal(head[:headerLen], want) {
		f.Close()
		return errDamaged
	}
	w.f, w.sums = f, head[headerLen:]
	return nil
}

// read returns the n bytes at off of the blob from window w, opened,
// after checking the sums of the blocks they lie in: each time, as the
// file may have been written over since.
func (w *window) read(off, n uint64) ([]byte, error) {
	first := (off - w.off) / blockSize
	last := (off + n - 1 - w.off) / blockSize
	start := first * blockSize
	end := min((last+1)*blockSize, w.n)
	data := make([]byte, end-start)
	dataStart := int64(headerLen) + int64(len(w.sums))
	if _, err := w.f.ReadAt(data, dataStart+int64(start)); err != nil {
		return nil, errDamaged
	}
	for i := range last - first + 1 {
		blk := data[i*blockSize : min((i+1)*blockSize, uint64(len(data)))]
		sum := w.sums[(first+i)*sha256.Size : (first+i+1)*sha256.Size]
		if s := sha256.Sum256(blk); !bytes.Equal(s[:], sum) {
			return nil, errDamaged
		}
	}
	rel := off - w.off - start
	return data[rel : rel+n], nil
}
