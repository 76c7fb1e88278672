package hashstore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"
)

// RetryPolicy says how WithRetry retries: exponential backoff with full
// jitter between InitialBackoff and MaxBackoff, at most MaxAttempts tries
// and at most MaxElapsed in all for one operation.
type RetryPolicy struct {
	MaxAttempts    int
	InitialBackoff time.Duration
	MaxBackoff     time.Duration
	MaxElapsed     time.Duration
	Logger         *slog.Logger
}

// DefaultRetryPolicy suits object storage: throttling and brief outages
// pass within a few minutes.
func DefaultRetryPolicy() RetryPolicy {
	return RetryPolicy{MaxAttempts: 8, InitialBackoff: 200 * time.Millisecond, MaxBackoff: 15 * time.Second, MaxElapsed: 3 * time.Minute}
}

// PermanentError marks an error that retrying cannot fix (wrong
// credentials, a missing bucket, a full disk). Backends wrap such errors
// with Permanent so that WithRetry gives up at once.
type PermanentError struct{ Err error }

func (e *PermanentError) Error() string { return e.Err.Error() }
func (e *PermanentError) Unwrap() error { return e.Err }

// Permanent marks err as not worth retrying.
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	return &PermanentError{Err: err}
}

// Retryable reports whether an operation that failed with err may succeed
// when tried again: everything except missing keys, bad ranges, cancelled
// contexts, content that does not match its key, and errors marked
// Permanent. Deciding per provider what is transient has proven fragile,
// so the rule is turned around: retry unless known to be pointless.
func Retryable(err error) bool {
	var perm *PermanentError
	switch {
	case err == nil,
		errors.Is(err, ErrNotFound),
		errors.Is(err, ErrInvalidRange),
		errors.Is(err, ErrContentMismatch),
		errors.Is(err, ErrCorrupt),
		errors.Is(err, ErrExists),
		errors.Is(err, context.Canceled),
		errors.Is(err, context.DeadlineExceeded),
		errors.As(err, &perm):
		return false
	}
	return true
}

// retrying is a Backend that retries the operations of another.
type retrying struct {
	Backend
	p RetryPolicy
}

// WithRetry wraps b so that failed operations are retried by p. A Put is
// retried only when its reader can be rewound (an io.Seeker); a body that
// breaks off while read is resumed with a ranged get from where it broke.
func WithRetry(b Backend, p RetryPolicy) Backend {
	d := DefaultRetryPolicy()
	if p.MaxAttempts <= 0 {
		p.MaxAttempts = d.MaxAttempts
	}
	if p.InitialBackoff <= 0 {
		p.InitialBackoff = d.InitialBackoff
	}
	if p.MaxBackoff <= 0 {
		p.MaxBackoff = d.MaxBackoff
	}
	if p.MaxElapsed <= 0 {
		p.MaxElapsed = d.MaxElapsed
	}
	if p.Logger == nil {
		p.Logger = slog.New(slog.DiscardHandler)
	}
	return &retrying{Backend: b, p: p}
}

// DeleteMany deletes keys in batches when the wrapped backend can (S3's
// DeleteObjects), one by one otherwise; each call is retried.
func (r *retrying) DeleteMany(ctx context.Context, keys []string) error {
	if bd, ok := r.Backend.(BatchDeleter); ok {
		return r.do(ctx, "delete", fmt.Sprintf("%d keys", len(keys)), func() error { return bd.DeleteMany(ctx, keys) })
	}
	return deleteEach(ctx, r, keys)
}

// deleteEach deletes keys one by one, for wrappers of backends that have
// no batch delete.
func deleteEach(ctx context.Context, b Backend, keys []string) error {
	for _, k := range keys {
		if err := b.Delete(ctx, k); err != nil {
			return err
		}
	}
	return nil
}

// CanCreate reports whether the wrapped backend is a Creator.
func (r *retrying) CanCreate() bool { return CanCreate(r.Backend) }

