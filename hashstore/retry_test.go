package hashstore_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/deltabackup/deltabackup/hashstore"
	"github.com/deltabackup/deltabackup/hashstore/faultstore"
	"github.com/deltabackup/deltabackup/hashstore/storetest"
)

var fastRetry = hashstore.RetryPolicy{MaxAttempts: 6, InitialBackoff: time.Millisecond, MaxBackoff: 5 * time.Millisecond, MaxElapsed: 10 * time.Second}

func TestRetryConformance(t *testing.T) {
	// Every third call of every operation fails once: the wrapped backend
	// still behaves like a backend.
	storetest.Run(t, func(t *testing.T) hashstore.Backend {
		f := faultstore.New(hashstore.NewMemory())
		for _, op := range []faultstore.Op{faultstore.Put, faultstore.Get, faultstore.GetRange, faultstore.Stat, faultstore.Delete} {
			f.AddRule(faultstore.Rule{Op: op, FailEvery: 3})
		}
		policy := fastRetry
		policy.MaxAttempts = 30 // concurrent calls share the counter: some meet several faults
		return hashstore.WithRetry(f, policy)
	})
}

func TestRetryGivesUpAndPermanentErrors(t *testing.T) {
	ctx := context.Background()
	f := faultstore.New(hashstore.NewMemory())
	b := hashstore.WithRetry(f, fastRetry)
	f.AddRule(faultstore.Rule{Op: faultstore.Stat, FailAlways: true})
	_, err := b.Stat(ctx, "objects/x")
	if !errors.Is(err, faultstore.ErrInjected) || !strings.Contains(err.Error(), "giving up after 6 attempts") || f.Calls(faultstore.Stat) != 6 {
		t.Fatalf("persistent failure: %v after %d calls", err, f.Calls(faultstore.Stat))
	}
	f.ClearRules()
	f.AddRule(faultstore.Rule{Op: faultstore.Delete, FailAlways: true, Err: hashstore.Permanent(errors.New("access denied"))})
	before := f.Calls(faultstore.Delete)
	if err := b.Delete(ctx, "objects/x"); err == nil || f.Calls(faultstore.Delete)-before != 1 {
		t.Fatalf("a permanent error was retried (%d calls)", f.Calls(faultstore.Delete)-before)
	}
	_, err = b.Get(ctx, "objects/none")
	if !errors.Is(err, hashstore.ErrNotFound) || f.Calls(faultstore.GetRange) != 1 {
		t.Fatalf("not-found was retried or lost: %v, %d calls", err, f.Calls(faultstore.GetRange))
	}
}

func TestRetryHonoursCancellation(t *testing.T) {
	f := faultstore.New(hashstore.NewMemory())
	f.AddRule(faultstore.Rule{Op: faultstore.Stat, FailAlways: true})
	b := hashstore.WithRetry(f, hashstore.RetryPolicy{InitialBackoff: time.Second, MaxBackoff: time.Second})
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := b.Stat(ctx, "objects/x")
	if !errors.Is(err, context.DeadlineExceeded) || time.Since(start) > 900*time.Millisecond {
		t.Fatalf("cancelled retry: %v after %v", err, time.Since(start))
	}
}

func TestRetriedPutRewindsAndShortWritesStoreNothing(t *testing.T) {
	ctx := context.Background()
	mem := hashstore.NewMemory()
	f := faultstore.New(mem)
	b := hashstore.WithRetry(f, fastRetry)
	data := bytes.Repeat([]byte("payload "), 10000)
	f.ShortWrites(3)
	if err := b.Put(ctx, "objects/p", bytes.NewReader(data), int64(len(data))); err != nil {
		t.Fatal(err)
	}
	rc, _ := mem.Get(ctx, "objects/p")
	got, _ := io.ReadAll(rc)
	if !bytes.Equal(got, data) {
		t.Fatalf("after retried torn puts the object holds %d bytes, want %d", len(got), len(data))
	}
	// A streamed body (a pack, of unknown size) is held and retried.
	f.AddRule(faultstore.Rule{Op: faultstore.Put, FailFirst: 1 + f.Calls(faultstore.Put)})
	if err := b.Put(ctx, "packs/q", io.MultiReader(bytes.NewReader(data)), -1); err != nil {
		t.Fatalf("a streamed pack was not retried: %v", err)
	}
	rc, _ = mem.Get(ctx, "packs/q")
	if got, _ := io.ReadAll(rc); !bytes.Equal(got, data) {
		t.Fatalf("the retried pack holds %d bytes, want %d", len(got), len(data))
	}
	// A large streamed object is not held in memory, so not retried.
	f.ClearRules()
	f.AddRule(faultstore.Rule{Op: faultstore.Put, FailFirst: 1 + f.Calls(faultstore.Put)})
	large := int64(hashstore.DefaultPackSize + 1)
	if err := b.Put(ctx, "objects/r", io.LimitReader(zeros{}, large), large); err == nil {
		t.Fatal("a large streamed put was retried (its body must have been held in memory)")
	}
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) { clear(p); return len(p), nil }

func TestBrokenDownloadsResume(t *testing.T) {
	ctx := context.Background()
	mem := hashstore.NewMemory()
	data := bytes.Repeat([]byte("0123456789"), 100000)
	mem.Put(ctx, "objects/big", bytes.NewReader(data), int64(len(data)))
	f := faultstore.New(mem)
	f.CutBodiesAfter(70000)
	b := hashstore.WithRetry(f, hashstore.RetryPolicy{MaxAttempts: 30, InitialBackoff: time.Millisecond, MaxBackoff: time.Millisecond})
	for _, c := range []struct{ off, n int64 }{{0, -1}, {12345, 500000}} {
		rc, err := b.GetRange(ctx, "objects/big", c.off, c.n)
		if err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(rc)
		rc.Close()
		want := data[c.off:]
		if c.n >= 0 {
			want = want[:c.n]
		}
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("GetRange(%d, %d) through bodies cut every 70000 bytes: %d bytes, %v", c.off, c.n, len(got), err)
		}
	}
	if f.Calls(faultstore.GetRange) < 10 {
		t.Fatalf("only %d ranged gets: the bodies were not cut", f.Calls(faultstore.GetRange))
	}
}
