package hashstore_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"testing"
	"time"

	"golang.org/x/time/rate"

	"github.com/deltabackup/deltabackup/hashstore"
)

// TestRateLimitedBackendPassesEverythingOn: bytes, conditional puts,
// batch deletes and the local root survive the wrapper, and the limiters
// are charged for what goes each way.
func TestRateLimitedBackendPassesEverythingOn(t *testing.T) {
	ctx := context.Background()
	up, down := hashstore.NewLimiter(1<<20), hashstore.NewLimiter(1<<20)
	local := hashstore.NewLocal(t.TempDir())
	b := hashstore.WithRateLimit(local, up, down)
	data := bytes.Repeat([]byte("0123456789abcdef"), 4096) // 64 KiB
	if err := b.Put(ctx, "objects/aa/x", bytes.NewReader(data), int64(len(data))); err != nil {
		t.Fatal(err)
	}
	if tokens := up.Tokens(); tokens > float64(up.Burst()-len(data)+(1<<20)/10) {
		t.Fatalf("upload limiter has %.0f of %d tokens after 64 KiB went up", tokens, up.Burst())
	}
	rc, err := b.Get(ctx, "objects/aa/x")
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(rc)
	rc.Close()
	if !bytes.Equal(got, data) {
		t.Fatal("read back other bytes")
	}
	if tokens := down.Tokens(); tokens > float64(down.Burst()-len(data)+(1<<20)/10) {
		t.Fatalf("download limiter has %.0f of %d tokens after 64 KiB came down", tokens, down.Burst())
	}
	if !hashstore.CanCreate(b) {
		t.Fatal("a local directory behind the limiter cannot create keys only if absent")
	}
	if err := b.(hashstore.Creator).PutIfAbsent(ctx, "backups/r.json", bytes.NewReader([]byte("{}")), 2); err != nil {
		t.Fatal(err)
	}
	if err := b.(hashstore.Creator).PutIfAbsent(ctx, "backups/r.json", bytes.NewReader([]byte("{}")), 2); !errors.Is(err, hashstore.ErrExists) {
		t.Fatalf("second conditional put: %v", err)
	}
	if err := b.(hashstore.BatchDeleter).DeleteMany(ctx, []string{"objects/aa/x", "backups/r.json"}); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Stat(ctx, "objects/aa/x"); !errors.Is(err, hashstore.ErrNotFound) {
		t.Fatalf("after DeleteMany: %v", err)
	}
	if r, ok := hashstore.As[hashstore.Rooted](b); !ok || r.Root() != local.Root() {
		t.Fatal("the local root is hidden by the limiter")
	}
}

// TestLimitedReaderWaits: once a slow limiter's burst is spent, a read
// waits for it (here: until its context ends).
func TestLimitedReaderWaits(t *testing.T) {
	l := rate.NewLimiter(1, 1000) // one byte per second after the first 1,000
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	r := hashstore.LimitReader(ctx, bytes.NewReader(make([]byte, 5000)), l)
	n, err := io.Copy(io.Discard, r)
	if n > 2000 || err == nil {
		t.Fatalf("read %d bytes (%v) through a limiter of 1,000 bytes of burst and 1 byte/s", n, err)
	}
}

// BenchmarkRateLimitedPut measures the rate a limit of 64 MB/s lets
// through: the reported MB/s should be close to 64.
func BenchmarkRateLimitedPut(b *testing.B) {
	ctx := context.Background()
	data := make([]byte, 16<<20)
	backend := hashstore.WithRateLimit(hashstore.NewMemory(), hashstore.NewLimiter(64e6), nil)
	start := time.Now()
	for i := 0; b.Loop(); i++ {
		if err := backend.Put(ctx, "objects/aa/"+string(rune('a'+i%26)), bytes.NewReader(data), int64(len(data))); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)*float64(len(data))/time.Since(start).Seconds()/1e6, "MB/s")
	b.ReportMetric(64, "limit-MB/s")
}