// PutIfAbsent retries a conditional put. A retry after an attempt whose
// answer was lost may find the key taken by that very attempt: callers
// that must tell (records) compare what is stored with what they wrote.
func (r *retrying) PutIfAbsent(ctx context.Context, key string, body io.Reader, size int64) error {
	c, ok := creatorOf(r.Backend)
	if !ok {
		return fmt.Errorf("put %s only if absent: %s cannot: %w", key, describe(r.Backend), errors.ErrUnsupported)
	}
	data, err := io.ReadAll(io.LimitReader(body, maxRetryBuffer+1))
	if err != nil {
		return fmt.Errorf("put %s: read body: %w", key, err)
	}
	if len(data) > maxRetryBuffer || (size >= 0 && int64(len(data)) != size) {
		return fmt.Errorf("put %s: got %d bytes, expected %d", key, len(data), size)
	}
	return r.do(ctx, "put", key, func() error { return c.PutIfAbsent(ctx, key, bytes.NewReader(data), int64(len(data))) })
}

// Unwrap returns the wrapped backend.
func (r *retrying) Unwrap() Backend { return r.Backend }

// String names the wrapped backend.
func (r *retrying) String() string { return describe(r.Backend) }

// maxRetryBuffer is the largest streamed body Put holds in memory to be
// able to retry it: a pack (DefaultPackSize) with room to spare.
const maxRetryBuffer = 4 * DefaultPackSize

// retryBuffers are reused: a backup stores pack after pack.
var retryBuffers = sync.Pool{New: func() any { return new(bytes.Buffer) }}

// do runs op until it succeeds, fails for good, or the policy is spent.
func (r *retrying) do(ctx context.Context, what, key string, op func() error) error {
	start := time.Now()
	for attempt := 1; ; attempt++ {
		err := op()
		if err == nil || !Retryable(err) || ctx.Err() != nil {
			return err
		}
		wait := r.backoff(attempt)
		if attempt >= r.p.MaxAttempts || time.Since(start)+wait > r.p.MaxElapsed {
			return fmt.Errorf("%s %s: giving up after %d attempts in %s: %w", what, key, attempt, time.Since(start).Round(time.Millisecond), err)
		}
		r.p.Logger.Warn("storage operation failed, retrying", "op", what, "key", key, "attempt", attempt, "wait", wait.Round(time.Millisecond), "err", err)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(wait):
		}
	}
}

// backoff is full jitter: a uniform wait up to the exponential bound.
func (r *retrying) backoff(attempt int) time.Duration {
	bound := r.p.InitialBackoff << min(attempt-1, 30)
	if bound <= 0 || bound > r.p.MaxBackoff {
		bound = r.p.MaxBackoff
	}
	return time.Duration(rand.Int64N(int64(bound)) + 1)
}

func (r *retrying) Put(ctx context.Context, key string, body io.Reader, size int64) error {
	seeker, rewindable := body.(io.Seeker)
	if !rewindable {
		if size > maxRetryBuffer || size > DefaultPackSize {
			// A large object streamed from its file: one attempt, since
			// holding it would cost its size in memory (S3 retries each
			// part of it).
			return r.Backend.Put(ctx, key, body, size)
		}
		// A streamed body (a pack being filled, say) cannot be rewound:
		// hold it, so a put that fails part way can be made again.
		buf := retryBuffers.Get().(*bytes.Buffer)
		defer retryBuffers.Put(buf)
		buf.Reset()
		n, err := buf.ReadFrom(io.LimitReader(body, maxRetryBuffer+1))
		if err != nil {
			return fmt.Errorf("put %s: read body: %w", key, err)
		}
		if n > maxRetryBuffer { // size was unknown and is large
			return r.Backend.Put(ctx, key, io.MultiReader(bytes.NewReader(buf.Bytes()), body), size)
		}
		body, size = bytes.NewReader(buf.Bytes()), n
		seeker = body.(io.Seeker)
	}
	start, err := seeker.Seek(0, io.SeekCurrent)
	if err != nil {
		return r.Backend.Put(ctx, key, body, size)
	}
	first := true
	return r.do(ctx, "put", key, func() error {
		if !first {
			if _, err := seeker.Seek(start, io.SeekStart); err != nil {
				return Permanent(fmt.Errorf("rewind body of %s: %w", key, err))
			}
		}
		first = false
		return r.Backend.Put(ctx, key, body, size)
	})
}

