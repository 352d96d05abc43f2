package main

import (
	"net/http"
	"sync/atomic"
	"time"
)

// counter counts the HTTP requests of one store (or of the raw client) by
// method, as they leave the process.
type counter struct {
	get, head, post, put, patch, del, other atomic.Int64
}

type counts struct {
	Total  int64            `json:"total"`
	Method map[string]int64 `json:"by_method"`
}

func (c *counter) snapshot() counts {
	m := map[string]int64{
		"GET": c.get.Load(), "HEAD": c.head.Load(), "POST": c.post.Load(), "PUT": c.put.Load(),
		"PATCH": c.patch.Load(), "DELETE": c.del.Load(), "other": c.other.Load(),
	}
	var s counts
	s.Method = map[string]int64{}
	for k, v := range m {
		if v != 0 {
			s.Method[k] = v
			s.Total += v
		}
	}
	return s
}

// since is the difference of two snapshots.
func (s counts) since(before counts) counts {
	d := counts{Method: map[string]int64{}}
	for k, v := range s.Method {
		if n := v - before.Method[k]; n != 0 {
			d.Method[k] = n
			d.Total += n
		}
	}
	return d
}

// count counts one request of method.
func (c *counter) count(method string) {
	switch method {
	case http.MethodGet:
		c.get.Add(1)
	case http.MethodHead:
		c.head.Add(1)
	case http.MethodPost:
		c.post.Add(1)
	case http.MethodPut:
		c.put.Add(1)
	case http.MethodPatch:
		c.patch.Add(1)
	case http.MethodDelete:
		c.del.Add(1)
	default:
		c.other.Add(1)
	}
}

// wrap returns a RoundTripper that counts what it sends to next.
func (c *counter) wrap(next http.RoundTripper) http.RoundTripper {
	return roundTripFunc(func(req *http.Request) (*http.Response, error) {
		c.count(req.Method)
		return next.RoundTrip(req)
	})
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(req *http.Request) (*http.Response, error) { return f(req) }

// rawTransport is the transport of the raw client: the one the host's
// client is built from (host/transport.go), without TLS or credentials,
// which a loopback registry does not use.
func rawTransport(conc int) *http.Transport {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.MaxIdleConnsPerHost = conc + 2
	t.ResponseHeaderTimeout = 2 * time.Minute
	return t
}

// plus is the sum of two counts.
func (s counts) plus(o counts) counts {
	d := counts{Total: s.Total + o.Total, Method: map[string]int64{}}
	for k, v := range s.Method {
		d.Method[k] += v
	}
	for k, v := range o.Method {
		d.Method[k] += v
	}
	return d
}
