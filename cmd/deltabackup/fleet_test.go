package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/deltabackup/deltabackup/hashstore/s3store/s3test"
	"github.com/deltabackup/deltabackup/restore/restoretest"
)

// concurrentNodes runs 20 backups at once, 5 from each of 4 nodes, each of
// its own tree, into repo: every one must exit 0 and write its own record,
// and every record must restore its own tree (the audit's M1: names raced
// for with a check and then a put lost backups, exit 0).
func concurrentNodes(t *testing.T, c *cli, repo string) {
	top := t.TempDir()
	const backups = 20
	srcs := make([]string, backups)
	for i := range backups {
		srcs[i] = filepath.Join(top, fmt.Sprintf("tree%02d", i))
		for j, size := range []int{40, 3000, 70000} {
			p := filepath.Join(srcs[i], fmt.Sprintf("d%d/f%d", j, j))
			os.MkdirAll(filepath.Dir(p), 0o755)
			os.WriteFile(p, []byte(strings.Repeat(fmt.Sprintf("tree %d file %d;", i, j), size/16)), 0o644)
		}
	}
	names := make([]string, backups)
	var wg sync.WaitGroup
	for i := range backups {
		wg.Go(func() {
			o := c.runProcess("backup", "--json", "--node", fmt.Sprintf("node%d", i%4), "--repo", repo, srcs[i])
			if o.code != 0 {
				t.Errorf("backup %d: exit %d: %s", i, o.code, o.stderr)
				return
			}
			names[i], _ = summary(t, o)["name"].(string)
		})
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	seen := map[string]int{}
	for i, n := range names {
		if j, dup := seen[n]; dup {
			t.Fatalf("backups %d and %d both report the name %s", j, i, n)
		}
		seen[n] = i
	}
	list := c.ok("list", "--repo", repo)
	if got := strings.Count(list.stdout, "\n") - 2; got != backups { // a header and a summary line
		t.Fatalf("%d records after %d backups:\n%s", got, backups, list.stdout)
	}
	for i, n := range names {
		out := filepath.Join(top, "restored", n)
		c.ok("restore", "--repo", repo, n, out)
		restoretest.CompareTrees(t, srcs[i], out)
	}
}

func TestConcurrentBackupsFromManyNodesKeepEveryRecord(t *testing.T) {
	c := newCLI(t)
	repo := filepath.Join(t.TempDir(), "repo")
	c.ok("init", "--repo", repo)
	concurrentNodes(t, c, repo)
}

func TestS3ConcurrentBackupsFromManyNodesKeepEveryRecord(t *testing.T) {
	endpoint := s3test.Endpoint(t)
	c := newCLI(t)
	repo := s3Repo(t, endpoint)
	c.ok("init", "--create-bucket", "--repo", repo)
	concurrentNodes(t, c, repo)
}

// TestLatestIsPerNodeAndSource is the audit's item 4: in a repository
// shared by nodes, "latest" is the newest backup of this node (--node) and
// source; another node's newer backup is never restored instead, and a
// node with two sources must say which.
func TestLatestIsPerNodeAndSource(t *testing.T) {
	c := newCLI(t)
	top := t.TempDir()
	repo := filepath.Join(top, "repo")
	c.ok("init", "--repo", repo)
	a, b, a2 := filepath.Join(top, "a"), filepath.Join(top, "b"), filepath.Join(top, "a2")
	for dir, content := range map[string]string{a: "node A's data", b: "node B's data", a2: "node A's other source"} {
		os.MkdirAll(dir, 0o755)
		os.WriteFile(filepath.Join(dir, "f"), []byte(content), 0o644)
	}
	c.ok("backup", "--node", "node-a", "--repo", repo, a)
	c.ok("backup", "--node", "node-b", "--repo", repo, b) // newer, of another node
	out := filepath.Join(top, "out")
	c.ok("restore", "--node", "node-a", "--repo", repo, "latest", out)
	if data, _ := os.ReadFile(filepath.Join(out, "f")); string(data) != "node A's data" {
		t.Fatalf("restore --node node-a latest gave %q", data)
	}
	// This host made no backup: latest names nothing and says so.
	o := c.run("restore", "--repo", repo, "latest", filepath.Join(top, "out2"))
	if o.code != 1 || !strings.Contains(o.stderr, "--node") || !strings.Contains(o.stderr, "node-a") {
		t.Fatalf("latest of a host without backups: exit %d, %s", o.code, o.stderr)
	}
	if _, err := os.Stat(filepath.Join(top, "out2", "f")); err == nil {
		t.Fatal("another node's backup was restored")
	}
	// Two sources of one node: latest is ambiguous until --source says.
	c.ok("backup", "--node", "node-a", "--repo", repo, a2)
	o = c.run("show", "--node", "node-a", "--repo", repo, "latest")
	if o.code != 1 || !strings.Contains(o.stderr, "ambiguous") || !strings.Contains(o.stderr, a) || !strings.Contains(o.stderr, a2) {
		t.Fatalf("ambiguous latest: exit %d, %s", o.code, o.stderr)
	}
	show := c.ok("show", "--node", "node-a", "--source", a, "--repo", repo, "latest")
	if !strings.Contains(show.stdout, "node-a") {
		t.Fatalf("show --source: %s", show.stdout)
	}
	// list filters by node.
	if l := c.ok("list", "--node", "node-b", "--repo", repo); strings.Count(l.stdout, "\n") != 3 || !strings.Contains(l.stdout, "1 backups; encryption: xchacha20-poly1305") {
		t.Fatalf("list --node node-b:\n%s", l.stdout)
	}
	// --all-nodes: the newest of any node, as before.
	c.ok("restore", "--all-nodes", "--source", a2, "--repo", repo, "latest", filepath.Join(top, "out3"))
}
