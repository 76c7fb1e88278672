package hashstore_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/deltabackup/deltabackup/snapshot/digest"

	"github.com/deltabackup/deltabackup/hashstore"
	"github.com/deltabackup/deltabackup/hashstore/storetest"
)

// countingBackend counts calls by operation.
type countingBackend struct {
	hashstore.Backend
	gets, ranges, puts, stats atomic.Int64
	failPutPrefix             string
}

func (c *countingBackend) Get(ctx context.Context, key string) (io.ReadCloser, error) {
	c.gets.Add(1)
	return c.Backend.Get(ctx, key)
}

func (c *countingBackend) GetRange(ctx context.Context, key string, off, n int64) (io.ReadCloser, error) {
	c.ranges.Add(1)
	return c.Backend.GetRange(ctx, key, off, n)
}

func (c *countingBackend) Put(ctx context.Context, key string, r io.Reader, size int64) error {
	c.puts.Add(1)
	if c.failPutPrefix != "" && strings.HasPrefix(key, c.failPutPrefix) {
		return errors.New("injected failure")
	}
	return c.Backend.Put(ctx, key, r, size)
}

func (c *countingBackend) Stat(ctx context.Context, key string) (hashstore.Info, error) {
	c.stats.Add(1)
	return c.Backend.Stat(ctx, key)
}

func keysUnder(t *testing.T, b hashstore.Backend, prefix string) []string {
	t.Helper()
	var keys []string
	b.List(context.Background(), prefix, func(i hashstore.Info) error { keys = append(keys, i.Key); return nil })
	return keys
}

func smallContents(n int) [][]byte {
	out := make([][]byte, n)
	for i := range out {
		if i%2 == 0 {
			out[i] = randomContent(uint64(1000+i), 2000+i%1000)
		} else {
			out[i] = []byte(strings.Repeat(fmt.Sprintf("text %d ", i), 200+i%50))
		}
	}
	return out
}

func TestPackerStoresSmallObjectsInPacks(t *testing.T) {
	ctx := context.Background()
	mem := hashstore.NewMemory()
	cb := &countingBackend{Backend: mem}
	s, _ := hashstore.Init(ctx, cb, storetest.Options(hashstore.Options{}))
	contents := smallContents(600)
	err := s.WithPacker(ctx, 256<<10, func(ctx context.Context, p *hashstore.Packer) error {
		var wg sync.WaitGroup
		for w := range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := w; i < len(contents); i += 4 {
					if _, err := p.Add(ctx, digest.Of(contents[i]), contents[i]); err != nil {
						t.Error(err)
					}
				}
			}()
		}
		wg.Wait()
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	packs, indexes := keysUnder(t, mem, "packs/"), keysUnder(t, mem, "index/")
	if len(packs) < 3 || len(packs) > 10 || len(indexes) != len(packs) {
		t.Fatalf("%d packs and %d indexes for ~1.3 MB in 256 KiB packs", len(packs), len(indexes))
	}
	if objs := keysUnder(t, mem, "objects/"); len(objs) != 0 {
		t.Fatalf("packed objects were also stored loose: %d", len(objs))
	}
	check := func(s *hashstore.Store) {
		t.Helper()
		var all []digest.Digest
		for _, c := range contents {
			all = append(all, digest.Of(c))
		}
		found, err := s.LookupAll(ctx, all)
		if err != nil {
			t.Fatal(err)
		}
		for i, h := range all {
			if !found[i].Packed || found[i].StoredSize <= 16 {
				t.Fatalf("LookupAll(%s) = %+v", h, found[i])
			}
		}
		for i, c := range contents {
			got, err := readObject(t, s, digest.Of(c))
			if err != nil || !bytes.Equal(got, c) {
				t.Fatalf("object %d: %v", i, err)
			}
		}
	}
	check(s)
	// A new Store on the same backend learns the packs from the index files.
	reopened, err := hashstore.Open(ctx, mem, storetest.Options(hashstore.Options{}))
	if err != nil {
		t.Fatal(err)
	}
	check(reopened)
	// Every pack's trailer lists what its index lists.
	total := 0
	for _, key := range packs {
		entries, err := reopened.ReadPackTrailer(ctx, key)
		if err != nil {
			t.Fatal(err)
		}
		total += len(entries)
	}
	if total != len(contents) {
		t.Fatalf("pack trailers list %d objects, want %d", total, len(contents))
	}
}

