package watch

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/fsnotify/fsnotify"

	"github.com/deltabackup/deltabackup/snapshot"
	"github.com/deltabackup/deltabackup/snapshot/digest"
	"github.com/deltabackup/deltabackup/snapshot/snapshottest"
	"github.com/deltabackup/deltabackup/snapshot/treetest"
)

var syncExclude = []string{syncName + "*"}

func seedTree(t *testing.T, root string) {
	for i := range 60 {
		p := filepath.Join(root, fmt.Sprintf("d%d/e%d/f%d", i%4, i%3, i))
		os.MkdirAll(filepath.Dir(p), 0o755)
		os.WriteFile(p, []byte(strings.Repeat(fmt.Sprint(i), 10+i*7)), 0o644)
	}
}

// snap takes a snapshot of root into sink: incremental from base and
// dirty, or a full walk when base is zero.
func snap(t *testing.T, root string, sink *treetest.MemSink, base digest.Digest, dirty []string) *snapshot.Result {
	t.Helper()
	opts := snapshot.DefaultOptions()
	opts.Excludes = syncExclude
	opts.Sink = sink
	if !base.IsZero() {
		opts.Base, opts.Trees, opts.Dirty = base, sink, dirty
	}
	s, err := snapshot.New(root, opts)
	if err != nil {
		t.Fatal(err)
	}
	res, err := s.Snapshot(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return res
}

// differences lists what differs between two trees, for a failure
// message.
func differences(t *testing.T, sink *treetest.MemSink, a, b digest.Digest) []snapshot.Change {
	var out []snapshot.Change
	_, err := snapshot.Compare(context.Background(), sink, a, b, func(c snapshot.Change) error {
		out = append(out, c)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestWatchedSnapshotsMissNoChange runs storms of random changes, half of
// each while a watched snapshot is being taken, and checks after each that
// the snapshot built from the watcher's list equals a full walk. CI runs
// 10,000 operations.
func TestWatchedSnapshotsMissNoChange(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	seedTree(t, root)
	w, err := New(root, Options{Excludes: syncExclude})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	storm := snapshottest.NewStorm(root, 11)
	sink := treetest.NewMemSink()
	var base digest.Digest
	take := func() *snapshot.Result {
		dirty, full := w.Take()
		if full != "" {
			return snap(t, root, sink, digest.Digest{}, nil)
		}
		res := snap(t, root, sink, base, dirty)
		// Paths it could not take are looked at again next time, as the
		// watch command does.
		var again []string
		for _, p := range append(res.Unreadable, res.Changed...) {
			again = append(again, p.Path)
		}
		w.Requeue(again, "")
		return res
	}
	ops, rounds, fulls := 0, 0, 0
	for ops < 10000 {
		rounds++
		n := 50 + storm.Rand.IntN(300)
		during := make(chan int)
		go func() {
			for i := range n {
				storm.Step()
				if i == n/2 {
					during <- i
				}
			}
			during <- n
		}()
		<-during // half the storm has happened; the rest runs during the snapshot
		base = take().Root
		ops += <-during
		if err := w.Sync(ctx); err != nil {
			t.Fatal(err)
		}
		dirty, full := w.Take()
		if full != "" {
			fulls++
			t.Logf("round %d: full scan: %s", rounds, full)
			base = snap(t, root, sink, digest.Digest{}, nil).Root
			continue
		}
		got := snap(t, root, sink, base, dirty)
		want := snap(t, root, sink, digest.Digest{}, nil)
		if got.Root != want.Root {
			t.Fatalf("round %d, after %d operations: the watched snapshot differs from a full scan: %+v", rounds, ops, differences(t, sink, want.Root, got.Root))
		}
		base = got.Root
	}
	t.Logf("%d operations in %d rounds (%d events, %d watched directories now); %d full scans forced", ops, rounds, w.Events(), w.Watched(), fulls)
}

func TestRestartedWatcherAsksForAFullScan(t *testing.T) {
	root := t.TempDir()
	seedTree(t, root)
	w, err := New(root, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if _, full := w.Take(); !strings.Contains(full, "started") {
		t.Fatalf("first Take of a new watcher: full=%q, want a full scan", full)
	}
	os.WriteFile(filepath.Join(root, "d0/new"), []byte("x"), 0o644)
	if err := w.Sync(context.Background()); err != nil {
		t.Fatal(err)
	}
	if dirty, full := w.Take(); full != "" || strings.Join(dirty, ",") != "d0/new" {
		t.Fatalf("second Take: %v, %q", dirty, full)
	}
	w.Close()
	// Changes while no watcher runs are unknown to the next one.
	os.WriteFile(filepath.Join(root, "d1/while-down"), []byte("x"), 0o644)
	w2, err := New(root, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer w2.Close()
	if _, full := w2.Take(); full == "" {
		t.Fatal("a restarted watcher trusted its empty list")
	}
}

func TestOverflowAndErrorsForceAFullScan(t *testing.T) {
	root := t.TempDir()
	seedTree(t, root)
	w, err := New(root, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	w.Take()
	w.fail(fsnotify.ErrEventOverflow) // what fsnotify reports on IN_Q_OVERFLOW
	if _, full := w.Take(); !strings.Contains(full, "overflowed") {
		t.Fatalf("after an overflow: full=%q", full)
	}
	if _, full := w.Take(); full != "" {
		t.Fatalf("the full scan was asked for twice: %q", full)
	}
	w.fail(fmt.Errorf("some inotify error"))
	if _, full := w.Take(); !strings.Contains(full, "some inotify error") {
		t.Fatalf("after an error: full=%q", full)
	}
	w.Requeue([]string{"d0/x"}, "the backup failed")
	if dirty, full := w.Take(); len(dirty) != 1 || full != "the backup failed" {
		t.Fatalf("requeued: %v %q", dirty, full)
	}
}
