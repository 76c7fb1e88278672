package storetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"slices"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/deltabackup/deltabackup/hashstore"
)

// Run runs the conformance suite. newBackend must return an empty backend
// for each call; subtests may run in parallel on separate backends.
func Run(t *testing.T, newBackend func(t *testing.T) hashstore.Backend) {
	t.Helper()
	tests := []struct {
		name string
		fn   func(t *testing.T, b hashstore.Backend)
	}{
		{"NotFound", testNotFound},
		{"RoundTrip", testRoundTrip},
		{"Overwrite", testOverwrite},
		{"Stat", testStat},
		{"List", testList},
		{"ListMoreThan1000", testListMany},
		{"ListCallbackError", testListCallbackError},
		{"Delete", testDelete},
		{"GetRange", testGetRange},
		{"ConcurrentPutSameKey", testConcurrentPut},
		{"FailedWriterStoresNothing", testFailedWriter},
		{"SizeMismatchStoresNothing", testSizeMismatch},
		{"UnknownSize", testUnknownSize},
		{"InvalidKeys", testInvalidKeys},
		{"Cancellation", testCancellation},
		{"CreateIfAbsent", testCreateIfAbsent},
		{"DeleteMany", testDeleteMany},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tc.fn(t, newBackend(t))
		})
	}
}

func randomBytes(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	b := make([]byte, n)
	for i := 0; i+8 <= n; i += 8 {
		v := r.Uint64()
		for j := range 8 {
			b[i+j] = byte(v >> (8 * j))
		}
	}
	for i := n - n%8; i < n; i++ {
		b[i] = byte(r.Uint32())
	}
	return b
}

func put(t *testing.T, b hashstore.Backend, key string, data []byte) {
	t.Helper()
	if err := b.Put(context.Background(), key, bytes.NewReader(data), int64(len(data))); err != nil {
		t.Fatalf("Put(%q, %d bytes): %v", key, len(data), err)
	}
}

func get(t *testing.T, b hashstore.Backend, key string) []byte {
	t.Helper()
	rc, err := b.Get(context.Background(), key)
	if err != nil {
		t.Fatalf("Get(%q): %v", key, err)
	}
	defer rc.Close()
	data, err := io.ReadAll(rc)
	if err != nil {
		t.Fatalf("Get(%q): read: %v", key, err)
	}
	return data
}

func wantNotFound(t *testing.T, what string, err error) {
	t.Helper()
	if !errors.Is(err, hashstore.ErrNotFound) {
		t.Fatalf("%s: got error %v, want one wrapping hashstore.ErrNotFound", what, err)
	}
}

func listKeys(t *testing.T, b hashstore.Backend, prefix string) []string {
	t.Helper()
	var keys []string
	err := b.List(context.Background(), prefix, func(info hashstore.Info) error {
		keys = append(keys, info.Key)
		return nil
	})
	if err != nil {
		t.Fatalf("List(%q): %v", prefix, err)
	}
	sort.Strings(keys)
	return keys
}

func testNotFound(t *testing.T, b hashstore.Backend) {
	ctx := context.Background()
	_, err := b.Get(ctx, "objects/00/missing")
	wantNotFound(t, "Get", err)
	_, err = b.GetRange(ctx, "objects/00/missing", 1, 2)
	wantNotFound(t, "GetRange", err)
	_, err = b.Stat(ctx, "objects/00/missing")
	wantNotFound(t, "Stat", err)
	if err := b.Delete(ctx, "objects/00/missing"); err != nil {
		t.Fatalf("Delete of a missing key: %v, want nil", err)
	}
	if keys := listKeys(t, b, "objects/"); len(keys) != 0 {
		t.Fatalf("List on an empty backend: %v", keys)
	}
}