func TestGetManyCoalescesReads(t *testing.T) {
	ctx := context.Background()
	mem := hashstore.NewMemory()
	s, _ := hashstore.Init(ctx, mem, storetest.Options(hashstore.Options{}))
	contents := smallContents(300)
	var want []digest.Digest
	for _, c := range contents {
		want = append(want, digest.Of(c))
	}
	packAll(t, s, 64<<20, contents) // one pack
	loose := randomContent(77, 3<<20)
	s.Put(ctx, digest.Of(loose), bytes.NewReader(loose), int64(len(loose)))
	missing := digest.Of([]byte("not stored"))

	cb := &countingBackend{Backend: mem}
	s2, _ := hashstore.Open(ctx, cb, storetest.Options(hashstore.Options{}))
	// every third object, a duplicate, the loose one and a missing one
	var ask []digest.Digest
	for i := 0; i < len(want); i += 3 {
		ask = append(ask, want[i])
	}
	ask = append(ask, want[0], digest.Of(loose), missing)
	got := map[digest.Digest][]byte{}
	errs := map[digest.Digest]error{}
	err := s2.GetMany(ctx, ask, func(h digest.Digest, r io.Reader, err error) error {
		if _, dup := got[h]; dup {
			t.Errorf("fn called twice for %s", h)
		}
		if err != nil {
			errs[h] = err
			got[h] = nil
			return nil
		}
		data, err := io.ReadAll(r)
		if err != nil {
			errs[h] = err
		}
		got[h] = data
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(ask)-1 {
		t.Fatalf("fn called for %d objects, want %d", len(got), len(ask)-1)
	}
	for i := 0; i < len(want); i += 3 {
		if !bytes.Equal(got[want[i]], contents[i]) {
			t.Fatalf("object %d differs", i)
		}
	}
	if !bytes.Equal(got[digest.Of(loose)], loose) {
		t.Fatal("loose object differs")
	}
	if !errors.Is(errs[missing], hashstore.ErrNotFound) {
		t.Fatalf("missing object: %v", errs[missing])
	}
	if n := cb.ranges.Load(); n != 1 {
		t.Fatalf("%d ranged reads for 100 objects of one pack, want 1", n)
	}
}

func TestCorruptPackedObjectFailsAlone(t *testing.T) {
	ctx := context.Background()
	mem := hashstore.NewMemory()
	s, _ := hashstore.Init(ctx, mem, storetest.Options(hashstore.Options{}))
	contents := smallContents(20)
	packAll(t, s, 0, contents)
	key := keysUnder(t, mem, "packs/")[0]
	entries, _ := s.ReadPackTrailer(ctx, key)
	victim := entries[7]
	data := storedBytes(t, mem, key)
	data[victim.Offset+victim.Length-2] ^= 0x80
	mem.Put(ctx, key, bytes.NewReader(data), int64(len(data)))

	var all []digest.Digest
	for _, c := range contents {
		all = append(all, digest.Of(c))
	}
	bad := 0
	err := s.GetMany(ctx, all, func(h digest.Digest, r io.Reader, err error) error {
		if err == nil {
			_, err = io.ReadAll(r)
		}
		if err != nil {
			if !errors.Is(err, hashstore.ErrCorrupt) || !strings.Contains(err.Error(), h.String()) {
				t.Errorf("%s: %v", h, err)
			}
			bad++
		}
		return nil
	})
	if err != nil || bad != 1 {
		t.Fatalf("GetMany: %v, %d corrupt objects reported, want 1", err, bad)
	}
}

func TestCrashBetweenPackAndIndex(t *testing.T) {
	ctx := context.Background()
	mem := hashstore.NewMemory()
	cb := &countingBackend{Backend: mem, failPutPrefix: "index/"}
	s, _ := hashstore.Init(ctx, cb, storetest.Options(hashstore.Options{}))
	c := []byte(strings.Repeat("lost index ", 100))
	if err := packAll(nil, s, 0, [][]byte{c}); err == nil {
		t.Fatal("the pack was completed although its index could not be stored")
	}
	// The pack exists without an index: the object counts as missing and
	// is simply stored again.
	s2, _ := hashstore.Open(ctx, mem, storetest.Options(hashstore.Options{}))
	missing, err := s2.Missing(ctx, []digest.Digest{digest.Of(c)})
	if err != nil || len(missing) != 1 {
		t.Fatalf("Missing = %v, %v; want the unindexed object", missing, err)
	}
	packAll(t, s2, 0, [][]byte{c})
	if got, err := readObject(t, s2, digest.Of(c)); err != nil || !bytes.Equal(got, c) {
		t.Fatalf("re-stored object: %v", err)
	}
}

func TestDamagedIndexIsNamed(t *testing.T) {
	ctx := context.Background()
	mem := hashstore.NewMemory()
	s, _ := hashstore.Init(ctx, mem, storetest.Options(hashstore.Options{}))
	c := []byte(strings.Repeat("x", 400))
	packAll(t, s, 0, [][]byte{c})
	key := keysUnder(t, mem, "index/")[0]
	data := storedBytes(t, mem, key)
	data[len(data)-1] ^= 1
	mem.Put(ctx, key, bytes.NewReader(data), int64(len(data)))
	s2, _ := hashstore.Open(ctx, mem, storetest.Options(hashstore.Options{}))
	_, err := s2.Missing(ctx, []digest.Digest{digest.Of(c)})
	if !errors.Is(err, hashstore.ErrCorrupt) || !strings.Contains(err.Error(), key[len(key)-64:]) {
		t.Fatalf("damaged index: %v", err)
	}
}

func TestPackerRefusesWrongContent(t *testing.T) {
	s, _ := newStore(t)
	err := s.WithPacker(context.Background(), 0, func(ctx context.Context, p *hashstore.Packer) error {
		_, err := p.Add(ctx, digest.Of([]byte("a")), []byte("b"))
		return err
	})
	if !errors.Is(err, hashstore.ErrContentMismatch) {
		t.Fatalf("Add with wrong content: %v", err)
	}
}

func TestAbortedPackLeavesNothing(t *testing.T) {
	ctx := context.Background()
	mem := hashstore.NewMemory()
	s, _ := hashstore.Init(ctx, mem, storetest.Options(hashstore.Options{}))
	var kept *hashstore.Packer
	errGiveUp := errors.New("give up")
	err := s.WithPacker(ctx, 0, func(ctx context.Context, p *hashstore.Packer) error {
		for _, c := range smallContents(10) {
			p.Add(ctx, digest.Of(c), c)
		}
		kept = p
		return errGiveUp
	})
	if !errors.Is(err, errGiveUp) {
		t.Fatalf("WithPacker returned %v, want fn's error", err)
	}
	if keys := append(keysUnder(t, mem, "packs/"), keysUnder(t, mem, "index/")...); len(keys) != 0 {
		t.Fatalf("an aborted pack left %v", keys)
	}
	if _, err := kept.Add(ctx, digest.Of([]byte("late")), []byte("late")); err == nil {
		t.Fatal("Add after the packer's end succeeded")
	}
}

// packAll stores contents in packs of about target bytes; with t, a
// failure fails the test.
func packAll(t *testing.T, s *hashstore.Store, target int, contents [][]byte) error {
	err := s.WithPacker(context.Background(), target, func(ctx context.Context, p *hashstore.Packer) error {
		for _, c := range contents {
			if _, err := p.Add(ctx, digest.Of(c), c); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil && t != nil {
		t.Fatal(err)
	}
	return err
}

// TestPackOfTinyObjectsIsCompletedByCount: contents that compress to a
// few bytes complete a pack at MaxPackEntries objects, long before its
// size target, so a backup of a million tiny files never holds a pack's
// worth of entries beyond that in memory; every object stays readable.
func TestPackOfTinyObjectsIsCompletedByCount(t *testing.T) {
	ctx := context.Background()
	mem := hashstore.NewMemory()
	s, _ := hashstore.Init(ctx, mem, storetest.Options(hashstore.Options{}))
	n := hashstore.MaxPackEntries + 10
	ids := make([]digest.Digest, n)
	err := s.WithPacker(ctx, 0, func(ctx context.Context, p *hashstore.Packer) error {
		for i := range n {
			c := fmt.Appendf(nil, "%d", i)
			ids[i] = digest.Of(c)
			if _, err := p.Add(ctx, ids[i], c); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	packs := keysUnder(t, mem, "packs/")
	if len(packs) != 2 {
		t.Fatalf("%d tiny objects made %d packs, want 2 (one full by count, one of 10)", n, len(packs))
	}
	for _, key := range packs {
		entries, err := s.ReadPackTrailer(ctx, key)
		if err != nil {
			t.Fatal(err)
		}
		if len(entries) != hashstore.MaxPackEntries && len(entries) != 10 {
			t.Fatalf("pack %s holds %d objects", key, len(entries))
		}
	}
	found, err := s.LookupAll(ctx, ids)
	if err != nil {
		t.Fatal(err)
	}
	for i := range found {
		if !found[i].Packed {
			t.Fatalf("object %d not found packed", i)
		}
	}
}
