package hashstore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"sync/atomic"
)

// Pieces the remote backends share.

// RequestCounts counts a backend's requests by operation; the zero value
// is ready to use and safe for concurrent use.
type RequestCounts struct {
	m sync.Map // operation -> *atomic.Int64
}

// Add counts one request of op.
func (c *RequestCounts) Add(op string) {
	v, _ := c.m.LoadOrStore(op, new(atomic.Int64))
	v.(*atomic.Int64).Add(1)
}

// Snapshot returns the counts so far.
func (c *RequestCounts) Snapshot() map[string]int64 {
	out := map[string]int64{}
	c.m.Range(func(k, v any) bool {
		out[k.(string)] = v.(*atomic.Int64).Load()
		return true
	})
	return out
}

// ReadObjectRange implements GetRange for object stores whose ranged read
// has no empty range (a zero length means "to the end") and refuses a
// range that starts at the end (S3, GCS, Azure): stat gives the size when
// the answer depends on it, open reads offset..offset+length (length < 0:
// to the end) and reports a refused range as ErrInvalidRange.
func ReadObjectRange(ctx context.Context, key string, offset, length int64,
	stat func(ctx context.Context, key string) (Info, error), open func() (io.ReadCloser, error)) (io.ReadCloser, error) {
	if offset < 0 {
		return nil, fmt.Errorf("get %s: negative offset %d: %w", key, offset, ErrInvalidRange)
	}
	if length == 0 {
		info, err := stat(ctx, key)
		if err != nil {
			return nil, err
		}
		if offset > info.Size {
			return nil, fmt.Errorf("get %s: offset %d beyond size %d: %w", key, offset, info.Size, ErrInvalidRange)
		}
		return io.NopCloser(strings.NewReader("")), nil
	}
	rc, err := open()
	if errors.Is(err, ErrInvalidRange) {
		// A range starting exactly at the end is empty, not invalid.
		if info, serr := stat(ctx, key); serr == nil && offset == info.Size {
			return io.NopCloser(strings.NewReader("")), nil
		}
	}
	return rc, err
}

// NameReadErrors returns a reader of r, closed by c, whose read errors
// (not io.EOF) say which key was being read.
func NameReadErrors(key string, r io.Reader, c io.Closer) io.ReadCloser {
	return &namedReader{r: r, c: c, key: key}
}

type namedReader struct {
	r   io.Reader
	c   io.Closer
	key string
}

func (n *namedReader) Read(p []byte) (int, error) {
	k, err := n.r.Read(p)
	if err != nil && err != io.EOF {
		err = fmt.Errorf("read %s: %w", n.key, err)
	}
	return k, err
}

func (n *namedReader) Close() error { return n.c.Close() }
