package hashstore

import (
	"context"
	"errors"
	"fmt"
	"io"

	"golang.org/x/time/rate"
)

// NewLimiter returns a limiter of bytesPerSecond for WithRateLimit and
// LimitReader (nil for 0: no limit). One limiter shared by every transfer
// of a process makes the limit hold for all of them together.
func NewLimiter(bytesPerSecond int64) *rate.Limiter {
	if bytesPerSecond <= 0 {
		return nil
	}
	// A tenth of a second's worth may go at once (at least 64 KiB, so
	// reads are not chopped into tiny pieces at low rates).
	return rate.NewLimiter(rate.Limit(bytesPerSecond), int(max(bytesPerSecond/10, 64<<10)))
}

// LimitReader returns r whose reads wait for l (r itself when l is nil).
// Reads are cut to the limiter's burst, so a large read waits in turns.
func LimitReader(ctx context.Context, r io.Reader, l *rate.Limiter) io.Reader {
	if l == nil {
		return r
	}
	lr := &limitedReader{ctx: ctx, r: r, l: l}
	if s, ok := r.(io.ReadSeeker); ok {
		return &limitedReadSeeker{limitedReader: lr, s: s}
	}
	return lr
}

type limitedReader struct {
	ctx context.Context
	r   io.Reader
	l   *rate.Limiter
}

func (lr *limitedReader) Read(p []byte) (int, error) {
	if b := lr.l.Burst(); len(p) > b {
		p = p[:b]
	}
	n, err := lr.r.Read(p)
	if n > 0 {
		if werr := lr.l.WaitN(lr.ctx, n); werr != nil && err == nil {
			err = werr
		}
	}
	return n, err
}

// limitedReadSeeker keeps a body seekable, so that retries can rewind it
// and backends that want a seekable body (a single S3 PUT) still get one.
type limitedReadSeeker struct {
	*limitedReader
	s io.Seeker
}

func (l *limitedReadSeeker) Seek(offset int64, whence int) (int64, error) {
	return l.s.Seek(offset, whence)
}

// LimitReadCloser is LimitReader for a body that must be closed.
func LimitReadCloser(ctx context.Context, rc io.ReadCloser, l *rate.Limiter) io.ReadCloser {
	if l == nil {
		return rc
	}
	return limitedReadCloser{Reader: LimitReader(ctx, rc, l), c: rc}
}

type limitedReadCloser struct {
	io.Reader
	c io.Closer
}

func (l limitedReadCloser) Close() error { return l.c.Close() }

// rateLimited is a Backend whose uploads and downloads wait for limiters.
type rateLimited struct {
	Backend
	up, down *rate.Limiter
}

// WithRateLimit wraps b so that the bytes it sends wait for up and the
// bytes it receives for down (either may be nil: no limit). Requests
// themselves are not limited, only the bytes of bodies.
func WithRateLimit(b Backend, up, down *rate.Limiter) Backend {
	if up == nil && down == nil {
		return b
	}
	return &rateLimited{Backend: b, up: up, down: down}
}

func (r *rateLimited) Put(ctx context.Context, key string, body io.Reader, size int64) error {
	return r.Backend.Put(ctx, key, LimitReader(ctx, body, r.up), size)
}

func (r *rateLimited) Get(ctx context.Context, key string) (io.ReadCloser, error) {
	return r.GetRange(ctx, key, 0, -1)
}

func (r *rateLimited) GetRange(ctx context.Context, key string, offset, length int64) (io.ReadCloser, error) {
	rc, err := r.Backend.GetRange(ctx, key, offset, length)
	if err != nil {
		return nil, err
	}
	return LimitReadCloser(ctx, rc, r.down), nil
}

// CanCreate reports whether the wrapped backend is a Creator.
func (r *rateLimited) CanCreate() bool { return CanCreate(r.Backend) }

// PutIfAbsent passes a conditional put on, its body limited.
func (r *rateLimited) PutIfAbsent(ctx context.Context, key string, body io.Reader, size int64) error {
	c, ok := creatorOf(r.Backend)
	if !ok {
		return fmt.Errorf("put %s only if absent: %s cannot: %w", key, describe(r.Backend), errors.ErrUnsupported)
	}
	return c.PutIfAbsent(ctx, key, LimitReader(ctx, body, r.up), size)
}

// DeleteMany passes batch deletes on where the wrapped backend has them.
func (r *rateLimited) DeleteMany(ctx context.Context, keys []string) error {
	if bd, ok := r.Backend.(BatchDeleter); ok {
		return bd.DeleteMany(ctx, keys)
	}
	return deleteEach(ctx, r, keys)
}

// Unwrap returns the wrapped backend.
func (r *rateLimited) Unwrap() Backend { return r.Backend }

// String names the wrapped backend.
func (r *rateLimited) String() string { return describe(r.Backend) }
