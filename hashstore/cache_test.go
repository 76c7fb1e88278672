package hashstore_test

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/deltabackup/deltabackup/snapshot/digest"

	"github.com/deltabackup/deltabackup/hashstore"
	"github.com/deltabackup/deltabackup/hashstore/storetest"
)

type listCountingBackend struct {
	countingBackend
	lists int
}

func (l *listCountingBackend) List(ctx context.Context, prefix string, fn func(hashstore.Info) error) error {
	l.lists++
	return l.countingBackend.List(ctx, prefix, fn)
}

func putLoose(t *testing.T, s *hashstore.Store, n int) []digest.Digest {
	t.Helper()
	var hs []digest.Digest
	for i := range n {
		c := []byte(fmt.Sprintf("loose object %d %s", i, strings.Repeat("x", 100)))
		h := digest.Of(c)
		if _, err := s.PutBytes(context.Background(), h, c); err != nil {
			t.Fatal(err)
		}
		hs = append(hs, h)
	}
	return hs
}

func TestManyUnknownObjectsAreListedNotStated(t *testing.T) {
	ctx := context.Background()
	mem := hashstore.NewMemory()
	s, _ := hashstore.Init(ctx, mem, storetest.Options(hashstore.Options{}))
	hs := putLoose(t, s, 1500)
	lb := &listCountingBackend{countingBackend: countingBackend{Backend: mem}}
	fresh, _ := hashstore.Open(ctx, lb, storetest.Options(hashstore.Options{}))
	lb.lists = 0 // opening listed the key files
	missing := digest.Of([]byte("not there"))
	infos, err := fresh.LookupAll(ctx, append(hs, missing))
	if err != nil {
		t.Fatal(err)
	}
	for i := range hs {
		if !infos[i].Found {
			t.Fatalf("object %d not found", i)
		}
	}
	if infos[len(hs)].Found {
		t.Fatal("a missing object was found")
	}
	// Listings: index/, gc/ (pending deletions) and objects/.
	if lb.stats.Load() != 0 || lb.lists > 3 {
		t.Fatalf("1,501 lookups cost %d stats and %d listings; want one listing of objects/ besides index/ and gc/", lb.stats.Load(), lb.lists)
	}
}

func TestCacheSavesRequestsUntilGC(t *testing.T) {
	ctx := context.Background()
	mem := hashstore.NewMemory()
	s, _ := hashstore.Init(ctx, mem, storetest.Options(hashstore.Options{}))
	hs := putLoose(t, s, 50)
	packed := []byte(strings.Repeat("packed ", 100))
	packAll(t, s, 0, [][]byte{packed})
	cacheDir := t.TempDir()

	open := func() (*hashstore.Store, *listCountingBackend) {
		lb := &listCountingBackend{countingBackend: countingBackend{Backend: mem}}
		st, err := hashstore.Open(ctx, lb, storetest.Options(hashstore.Options{CacheDir: cacheDir}))
		if err != nil {
			t.Fatal(err)
		}
		return st, lb
	}
	first, lb := open()
	lb.gets.Store(0) // the config read by Open
	if _, err := first.LookupAll(ctx, append(hs, digest.Of(packed))); err != nil {
		t.Fatal(err)
	}
	if lb.stats.Load() != 50 || lb.gets.Load() != 1 {
		t.Fatalf("first lookup: %d stats, %d gets; want 50 stats and the index file", lb.stats.Load(), lb.gets.Load())
	}
	if err := first.SaveCache(); err != nil {
		t.Fatal(err)
	}
	second, lb := open()
	lb.gets.Store(0)
	infos, err := second.LookupAll(ctx, append(hs, digest.Of(packed)))
	if err != nil {
		t.Fatal(err)
	}
	for i, info := range infos {
		if !info.Found {
			t.Fatalf("object %d not found from the cache", i)
		}
	}
	if lb.stats.Load() != 0 || lb.gets.Load() != 0 {
		t.Fatalf("with the cache: %d stats, %d gets; want none", lb.stats.Load(), lb.gets.Load())
	}
	// gc leaves a marker before deleting: the remembered objects are
	// asked for again.
	mem.Put(ctx, "gc/20261124T000000Z", bytes.NewReader(nil), 0)
	mem.Delete(ctx, s.ObjectKey(hs[0]))
	third, lb := open()
	infos, err = third.LookupAll(ctx, hs)
	if err != nil {
		t.Fatal(err)
	}
	if infos[0].Found || lb.stats.Load() != 50 {
		t.Fatalf("after gc: object 0 found=%v with %d stats; the cache must be dropped", infos[0].Found, lb.stats.Load())
	}
}
