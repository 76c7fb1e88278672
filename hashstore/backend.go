package hashstore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"
	"unicode/utf8"
)

// ErrNotFound is returned (wrapped) by every Backend for a key that does not
// exist. Check it with errors.Is.
var ErrNotFound = errors.New("not found")

// ErrInvalidRange is returned by GetRange when the offset lies beyond the
// end of the object.
var ErrInvalidRange = errors.New("invalid range")

// Info describes one stored key.
type Info struct {
	Key     string
	Size    int64
	ModTime time.Time
}

// Backend stores bytes under slash-separated keys. Implementations must make
// Put atomic (a reader sees the old bytes, the new bytes, or nothing; never
// a part), must return errors wrapping ErrNotFound for missing keys, and
// must honour context cancellation. Every implementation passes
// hashstore/storetest.
type Backend interface {
	// Put stores the bytes of r under key, replacing any earlier value. size
	// is the exact number of bytes r yields, or -1 when unknown. If r returns
	// an error, or yields a different number of bytes than size, nothing is
	// stored and Put returns an error.
	Put(ctx context.Context, key string, r io.Reader, size int64) error
	// Get opens the bytes under key.
	Get(ctx context.Context, key string) (io.ReadCloser, error)
	// GetRange opens length bytes from offset; length < 0 reads to the end.
	// A range that runs past the end is cut short; an offset past the end is
	// ErrInvalidRange.
	GetRange(ctx context.Context, key string, offset, length int64) (io.ReadCloser, error)
	// Stat describes key.
	Stat(ctx context.Context, key string) (Info, error)
	// List calls fn, in the caller's goroutine, once for every key that
	// starts with prefix, in no particular order. An error from fn stops the
	// listing and is returned.
	List(ctx context.Context, prefix string, fn func(Info) error) error
	// Delete removes key. Deleting a missing key is not an error.
	Delete(ctx context.Context, key string) error
}

// ErrExists is returned (wrapped) by Creator.PutIfAbsent when the key is
// taken.
var ErrExists = errors.New("already exists")

// Creator is a Backend that can store a key only if nothing is stored
// under it yet, atomically: of writers racing for one key, exactly one
// succeeds and the others get ErrExists. Local directories (link(2)) and
// S3 (If-None-Match: *) can; backup records are written this way, so two
// nodes never overwrite each other's records. Wrappers implement it only
// as far as what they wrap does (CanCreate).
type Creator interface {
	PutIfAbsent(ctx context.Context, key string, r io.Reader, size int64) error
}

// creatorOf returns b as a Creator, if it (and whatever it wraps) can
// create keys exclusively.
func creatorOf(b Backend) (Creator, bool) {
	if w, ok := b.(interface{ CanCreate() bool }); ok && !w.CanCreate() {
		return nil, false
	}
	c, ok := b.(Creator)
	return c, ok
}

// CanCreate reports whether b can create keys only if absent (Creator).
func CanCreate(b Backend) bool {
	_, ok := creatorOf(b)
	return ok
}

// tempPrefix marks names of files being written by the local backend; no
// key may have a component starting with it.
const tempPrefix = ".tmp-"

// ValidateKey checks that key is a clean, relative, slash-separated key that
// every backend can store.
func ValidateKey(key string) error {
	if key == "" {
		return errors.New("empty key")
	}
	if len(key) > 1024 {
		return fmt.Errorf("key %.40q...: longer than 1024 bytes", key)
	}
	if !utf8.ValidString(key) || strings.ContainsAny(key, "\x00\\") {
		return fmt.Errorf("key %q: contains NUL, backslash or invalid UTF-8", key)
	}
	for part := range strings.SplitSeq(key, "/") {
		switch {
		case part == "", part == ".", part == "..":
			return fmt.Errorf("key %q: empty, '.' or '..' component", key)
		case strings.HasPrefix(part, tempPrefix):
			return fmt.Errorf("key %q: component starts with reserved %q", key, tempPrefix)
		}
	}
	return nil
}

func notFound(key string) error { return fmt.Errorf("%s: %w", key, ErrNotFound) }

// ContextReader returns a reader of r whose reads fail once ctx is done,
// so that a long copy stops promptly on cancellation.
func ContextReader(ctx context.Context, r io.Reader) io.Reader { return contextReader{ctx, r} }

type contextReader struct {
	ctx context.Context
	r   io.Reader
}

func (c contextReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}

// As finds, in b or the backends it wraps (each wrapper's Unwrap), one
// that implements T: for optional capabilities that a wrapper does not
// pass on itself, such as a local directory's root.
func As[T any](b Backend) (T, bool) {
	for b != nil {
		if t, ok := b.(T); ok {
			return t, true
		}
		u, ok := b.(interface{ Unwrap() Backend })
		if !ok {
			break
		}
		b = u.Unwrap()
	}
	var zero T
	return zero, false
}

// TempRemover is a backend whose interrupted writes leave temporary files
// behind (a local directory); gc removes the old ones.
type TempRemover interface {
	RemoveStaleTemps(age time.Duration) (files int, bytes int64, err error)
}

// Rooted is a backend that is a directory of this machine.
type Rooted interface {
	Root() string
}