func testRoundTrip(t *testing.T, b hashstore.Backend) {
	for i, size := range []int{0, 1, 1 << 20, 64 << 20} {
		key := fmt.Sprintf("objects/rt/size-%d", size)
		data := randomBytes(uint64(i+1), size)
		put(t, b, key, data)
		if got := get(t, b, key); !bytes.Equal(got, data) {
			t.Fatalf("round trip of %d bytes: got %d bytes that differ", size, len(got))
		}
	}
}

func testOverwrite(t *testing.T, b hashstore.Backend) {
	put(t, b, "backups/x.json", []byte("first version, longer"))
	put(t, b, "backups/x.json", []byte("second"))
	if got := string(get(t, b, "backups/x.json")); got != "second" {
		t.Fatalf("after overwrite got %q, want %q", got, "second")
	}
	info, err := b.Stat(context.Background(), "backups/x.json")
	if err != nil || info.Size != 6 {
		t.Fatalf("Stat after overwrite: %+v, %v; want size 6", info, err)
	}
}

func testStat(t *testing.T, b hashstore.Backend) {
	before := time.Now().Add(-time.Hour)
	put(t, b, "objects/ab/stat", randomBytes(7, 1234))
	info, err := b.Stat(context.Background(), "objects/ab/stat")
	if err != nil {
		t.Fatal(err)
	}
	if info.Key != "objects/ab/stat" || info.Size != 1234 {
		t.Fatalf("Stat = %+v, want key objects/ab/stat and size 1234", info)
	}
	if info.ModTime.Before(before) || info.ModTime.After(time.Now().Add(time.Hour)) {
		t.Fatalf("Stat ModTime %v is not about now", info.ModTime)
	}
}

