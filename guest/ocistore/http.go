package ocistore

import (
	"fmt"
	"io"
	"net/url"
	"slices"
	"strings"

	"github.com/plakar-oci/ocistore/abi"
)

// readChunk bounds one streams.read: each call copies through guest
// memory, so big documents are read in pieces.
const readChunk = 1 << 20

// maxManifest is the largest manifest registries must accept (OCI
// distribution spec); ours are a few hundred bytes.
const maxManifest = 4 << 20

// send performs one round trip. A network failure comes back as a
// transient error; an HTTP error status comes back as a response. The host
// logs each request (session.RoundTrip): formatting it here would cost the
// sandbox more than the request's own lifting.
func (c *call) send(req *abi.Request) (*abi.Response, error) {
	resp, err := c.s.h.RoundTrip(req)
	if err != nil {
		return nil, networkError(c.action(), err)
	}
	return resp, nil
}

// request is a request in the call's memory (Store.Reset): each is its
// own until the call ends, and a request retried is the same request.
func (c *call) request(method, url string, header ...abi.Header) *abi.Request {
	r := c.s.reqs.Next()
	*r = abi.Request{Method: method, URL: url, Header: append(r.Header[:0], header...)}
	return r
}

// start starts req in the host (http.start), for finish to pick up.
func (c *call) start(req *abi.Request) abi.Pending { return c.s.h.Start(req) }

// finish is send of req, which started is the request of.
func (c *call) finish(req *abi.Request, started abi.Pending) (*abi.Response, error) {
	resp, err := c.s.h.Finish(started)
	if err != nil {
		return nil, networkError(c.action(), err)
	}
	return resp, nil
}

// logPath keeps the path of a request URL: queries of upload locations
// carry upload state, and absolute URLs name hosts the log need not repeat.
func logPath(u string) string {
	if p, err := url.Parse(u); err == nil && p.Path != "" {
		return p.Path
	}
	p, _, _ := strings.Cut(u, "?")
	return p
}

// fail turns an error answer into the contract's error, consuming the body.
func (s *Store) fail(action string, resp *abi.Response) error {
	body, _, _ := s.read(resp.Body, nil, maxErrorBody, -1)
	s.h.Close(resp.Body)
	return s.failWith(action, resp, body)
}

// failWith is fail for an answer whose body the caller read.
func (s *Store) failWith(action string, resp *abi.Response, body []byte) *abi.Error {
	err := httpError(s.loc, action, resp.Status, body)
	if after := retryAfter(resp.Get("Retry-After"), s.now()); err.Code == abi.ErrTransient && after > 0 {
		err.Message += fmt.Sprintf(" (it asks to wait %v)", after)
	}
	return err
}

// discard closes the body of an answer whose content does not matter. An
// empty one (Content-Length: 0, as registries answer a POST or a PUT) is
// left to the host, which closes what a call leaves open when it returns
// (wit/storage.wit): a call to the host costs the sandboxed guest more
// than the host's side of it, and a put would make three for nothing.
func (s *Store) discard(resp *abi.Response) {
	if resp.Get("Content-Length") != "0" {
		s.h.Close(resp.Body)
	}
}

// read reads st up to limit bytes, into buf if it has room; more tells
// whether st had more. size, when it is not -1, is how many bytes st
// should have (its Content-Length): the buffer is made for them at once,
// with a byte to spare for the read that sees the end, rather than grown
// as they come, up to readChunk, as the header may lie.
func (s *Store) read(st abi.Stream, buf []byte, limit, size int) (data []byte, more bool, err error) {
	first := 4 << 10
	if size >= 0 && size <= limit {
		first = min(size, readChunk) + 1
	}
	if data = buf[:0]; cap(data) < min(first, limit+1) {
		data = make([]byte, 0, min(first, limit+1))
	}
	for len(data) <= limit {
		if len(data) == cap(data) {
			data = slices.Grow(data, min(limit+1-len(data), max(len(data), 4<<10), readChunk))
		}
		n, err := s.h.Read(st, data[len(data):min(cap(data), limit+1)])
		if err == io.EOF {
			return data, false, nil
		}
		if err != nil {
			return data, false, err
		}
		data = data[:len(data)+n]
	}
	return data[:limit], true, nil
}

// atEnd tells whether st has no byte left to read.
func (s *Store) atEnd(st abi.Stream) bool {
	n, err := s.h.Read(st, s.mem.Make(1))
	return n == 0 && err == io.EOF
}

// readDoc reads and closes the body of a successful answer that is a
// document of at most limit bytes (a manifest, a tag list, a config), into
// buf if it has room.
func (c *call) readDoc(what string, resp *abi.Response, limit int, buf []byte) ([]byte, error) {
	s := c.s
	defer s.h.Close(resp.Body)
	size := -1 // unknown: a tag list is most often sent in chunks
	if n, ok := parseDecimal(resp.Get("Content-Length")); ok && n <= uint64(limit) {
		size = int(n)
	}
	data, more, err := s.read(resp.Body, buf, limit, size)
	if err != nil {
		return nil, &abi.Error{Code: abi.ErrTransient, Message: fmt.Sprintf(
			"%s: reading the %s from registry %s failed: %v: try again", c.action(), what, s.loc.Registry, err)}
	}
	if more {
		return nil, errorf(abi.ErrOther, "%s: the %s from registry %s is larger than %d bytes: %s does not look like a Plakar store",
			c.action(), what, s.loc.Registry, limit, s.loc)
	}
	return data, nil
}

// headerValues returns every value of the headers named name.
func headerValues(header []abi.Header, name string) []string {
	var vs []string
	for _, h := range header {
		if abi.HeaderNamed(h, name) {
			vs = append(vs, h[1])
		}
	}
	return vs
}

func ok2xx(status int) bool { return status >= 200 && status < 300 }

// Paths of the distribution API for the store's repository.
func (s *Store) manifestURL(ref string) string { return s.mem.Concat(s.manifests, ref) }

func (s *Store) blobURL(digest string) string { return s.mem.Concat(s.blobs, digest) }

var acceptManifest = abi.Header{"Accept", mediaTypeManifest}
