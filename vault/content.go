package vault

import (
	"fmt"
	"io"

	"github.com/PlakarKorp/kloset/objects"
	"github.com/PlakarKorp/kloset/repository"
	"github.com/PlakarKorp/kloset/snapshot/vfs"
)

// contentBudget bounds the decoded bytes a contentReader holds.
const contentBudget = 4 << 20

// minContentRange is the least a contentReader asks of the store at once.
const minContentRange = 256 << 10

// contentReader reads a file of a snapshot holding at most about
// contentBudget decoded bytes (and one chunk) at a time.
//
// Kloset's own reader (vfs.ObjectReader) asks Repository.GetObjectContent
// for 4 MiB at a time, a limit the latter applies to the bytes as stored,
// compressed: it then decodes every chunk of that range into one growing
// buffer. A zero-filled file compresses so well (and its chunks are all
// one chunk, stored once) that a single read decoded the whole file: a
// 1 GiB file of zeros took 2.7 GB. This reader consumes GetObjectContent's
// chunks one by one (it decodes them as they are yielded) and stops once
// contentBudget decoded bytes are held. How much it asks of the store
// adapts to how well the data compresses, so that compressible data is
// not fetched again and again: halved when it stopped early, doubled (up
// to contentBudget) when it used all it asked for.
type contentReader struct {
	repo   *repository.Repository
	obj    *objects.Object
	next   int      // the next chunk to fetch
	ask    uint32   // the stored bytes asked of the store at once
	chunks [][]byte // decoded, not yet read
}

func newContentReader(repo *repository.Repository, obj *objects.Object) *contentReader {
	return &contentReader{repo: repo, obj: obj, ask: contentBudget}
}

// openContent opens file e of fsys for reading with a contentReader.
func openContent(repo *repository.Repository, fsys *vfs.Filesystem, e *vfs.Entry) (io.ReadCloser, error) {
	// Open resolves the entry's object; its reader allocates nothing
	// until read.
	f, err := e.Open(fsys)
	if err != nil {
		return nil, err
	}
	f.Close()
	if e.ResolvedObject == nil {
		if e.Stat().Size() != 0 {
			return nil, fmt.Errorf("%s: the snapshot has no content for a file of %d bytes", e.Path(), e.Stat().Size())
		}
		return io.NopCloser(eofReader{}), nil
	}
	return newContentReader(repo, e.ResolvedObject), nil
}

type eofReader struct{}

func (eofReader) Read([]byte) (int, error) { return 0, io.EOF }

func (r *contentReader) Close() error {
	r.chunks = nil
	return nil
}

func (r *contentReader) fill() error {
	held, stopped := 0, false
	for data, err := range r.repo.GetObjectContent(r.obj, r.next, r.ask) {
		if err != nil {
			if c := corruption(err); c != "" {
				return fmt.Errorf("chunk %d of %x is corrupted: %s (%w)", r.next, r.obj.ContentMAC[:4], c, err)
			}
			return err
		}
		if want := r.obj.Chunks[r.next].Length; uint32(len(data)) != want {
			return fmt.Errorf("chunk %d of %x decodes to %d bytes, not %d: the store is corrupted", r.next, r.obj.ContentMAC[:4], len(data), want)
		}
		r.chunks = append(r.chunks, data)
		r.next++
		if held += len(data); held >= contentBudget && r.next < len(r.obj.Chunks) {
			stopped = true
			break
		}
	}
	if stopped {
		r.ask = max(r.ask/2, minContentRange)
	} else {
		r.ask = min(r.ask*2, contentBudget)
	}
	return nil
}

func (r *contentReader) Read(p []byte) (int, error) {
	for len(r.chunks) == 0 {
		if r.next >= len(r.obj.Chunks) {
			return 0, io.EOF
		}
		if err := r.fill(); err != nil {
			return 0, err
		}
	}
	n := copy(p, r.chunks[0])
	if r.chunks[0] = r.chunks[0][n:]; len(r.chunks[0]) == 0 {
		r.chunks[0] = nil
		r.chunks = r.chunks[1:]
	}
	return n, nil
}

// WriteTo hands the chunks to w as they are, without a copy.
func (r *contentReader) WriteTo(w io.Writer) (int64, error) {
	var total int64
	for {
		for len(r.chunks) > 0 {
			n, err := w.Write(r.chunks[0])
			total += int64(n)
			if err != nil {
				return total, err
			}
			r.chunks[0] = nil
			r.chunks = r.chunks[1:]
		}
		if r.next >= len(r.obj.Chunks) {
			return total, nil
		}
		if err := r.fill(); err != nil {
			return total, err
		}
	}
}

// damageReader says "corrupted" of a chunk that Kloset's own reader of a
// file could not decode, as contentReader and the check do; the other
// errors are the store's or the cancellation's, and say so themselves.
type damageReader struct{ io.ReadCloser }

func (d damageReader) Read(p []byte) (int, error) {
	n, err := d.ReadCloser.Read(p)
	if err != nil && err != io.EOF {
		if c := corruption(err); c != "" {
			err = fmt.Errorf("corrupted: %s (%w)", c, err)
		}
	}
	return n, err
}
