package snapshot

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/deltabackup/deltabackup/snapshot/snapshottest"
)

func comparable(m *Manifest) Manifest {
	c := *m
	c.Start, c.End = time.Time{}, time.Time{} // they differ run to run
	return c
}

// TestIncrementalSnapshotEqualsFullWalk: after each burst of random
// changes, a snapshot of the dirty paths alone equals a full walk.
func TestIncrementalSnapshotEqualsFullWalk(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	for i := range 60 {
		p := filepath.Join(root, fmt.Sprintf("d%d/e%d/f%d", i%4, i%3, i))
		os.MkdirAll(filepath.Dir(p), 0o755)
		os.WriteFile(p, []byte(strings.Repeat(fmt.Sprint(i), 10+i*7)), 0o644)
	}
	storm := snapshottest.NewStorm(root, 7)
	full := func() *Manifest {
		s, _ := New(DefaultOptions(root))
		res, err := s.Snapshot(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return res.Manifest
	}
	base := full()
	cache := NewMemoryStatCache()
	ops := 0
	for round := range 40 {
		var dirty []string
		for range 1 + storm.Rand.IntN(60) {
			dirty = append(dirty, storm.Step()...)
			ops++
		}
		opts := DefaultOptions(root)
		opts.Base, opts.Dirty, opts.Cache = base, dirty, cache
		s, err := New(opts)
		if err != nil {
			t.Fatal(err)
		}
		res, err := s.Snapshot(ctx)
		if err != nil {
			t.Fatal(err)
		}
		cache.Save()
		want := full()
		if got, w := comparable(res.Manifest), comparable(want); !reflect.DeepEqual(got, w) {
			d := Compare(want, res.Manifest)
			t.Fatalf("round %d (dirty %v): incremental snapshot differs from a full walk: %+v\nfiles %d vs %d, dirs %d vs %d, empty %v vs %v",
				round, dirty, d, len(res.Manifest.Files), len(want.Files), len(res.Manifest.Dirs), len(want.Dirs), res.Manifest.EmptyDirs, want.EmptyDirs)
		}
		base = res.Manifest
	}
	t.Logf("%d random operations in 40 rounds, each compared with a full walk", ops)
}