func (r *retrying) Get(ctx context.Context, key string) (io.ReadCloser, error) {
	return r.GetRange(ctx, key, 0, -1)
}

func (r *retrying) GetRange(ctx context.Context, key string, offset, length int64) (io.ReadCloser, error) {
	var rc io.ReadCloser
	err := r.do(ctx, "get", key, func() (err error) {
		rc, err = r.Backend.GetRange(ctx, key, offset, length)
		return err
	})
	if err != nil {
		return nil, err
	}
	return &resumingReader{r: r, ctx: ctx, key: key, offset: offset, length: length, body: rc}, nil
}

func (r *retrying) Stat(ctx context.Context, key string) (Info, error) {
	var info Info
	err := r.do(ctx, "stat", key, func() (err error) {
		info, err = r.Backend.Stat(ctx, key)
		return err
	})
	return info, err
}

// List is retried only while nothing has been handed to fn, so fn never
// sees a key twice.
func (r *retrying) List(ctx context.Context, prefix string, fn func(Info) error) error {
	delivered := false
	var fnErr error
	err := r.do(ctx, "list", prefix, func() error {
		err := r.Backend.List(ctx, prefix, func(info Info) error {
			delivered = true
			if err := fn(info); err != nil {
				fnErr = err
				return err
			}
			return nil
		})
		if err != nil && (delivered || fnErr != nil) {
			return Permanent(err) // cannot restart without repeating keys
		}
		return err
	})
	var perm *PermanentError
	if errors.As(err, &perm) && (delivered || fnErr != nil) {
		return perm.Err
	}
	return err
}

func (r *retrying) Delete(ctx context.Context, key string) error {
	return r.do(ctx, "delete", key, func() error { return r.Backend.Delete(ctx, key) })
}

// resumingReader reads a body and, if it breaks off, asks for the rest
// with a ranged get from the byte it reached.
type resumingReader struct {
	r       *retrying
	ctx     context.Context
	key     string
	offset  int64 // of the next byte to read
	length  int64 // still wanted, or -1 for "to the end"
	body    io.ReadCloser
	resumes int
	// resumed is set right after a resume: if the new body is empty, the
	// object really ends there (a range past the end is cut short).
	resumed bool
}

func (rr *resumingReader) Read(p []byte) (int, error) {
	if rr.length == 0 {
		return 0, io.EOF
	}
	if rr.length > 0 && int64(len(p)) > rr.length {
		p = p[:rr.length]
	}
	n, err := rr.body.Read(p)
	resumed := rr.resumed
	if n > 0 || err != nil {
		rr.resumed = false
	}
	rr.offset += int64(n)
	if rr.length > 0 {
		rr.length -= int64(n)
	}
	switch {
	case err == nil, rr.length == 0:
		return n, nil
	case err == io.EOF && (rr.length < 0 || resumed && n == 0):
		rr.length = 0
		return n, io.EOF // the end of the object, as asked or as it is
	case err == io.EOF:
		err = io.ErrUnexpectedEOF // the body ended before the range did
	}
	if !Retryable(err) || rr.ctx.Err() != nil || rr.resumes >= rr.r.p.MaxAttempts {
		return n, err
	}
	rr.resumes++
	rr.r.p.Logger.Warn("read broke off, resuming", "key", rr.key, "offset", rr.offset, "err", err)
	rr.body.Close()
	var body io.ReadCloser
	gerr := rr.r.do(rr.ctx, "get", rr.key, func() (err error) {
		body, err = rr.r.Backend.GetRange(rr.ctx, rr.key, rr.offset, rr.length)
		return err
	})
	if gerr != nil {
		rr.body = io.NopCloser(errReader{gerr})
		if n > 0 {
			return n, nil // the error comes with the next read
		}
		return 0, gerr
	}
	rr.body = body
	rr.resumed = true
	if n == 0 {
		return rr.Read(p)
	}
	return n, nil
}

func (rr *resumingReader) Close() error { return rr.body.Close() }

type errReader struct{ err error }

func (e errReader) Read([]byte) (int, error) { return 0, e.err }
