package main

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/deltabackup/deltabackup/hashstore"
)

// changeBatch is one change of the crash source while watch runs: the tree
// it left and when it was made.
type changeBatch struct {
	start, done time.Time
	state       crashTree
}

// settle is how long after a change a backup is sure to see all of it:
// inotify queues events as files are written, but the watcher reads them
// a little later, and a backup that starts in between sees part of the
// change (the next one sees the rest).
const settle = 400 * time.Millisecond

// expectedAt returns the trees a backup that started at t may hold: the
// tree of the last change made before t, or, when a change was under way
// or had only just ended, that tree and the one before it, file by file.
func expectedAt(batches []changeBatch, t time.Time) (exact crashTree, before crashTree) {
	for i := range batches {
		b := batches[i]
		if !b.start.Before(t) {
			break
		}
		exact, before = b.state, nil
		if i > 0 && !b.done.Before(t.Add(-settle)) {
			before = batches[i-1].state
		}
	}
	return exact, before
}

// diffEither is diffTrees for a backup taken while a change was under
// way: each file must be as in one of the two trees (absent counts).
func diffEither(a, b, got crashTree) string {
	var diffs []string
	seen := map[string]bool{}
	for _, tree := range []crashTree{a, b, got} {
		for p := range tree {
			if seen[p] {
				continue
			}
			seen[p] = true
			if got[p] != a[p] && got[p] != b[p] {
				diffs = append(diffs, fmt.Sprintf("%s: got %.12s, want %.12s or %.12s", p, got[p], a[p], b[p]))
			}
		}
	}
	if len(diffs) > 10 {
		diffs = append(diffs[:10], fmt.Sprintf("and %d more", len(diffs)-10))
	}
	return strings.Join(diffs, "\n")
}

// TestWatchKilledAtRandomPoints runs 'watch' over a changing tree and
// kills it with SIGKILL at random points (idle, during a watched backup,
// while it stores a checkpoint manifest), five times. After each kill the
// repository verifies clean with --read-data and every backup restores —
// byte for byte to the tree it was taken of (file by file to the trees
// before and after a change under way when it started). Then
// gc keeps every manifest chain, and a last watch backs up the final tree.
func TestWatchKilledAtRandomPoints(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: runs watch through about 50 backups")
	}
	seed := crashTestSeed(t)
	rng := rand.New(rand.NewPCG(seed, 3))
	c := newCLI(t)
	dir := t.TempDir()
	src := newCrashSource(t, filepath.Join(dir, "src"), seed)
	repo := filepath.Join(dir, "repo")
	c.ok("init", "--repo", repo)
	batches := []changeBatch{{done: time.Now(), state: src.snapshot()}}
	checked := map[string]bool{}
	var backups, checkpoints, exact int

	runWatch := func(backupsBeforeKill int, change bool) {
		cmd, lines := c.startWatch("--repo", repo, "--every", "600ms", src.root)
		for n := 0; n < backupsBeforeKill; {
			select {
			case m, ok := <-lines:
				if !ok {
					t.Fatal("watch ended on its own")
				}
				if m["event"] == "checkpoint" {
					checkpoints++
				}
				if m["message_type"] != "summary" {
					continue
				}
				n++
				backups++
				if change && rng.IntN(10) < 7 {
					start := time.Now()
					src.change()
					batches = append(batches, changeBatch{start: start, done: time.Now(), state: src.snapshot()})
				}
			case <-time.After(60 * time.Second):
				t.Fatal("no backup from watch for a minute")
			}
		}
		time.Sleep(time.Duration(rng.Int64N(int64(400 * time.Millisecond))))
		cmd.Process.Signal(syscall.SIGKILL)
		cmd.Wait()
	}

	checkRepository := func(when string) {
		t.Helper()
		if o := c.run("verify", "--repo", repo, "--read-data"); o.code != 0 {
			t.Fatalf("%s: verify --read-data: exit %d\n%s%s", when, o.code, o.stdout, o.stderr)
		}
		var records []hashstore.BackupRecord
		if err := json.Unmarshal([]byte(c.ok("list", "--repo", repo, "--json").stdout), &records); err != nil {
			t.Fatal(err)
		}
		for _, rec := range records {
			if checked[rec.Name] {
				continue
			}
			checked[rec.Name] = true
			out := filepath.Join(dir, "out-"+rec.Name)
			c.ok("restore", "--repo", repo, rec.Name, out)
			want, before := expectedAt(batches, rec.Start)
			d := ""
			if before == nil {
				exact++
				d = diffTrees(want, treeOf(t, out))
			} else {
				d = diffEither(before, want, treeOf(t, out))
			}
			if d != "" {
				t.Fatalf("%s: backup %s (started %s) does not restore to the tree of that time:\n%s", when, rec.Name, rec.Start.Format(time.StampMicro), d)
			}
			os.RemoveAll(out)
		}
	}

	for kill := range 5 {
		runWatch(6+rng.IntN(9), true)
		checkRepository(fmt.Sprintf("kill %d", kill))
	}
	c.ok("gc", "--repo", repo)
	checkRepository("after gc")
	// A last watch with no changes: its backups hold the final tree.
	batches = append(batches, changeBatch{done: time.Now(), state: src.snapshot()})
	runWatch(3, false)
	checkRepository("final")
	out := filepath.Join(dir, "final")
	c.ok("restore", "--repo", repo, "latest", out)
	if d := diffTrees(src.snapshot(), treeOf(t, out)); d != "" {
		t.Fatalf("latest backup does not hold the final tree:\n%s", d)
	}
	t.Logf("%d backups in 6 watch processes (5 killed), %d checkpoints; %d records restored and compared: %d with the one tree of their time, the others file by file with the trees before and after a change under way",
		backups, checkpoints, len(checked), exact)
}
