package faultstore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/deltabackup/deltabackup/hashstore"
)

// ErrInjected is the error of an injected failure.
var ErrInjected = errors.New("injected fault")

// Op names a Backend method.
type Op string

// Backend operations.
const (
	Put      Op = "put"
	Get      Op = "get"
	GetRange Op = "getrange"
	Stat     Op = "stat"
	List     Op = "list"
	Delete   Op = "delete"
)

// Rule decides, per call, whether to fail it. Calls counts the calls of
// one operation (1-based); KeyPrefix limits the rule to some keys.
type Rule struct {
	Op        Op
	KeyPrefix string
	// FailFirst fails the first N matching calls; FailEvery fails every
	// Nth; FailAlways fails all.
	FailFirst  int64
	FailEvery  int64
	FailAlways bool
	// Err is returned instead of ErrInjected when set.
	Err error
}

// Backend injects faults into another Backend.
type Backend struct {
	hashstore.Backend

	mu    sync.Mutex
	rules []Rule
	calls map[Op]*atomic.Int64
	// CutBodiesAfter makes every body returned by Get/GetRange break off
	// with io.ErrUnexpectedEOF after this many bytes (0: never), once per
	// body.
	cutAfter atomic.Int64
	// shortWrites is how many more puts are torn off: part of the body
	// read, nothing stored, an error returned.
	shortWrites atomic.Int64
	delay       atomic.Int64 // per call, nanoseconds
}

// New wraps b.
func New(b hashstore.Backend) *Backend {
	f := &Backend{Backend: b, calls: map[Op]*atomic.Int64{}}
	for _, op := range []Op{Put, Get, GetRange, Stat, List, Delete} {
		f.calls[op] = new(atomic.Int64)
	}
	return f
}

// String names the wrapped backend.
func (f *Backend) String() string { return "faulty " + describe(f.Backend) }

func describe(b hashstore.Backend) string {
	if s, ok := b.(interface{ String() string }); ok {
		return s.String()
	}
	return "backend"
}

// AddRule adds a failure rule.
func (f *Backend) AddRule(r Rule) {
	f.mu.Lock()
	f.rules = append(f.rules, r)
	f.mu.Unlock()
}

// ClearRules removes every rule: storage is healthy again.
func (f *Backend) ClearRules() {
	f.mu.Lock()
	f.rules = nil
	f.mu.Unlock()
	f.cutAfter.Store(0)
	f.shortWrites.Store(0)
	f.delay.Store(0)
}

// CutBodiesAfter makes downloaded bodies break off after n bytes.
func (f *Backend) CutBodiesAfter(n int64) { f.cutAfter.Store(n) }

// ShortWrites tears off the next n puts partway: nothing stored, an error.
func (f *Backend) ShortWrites(n int64) { f.shortWrites.Store(n) }

// Delay makes every call take at least d.
func (f *Backend) Delay(d time.Duration) { f.delay.Store(int64(d)) }

// Calls returns how many calls of op were made.
func (f *Backend) Calls(op Op) int64 { return f.calls[op].Load() }

func (f *Backend) check(ctx context.Context, op Op, key string) error {
	n := f.calls[op].Add(1)
	if d := time.Duration(f.delay.Load()); d > 0 {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(d):
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, r := range f.rules {
		if r.Op != op || !strings.HasPrefix(key, r.KeyPrefix) {
			continue
		}
		if r.FailAlways || n <= r.FailFirst || r.FailEvery > 0 && n%r.FailEvery == 0 {
			if r.Err != nil {
				return r.Err
			}
			return ErrInjected
		}
	}
	return nil
}

// Put implements hashstore.Backend.
func (f *Backend) Put(ctx context.Context, key string, r io.Reader, size int64) error {
	if err := f.check(ctx, Put, key); err != nil {
		return err
	}
	if f.shortWrites.Add(-1) >= 0 {
		// Consume part of the body, store nothing: a request torn off.
		io.CopyN(io.Discard, r, max(size/2, 1))
		return io.ErrShortWrite
	}
	return f.Backend.Put(ctx, key, r, size)
}

// CanCreate reports whether the wrapped backend is a hashstore.Creator.
func (f *Backend) CanCreate() bool { return hashstore.CanCreate(f.Backend) }

// PutIfAbsent implements hashstore.Creator, with the faults of Put.
func (f *Backend) PutIfAbsent(ctx context.Context, key string, r io.Reader, size int64) error {
	if err := f.check(ctx, Put, key); err != nil {
		return err
	}
	c, ok := f.Backend.(hashstore.Creator)
	if !ok {
		return fmt.Errorf("put %s only if absent: %w", key, errors.ErrUnsupported)
	}
	return c.PutIfAbsent(ctx, key, r, size)
}

// Get implements hashstore.Backend.
func (f *Backend) Get(ctx context.Context, key string) (io.ReadCloser, error) {
	if err := f.check(ctx, Get, key); err != nil {
		return nil, err
	}
	rc, err := f.Backend.Get(ctx, key)
	return f.cut(rc), err
}

// GetRange implements hashstore.Backend.
func (f *Backend) GetRange(ctx context.Context, key string, off, n int64) (io.ReadCloser, error) {
	if err := f.check(ctx, GetRange, key); err != nil {
		return nil, err
	}
	rc, err := f.Backend.GetRange(ctx, key, off, n)
	return f.cut(rc), err
}

func (f *Backend) cut(rc io.ReadCloser) io.ReadCloser {
	if rc == nil {
		return nil
	}
	if n := f.cutAfter.Load(); n > 0 {
		return &cutReader{ReadCloser: rc, left: n}
	}
	return rc
}

type cutReader struct {
	io.ReadCloser
	left int64
}

func (c *cutReader) Read(p []byte) (int, error) {
	if c.left <= 0 {
		return 0, io.ErrUnexpectedEOF
	}
	if int64(len(p)) > c.left {
		p = p[:c.left]
	}
	n, err := c.ReadCloser.Read(p)
	c.left -= int64(n)
	return n, err
}

// Stat implements hashstore.Backend.
func (f *Backend) Stat(ctx context.Context, key string) (hashstore.Info, error) {
	if err := f.check(ctx, Stat, key); err != nil {
		return hashstore.Info{}, err
	}
	return f.Backend.Stat(ctx, key)
}

// List implements hashstore.Backend.
func (f *Backend) List(ctx context.Context, prefix string, fn func(hashstore.Info) error) error {
	if err := f.check(ctx, List, prefix); err != nil {
		return err
	}
	return f.Backend.List(ctx, prefix, fn)
}

// Delete implements hashstore.Backend.
func (f *Backend) Delete(ctx context.Context, key string) error {
	if err := f.check(ctx, Delete, key); err != nil {
		return err
	}
	return f.Backend.Delete(ctx, key)
}