func testList(t *testing.T, b hashstore.Backend) {
	keys := []string{"config", "objects/aa/1", "objects/aa/2", "objects/ab/3", "objects/b0/4", "backups/n1.json", "backupsX"}
	for _, k := range keys {
		put(t, b, k, []byte(k))
	}
	cases := map[string][]string{
		"":             keys,
		"objects/":     {"objects/aa/1", "objects/aa/2", "objects/ab/3", "objects/b0/4"},
		"objects/a":    {"objects/aa/1", "objects/aa/2", "objects/ab/3"},
		"objects/aa/":  {"objects/aa/1", "objects/aa/2"},
		"objects/aa/1": {"objects/aa/1"},
		"backups/":     {"backups/n1.json"},
		"backups":      {"backups/n1.json", "backupsX"},
		"nothing/":     nil,
	}
	for prefix, want := range cases {
		want = slices.Clone(want)
		sort.Strings(want)
		got := listKeys(t, b, prefix)
		if !slices.Equal(got, want) {
			t.Errorf("List(%q) = %v, want %v", prefix, got, want)
		}
	}
	err := b.List(context.Background(), "objects/ab/", func(info hashstore.Info) error {
		if info.Size != int64(len("objects/ab/3")) {
			t.Errorf("List info for %s has size %d", info.Key, info.Size)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func testListMany(t *testing.T, b hashstore.Backend) {
	const n = 1100
	want := make([]string, n)
	var g sync.WaitGroup
	errs := make(chan error, n)
	sem := make(chan struct{}, 16)
	for i := range n {
		want[i] = fmt.Sprintf("many/%02x/key-%05d", i%7, i)
		g.Add(1)
		sem <- struct{}{}
		go func(key string) {
			defer g.Done()
			defer func() { <-sem }()
			if err := b.Put(context.Background(), key, bytes.NewReader([]byte("x")), 1); err != nil {
				errs <- err
			}
		}(want[i])
	}
	g.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	sort.Strings(want)
	if got := listKeys(t, b, "many/"); !slices.Equal(got, want) {
		t.Fatalf("List of %d keys returned %d keys", n, len(got))
	}
}

func testListCallbackError(t *testing.T, b hashstore.Backend) {
	put(t, b, "objects/aa/1", []byte("1"))
	put(t, b, "objects/aa/2", []byte("2"))
	stop := errors.New("stop here")
	calls := 0
	err := b.List(context.Background(), "objects/", func(hashstore.Info) error { calls++; return stop })
	if !errors.Is(err, stop) {
		t.Fatalf("List returned %v, want the callback's error", err)
	}
	if calls != 1 {
		t.Fatalf("callback called %d times after returning an error, want 1", calls)
	}
}

func testDelete(t *testing.T, b hashstore.Backend) {
	put(t, b, "objects/de/1", []byte("gone soon"))
	put(t, b, "objects/de/2", []byte("stays"))
	if err := b.Delete(context.Background(), "objects/de/1"); err != nil {
		t.Fatal(err)
	}
	_, err := b.Get(context.Background(), "objects/de/1")
	wantNotFound(t, "Get after Delete", err)
	_, err = b.Stat(context.Background(), "objects/de/1")
	wantNotFound(t, "Stat after Delete", err)
	if got := listKeys(t, b, "objects/"); !slices.Equal(got, []string{"objects/de/2"}) {
		t.Fatalf("List after Delete = %v", got)
	}
}

func testGetRange(t *testing.T, b hashstore.Backend) {
	data := randomBytes(3, 10000)
	put(t, b, "objects/rg/x", data)
	cases := []struct {
		offset, length int64
		want           []byte
	}{
		{0, 10, data[:10]},
		{1234, 100, data[1234:1334]},
		{9990, -1, data[9990:]},
		{9990, 100, data[9990:]},
		{0, -1, data},
		{10000, 5, nil},
		{5, 0, nil},
	}
	for _, c := range cases {
		rc, err := b.GetRange(context.Background(), "objects/rg/x", c.offset, c.length)
		if err != nil {
			t.Fatalf("GetRange(%d, %d): %v", c.offset, c.length, err)
		}
		got, err := io.ReadAll(rc)
		rc.Close()
		if err != nil {
			t.Fatalf("GetRange(%d, %d): read: %v", c.offset, c.length, err)
		}
		if !bytes.Equal(got, c.want) {
			t.Fatalf("GetRange(%d, %d) returned %d bytes, want %d", c.offset, c.length, len(got), len(c.want))
		}
	}
	rc, err := b.GetRange(context.Background(), "objects/rg/x", 10001, 5)
	if err == nil {
		// Some servers only fail when the body is read.
		_, err = io.ReadAll(rc)
		rc.Close()
	}
	if !errors.Is(err, hashstore.ErrInvalidRange) {
		t.Fatalf("GetRange past the end: %v, want ErrInvalidRange", err)
	}
}

func testConcurrentPut(t *testing.T, b hashstore.Backend) {
	same := randomBytes(11, 300<<10)
	versions := [][]byte{randomBytes(12, 200<<10), randomBytes(13, 250<<10), randomBytes(14, 100<<10)}
	var g sync.WaitGroup
	errs := make(chan error, 32)
	for i := range 16 {
		g.Add(2)
		go func() {
			defer g.Done()
			if err := b.Put(context.Background(), "objects/cc/same", bytes.NewReader(same), int64(len(same))); err != nil {
				errs <- err
			}
		}()
		go func() {
			defer g.Done()
			v := versions[i%len(versions)]
			if err := b.Put(context.Background(), "objects/cc/race", bytes.NewReader(v), int64(len(v))); err != nil {
				errs <- err
			}
		}()
	}
	g.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("concurrent Put: %v", err)
	}
	if !bytes.Equal(get(t, b, "objects/cc/same"), same) {
		t.Fatal("concurrent puts of the same content left different content")
	}
	got := get(t, b, "objects/cc/race")
	if !slices.ContainsFunc(versions, func(v []byte) bool { return bytes.Equal(v, got) }) {
		t.Fatalf("concurrent puts of different contents left %d bytes that match none of them", len(got))
	}
	if keys := listKeys(t, b, "objects/"); !slices.Equal(keys, []string{"objects/cc/race", "objects/cc/same"}) {
		t.Fatalf("after concurrent puts List = %v (leftover temporary files?)", keys)
	}
}

type failingReader struct {
	data []byte
	err  error
}

func (f *failingReader) Read(p []byte) (int, error) {
	if len(f.data) == 0 {
		return 0, f.err
	}
	n := copy(p, f.data)
	f.data = f.data[n:]
	return n, nil
}

func testFailedWriter(t *testing.T, b hashstore.Backend) {
	boom := errors.New("source went away")
	data := randomBytes(21, 3<<20)
	r := &failingReader{data: data[:1<<20], err: boom}
	if err := b.Put(context.Background(), "objects/fw/x", r, int64(len(data))); err == nil {
		t.Fatal("Put with a failing reader succeeded")
	}
	_, err := b.Stat(context.Background(), "objects/fw/x")
	wantNotFound(t, "Stat after a failed Put", err)
	// A failed overwrite keeps the old value.
	put(t, b, "objects/fw/y", []byte("old"))
	r = &failingReader{data: data[:1<<20], err: boom}
	if err := b.Put(context.Background(), "objects/fw/y", r, int64(len(data))); err == nil {
		t.Fatal("Put with a failing reader succeeded")
	}
	if got := string(get(t, b, "objects/fw/y")); got != "old" {
		t.Fatalf("failed overwrite left %d bytes, want the old value", len(got))
	}
	if keys := listKeys(t, b, "objects/"); !slices.Equal(keys, []string{"objects/fw/y"}) {
		t.Fatalf("after failed puts List = %v", keys)
	}
}

func testSizeMismatch(t *testing.T, b hashstore.Backend) {
	if err := b.Put(context.Background(), "objects/sm/short", bytes.NewReader([]byte("12345")), 10); err == nil {
		t.Fatal("Put of 5 bytes declared as 10 succeeded")
	}
	_, err := b.Stat(context.Background(), "objects/sm/short")
	wantNotFound(t, "Stat after a short Put", err)
}

func testUnknownSize(t *testing.T, b hashstore.Backend) {
	data := randomBytes(31, 5<<20+17)
	if err := b.Put(context.Background(), "objects/us/x", bytes.NewReader(data), -1); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(get(t, b, "objects/us/x"), data) {
		t.Fatal("round trip with unknown size differs")
	}
}

func testInvalidKeys(t *testing.T, b hashstore.Backend) {
	for _, key := range []string{"", "/abs", "../up", "a/../b", "a//b", "a/./b", "a/", "nul\x00"} {
		if err := b.Put(context.Background(), key, bytes.NewReader(nil), 0); err == nil {
			t.Errorf("Put(%q) succeeded, want an invalid-key error", key)
		}
	}
}

func testCancellation(t *testing.T, b hashstore.Backend) {
	put(t, b, "objects/cx/there", []byte("data"))
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := b.Put(ctx, "objects/cx/new", bytes.NewReader([]byte("data")), 4); !errors.Is(err, context.Canceled) {
		t.Fatalf("Put with a cancelled context: %v, want context.Canceled", err)
	}
	if _, err := b.Stat(context.Background(), "objects/cx/new"); !errors.Is(err, hashstore.ErrNotFound) {
		t.Fatalf("Put with a cancelled context stored the object (Stat: %v)", err)
	}
	if _, err := b.Stat(ctx, "objects/cx/there"); err == nil {
		t.Fatal("Stat with a cancelled context succeeded")
	}
	if rc, err := b.Get(ctx, "objects/cx/there"); err == nil {
		_, err = io.ReadAll(rc)
		rc.Close()
		if err == nil {
			t.Fatal("Get with a cancelled context succeeded")
		}
	}
	if err := b.List(ctx, "objects/", func(hashstore.Info) error { return nil }); err == nil {
		t.Fatal("List with a cancelled context succeeded")
	}

	// Cancelling during a long Put stops it and stores nothing.
	ctx, cancel = context.WithCancel(context.Background())
	data := randomBytes(41, 8<<20)
	slow := &cancelAfter{r: bytes.NewReader(data), after: 1 << 20, cancel: cancel}
	if err := b.Put(ctx, "objects/cx/slow", slow, int64(len(data))); err == nil {
		t.Fatal("Put cancelled midway succeeded")
	}
	if _, err := b.Stat(context.Background(), "objects/cx/slow"); !errors.Is(err, hashstore.ErrNotFound) {
		t.Fatalf("Put cancelled midway stored the object (Stat: %v)", err)
	}
}

type cancelAfter struct {
	r      io.Reader
	read   int
	after  int
	cancel func()
}

func (c *cancelAfter) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.read += n
	if c.read >= c.after {
		c.cancel()
	}
	return n, err
}

// testCreateIfAbsent checks a backend that is a hashstore.Creator: of 16
// writers racing for one key exactly one succeeds, the others get
// ErrExists, the winner's bytes are stored, and an existing key (written
// by Put) is never replaced. Backends that cannot create exclusively skip.
func testCreateIfAbsent(t *testing.T, b hashstore.Backend) {
	c, ok := b.(hashstore.Creator)
	if !ok || !hashstore.CanCreate(b) {
		t.Skip("the backend cannot create keys only if absent")
	}
	ctx := context.Background()
	const writers = 16
	var wg sync.WaitGroup
	errs := make([]error, writers)
	for i := range writers {
		wg.Go(func() {
			data := []byte(fmt.Sprintf("writer %02d", i))
			errs[i] = c.PutIfAbsent(ctx, "backups/race.json", bytes.NewReader(data), int64(len(data)))
		})
	}
	wg.Wait()
	winner := -1
	for i, err := range errs {
		switch {
		case err == nil && winner >= 0:
			t.Fatalf("writers %d and %d both created the key", winner, i)
		case err == nil:
			winner = i
		case !errors.Is(err, hashstore.ErrExists):
			t.Fatalf("writer %d: %v, want ErrExists", i, err)
		}
	}
	if winner < 0 {
		t.Fatal("no writer created the key")
	}
	if got := string(get(t, b, "backups/race.json")); got != fmt.Sprintf("writer %02d", winner) {
		t.Fatalf("stored %q, but writer %d won", got, winner)
	}
	put(t, b, "backups/existing.json", []byte("first"))
	err := c.PutIfAbsent(ctx, "backups/existing.json", bytes.NewReader([]byte("second")), 6)
	if !errors.Is(err, hashstore.ErrExists) {
		t.Fatalf("PutIfAbsent over an existing key: %v, want ErrExists", err)
	}
	if got := string(get(t, b, "backups/existing.json")); got != "first" {
		t.Fatalf("an existing key was replaced: %q", got)
	}
}

// testDeleteMany: a backend that deletes in batches removes exactly the
// keys it is given, missing ones included, across batch boundaries.
func testDeleteMany(t *testing.T, b hashstore.Backend) {
	bd, ok := b.(hashstore.BatchDeleter)
	if !ok {
		t.Skip("the backend deletes one key at a time")
	}
	ctx := context.Background()
	var doomed []string
	for i := range 1100 {
		key := fmt.Sprintf("objects/dm/%04d", i)
		if i%3 != 0 {
			put(t, b, key, []byte{byte(i)})
		}
		if i%2 == 0 {
			doomed = append(doomed, key)
		}
	}
	put(t, b, "objects/dm/kept", []byte("kept"))
	if err := bd.DeleteMany(ctx, doomed); err != nil {
		t.Fatalf("DeleteMany of %d keys: %v", len(doomed), err)
	}
	left := listKeys(t, b, "objects/dm/")
	want := []string{"objects/dm/kept"}
	for i := range 1100 {
		if i%3 != 0 && i%2 != 0 {
			want = append(want, fmt.Sprintf("objects/dm/%04d", i))
		}
	}
	sort.Strings(want)
	if !slices.Equal(left, want) {
		t.Fatalf("after DeleteMany %d keys are left, want %d", len(left), len(want))
	}
}
