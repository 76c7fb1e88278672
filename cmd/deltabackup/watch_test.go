package main

import (
	"bufio"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/deltabackup/deltabackup/restore/restoretest"
)

// startWatch starts 'watch --json' with args and returns the process and
// its JSON lines other than progress.
func (c *cli) startWatch(args ...string) (*exec.Cmd, <-chan map[string]any) {
	c.t.Helper()
	cmd := exec.Command(binary, append([]string{"watch", "--json"}, args...)...)
	cmd.Env = append(os.Environ(), "DELTABACKUP_CACHE_DIR="+c.cacheDir, "DELTABACKUP_REPO=")
	stdout, _ := cmd.StdoutPipe()
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		c.t.Fatal(err)
	}
	lines := make(chan map[string]any, 100)
	go func() {
		sc := bufio.NewScanner(stdout)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			var m map[string]any
			if json.Unmarshal(sc.Bytes(), &m) == nil && m["message_type"] != "status" {
				lines <- m
			}
		}
		close(lines)
	}()
	return cmd, lines
}

// TestWatchBacksUpWhatChanged runs 'watch' as a user would: the first
// backup scans everything, later ones read only what changed, every backup
// restores to the tree as it was, and SIGTERM stops it cleanly.
func TestWatchBacksUpWhatChanged(t *testing.T) {
	c := newCLI(t)
	dir := t.TempDir()
	repo, src := filepath.Join(dir, "repo"), filepath.Join(dir, "src")
	makeSource(t, src)
	c.ok("init", "--repo", repo)
	cmd, lines := c.startWatch("--repo", repo, "--every", "300ms", src)
	defer cmd.Process.Kill()
	next := func(kind string) map[string]any {
		t.Helper()
		timeout := time.After(30 * time.Second)
		for {
			select {
			case m, ok := <-lines:
				if !ok {
					t.Fatalf("watch ended before a %s line", kind)
				}
				if m["message_type"] == kind || m["event"] == kind {
					return m
				}
			case <-timeout:
				t.Fatalf("no %s line from watch", kind)
			}
		}
	}
	if b := next("backup"); b["full_scan"] != true {
		t.Fatalf("first backup was not a full scan: %v", b)
	}
	first := next("summary")
	if first["hashed_files"].(float64) != 125 {
		t.Fatalf("first backup: %v", first)
	}
	// Wait for a quiet backup, then change two files and add one.
	if b := next("backup"); b["full_scan"] != false {
		t.Fatalf("second backup scanned everything: %v", b)
	}
	next("summary")
	os.WriteFile(filepath.Join(src, "pkg1/file001.go"), []byte("rewritten while watched\n"), 0o644)
	os.WriteFile(filepath.Join(src, "pkg2/added.go"), []byte("package pkg2 // added while watched, long enough to be stored as an object\n"), 0o644)
	os.Remove(filepath.Join(src, "pkg3/file003.go"))
	// The changes may straddle two backups; once a backup finds nothing
	// dirty, every change has been backed up.
	var last map[string]any
	hashed, changedRuns := 0.0, 0
	for {
		b := next("backup")
		s := next("summary")
		if b["dirty_paths"].(float64) == 0 && changedRuns > 0 {
			break
		}
		if b["dirty_paths"].(float64) > 0 {
			changedRuns++
			hashed += s["hashed_files"].(float64)
			if b["full_scan"] != false {
				t.Fatalf("a backup after the changes scanned everything: %v", b)
			}
			// Only the changed directories and the root are written.
			if s["incremental"] != true || s["trees_stored"].(float64) > 4 || s["trees_stored"].(float64) >= first["trees_stored"].(float64) {
				t.Fatalf("a backup of 3 changes stored %v trees (incremental %v); the first one %v",
					s["trees_stored"], s["incremental"], first["trees_stored"])
			}
		}
		last = s
	}
	if hashed != 2 || last["files"].(float64) != 125 {
		t.Fatalf("backups after the changes hashed %v files in %d runs, the last has %v files", hashed, changedRuns, last["files"])
	}
	out := filepath.Join(dir, "out")
	c.ok("restore", "--repo", repo, last["name"].(string), out)
	restoretest.CompareTrees(t, src, out)

	cmd.Process.Signal(syscall.SIGTERM)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("watch after SIGTERM: %v", err)
	}
	c.ok("verify", "--repo", repo)
	// forget keeps only the last watched backup, which shares most of its
	// trees with the first: gc keeps them, and it restores.
	c.ok("forget", "--repo", repo, "--keep-last", "1")
	c.ok("gc", "--repo", repo)
	out2 := filepath.Join(dir, "out2")
	c.ok("restore", "--repo", repo, "latest", out2)
	restoretest.CompareTrees(t, src, out2)
	c.ok("verify", "--repo", repo, "--read-data")
	// The directory cache of watch's first (full) scan serves a backup
	// now: it reads only the two files written while watched.
	if after := summary(t, c.ok("backup", "--json", "--repo", repo, src)); after["hashed_files"].(float64) > 2 {
		t.Fatalf("backup after watch stopped read %v files; the directory cache was not used", after["hashed_files"])
	}
}
