package snapshot

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/deltabackup/deltabackup/snapshot/digest"
	"github.com/deltabackup/deltabackup/snapshot/snapshottest"
)

// TestIncrementalSnapshotEqualsFullWalk: after each burst of random
// changes, a snapshot of the dirty paths alone has the root hash of a full
// walk, and writes only the trees on the way to a change.
func TestIncrementalSnapshotEqualsFullWalk(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	for i := range 60 {
		p := filepath.Join(root, fmt.Sprintf("d%d/e%d/f%d", i%4, i%3, i))
		os.MkdirAll(filepath.Dir(p), 0o755)
		os.WriteFile(p, []byte(strings.Repeat(fmt.Sprint(i), 10+i*7)), 0o644)
	}
	storm := snapshottest.NewStorm(root, 7)
	sink := newMemSink()
	full := func() *Result { return snap(t, root, sink, DefaultOptions()) }
	base := full().Root
	ops := 0
	for round := range 40 {
		var dirty []string
		for range 1 + storm.Rand.IntN(60) {
			dirty = append(dirty, storm.Step()...)
			ops++
		}
		opts := DefaultOptions()
		opts.Base, opts.Trees, opts.Dirty = base, sink, dirty
		res := snap(t, root, sink, opts)
		want := full()
		if res.Root != want.Root {
			var diffs []string
			Compare(ctx, sink, want.Root, res.Root, func(c Change) error {
				diffs = append(diffs, c.Kind+" "+c.Path+" "+strings.Join(c.What, ","))
				return nil
			})
			t.Fatalf("round %d (dirty %v): incremental snapshot differs from a full walk: %v", round, dirty, diffs)
		}
		if res.Stats.Counts != want.Stats.Counts {
			t.Fatalf("round %d: incremental counts %+v, full walk %+v", round, res.Stats.Counts, want.Stats.Counts)
		}
		if res.Stats.TreesWritten > want.Stats.TreesWritten {
			t.Fatalf("round %d: the incremental snapshot wrote %d trees, a full walk %d", round, res.Stats.TreesWritten, want.Stats.TreesWritten)
		}
		base = res.Root
	}
	t.Logf("%d random operations in 40 rounds, each compared with a full walk", ops)
}

// TestIncrementalSnapshotReadsOnlyDirtyPaths: with one dirty file deep in
// a tree, only that file is read and only the trees above it written.
func TestIncrementalSnapshotReadsOnlyDirtyPaths(t *testing.T) {
	root := t.TempDir()
	for i := range 200 {
		writeTree(t, root, map[string]string{fmt.Sprintf("a%d/b%d/f%d", i%10, i%3, i): strings.Repeat("x", 200+i)})
	}
	sink := newMemSink()
	base := snap(t, root, sink, DefaultOptions())
	writeTree(t, root, map[string]string{"a3/b1/f13": "changed"})
	opts := DefaultOptions()
	opts.Base, opts.Trees, opts.Dirty = base.Root, sink, []string{"a3/b1/f13"}
	res := snap(t, root, sink, opts)
	if res.Stats.HashedFiles != 1 || res.Stats.TreesWritten != 3 {
		t.Fatalf("one dirty file: hashed %d files, wrote %d trees; want 1 and 3 (a3/b1, a3, root)", res.Stats.HashedFiles, res.Stats.TreesWritten)
	}
	if n := nodes(t, sink, res.Root)["a3/b1/f13"]; string(n.Embedded) != "changed" {
		t.Fatalf("dirty file: %+v", n)
	}
	if _, err := New(root, Options{Base: digest.Of(nil)}); err == nil {
		t.Fatal("an incremental snapshot without Trees was accepted")
	}
}
