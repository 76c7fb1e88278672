package main

import (
	"bufio"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/deltabackup/deltabackup/restore/restoretest"
)

// serve starts `deltabackup serve` with args and returns its URL; the
// server is stopped with SIGINT when the test ends, and must exit cleanly.
func (c *cli) serve(args ...string) string {
	c.t.Helper()
	if !slices.Contains(args, "--token-file") {
		args = append(args, "--no-auth")
	}
	cmd := exec.Command(binary, append([]string{"serve", "--json", "--listen", "127.0.0.1:0"}, args...)...)
	cmd.Env = append(os.Environ(), "DELTABACKUP_CACHE_DIR="+c.cacheDir, "DELTABACKUP_REPO=")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		c.t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		c.t.Fatal(err)
	}
	exited := make(chan error, 1)
	c.t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGINT)
		select {
		case err := <-exited:
			if err != nil {
				c.t.Errorf("serve did not stop cleanly on SIGINT: %v\n%s", err, stderr.String())
			}
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			c.t.Errorf("serve did not stop within 10s of SIGINT")
		}
	})
	lines := bufio.NewScanner(stdout)
	if !lines.Scan() {
		cmd.Wait()
		c.t.Fatalf("serve %v printed nothing: %s", args, stderr.String())
	}
	go func() {
		io.Copy(io.Discard, stdout)
		exited <- cmd.Wait()
	}()
	var hello struct {
		MessageType string `json:"message_type"`
		URL         string `json:"url"`
		Objects     int64  `json:"objects"`
	}
	// A repository's objects are not counted; a source's are.
	if err := json.Unmarshal(lines.Bytes(), &hello); err != nil || hello.MessageType != "serving" || (hello.Objects == 0 && slices.Contains(args, "--source")) {
		c.t.Fatalf("serve announced %q (%v)", lines.Text(), err)
	}
	return hello.URL
}

// copyTree copies a tree with cp -a, as an operator would clone a replica.
func copyTree(t *testing.T, from, to string) {
	t.Helper()
	if out, err := exec.Command("cp", "-a", from, to).CombinedOutput(); err != nil {
		t.Fatalf("cp -a: %v: %s", err, out)
	}
}

type restoreSources []struct {
	Source       string `json:"source"`
	PlanBytes    int64  `json:"plan_bytes"`
	FetchedBytes int64  `json:"fetched_bytes"`
}

func sourcesOf(t *testing.T, s map[string]any) restoreSources {
	t.Helper()
	b, _ := json.Marshal(s["sources"])
	var out restoreSources
	if err := json.Unmarshal(b, &out); err != nil {
		t.Fatal(err)
	}
	return out
}

// backedUpSource makes a source tree under a new directory and backs it up
// to a new local repository there.
func (c *cli) backedUpSource() (dir, src, repo string) {
	c.t.Helper()
	dir = c.t.TempDir()
	src = filepath.Join(dir, "src")
	repo = filepath.Join(dir, "repo")
	makeSource(c.t, src)
	c.ok("init", "--repo", repo)
	c.ok("backup", "--repo", repo, src)
	return dir, src, repo
}

func TestRestoreFromThreeServingPeers(t *testing.T) {
	c := newCLI(t)
	dir, src, repo := c.backedUpSource()
	var urls []string
	for _, name := range []string{"node-a", "node-b", "node-c"} {
		replica := filepath.Join(dir, name)
		copyTree(t, src, replica)
		urls = append(urls, c.serve("--source", replica, "--repo", repo, "--no-repo-objects"))
	}

	args := []string{"restore", "--json", "--repo", repo}
	for _, u := range urls {
		args = append(args, "--from", u)
	}
	target := filepath.Join(dir, "restored")
	s := summary(t, c.ok(append(args, "latest", target)...))
	restoretest.CompareTrees(t, src, target)
	sources := sourcesOf(t, s)
	if len(sources) != 4 {
		t.Fatalf("summary lists sources %v, want the repository and three peers", sources)
	}
	var fetched int64
	for _, src := range sources {
		if src.PlanBytes == 0 {
			t.Errorf("source %s got no work in the plan: %v", src.Source, sources)
		}
		fetched += src.FetchedBytes
	}
	if want := int64(s["bytes_downloaded"].(float64)); fetched != want {
		t.Errorf("bytes fetched per source add up to %d, the restore downloaded %d", fetched, want)
	}

	// Peers alone, no contents from the repository at all.
	target2 := filepath.Join(dir, "restored-from-peers")
	args = append(args, "--no-repo-source", "latest", target2)
	s = summary(t, c.ok(args...))
	restoretest.CompareTrees(t, src, target2)
	for _, src := range sourcesOf(t, s) {
		if strings.HasPrefix(src.Source, "file://") || src.Source == repo {
			t.Fatalf("--no-repo-source still used the repository: %v", s["sources"])
		}
	}
}

func TestServeTokenAndLoopback(t *testing.T) {
	c := newCLI(t)
	dir, src, repo := c.backedUpSource()

	o := c.runWithin(10*time.Second, "serve", "--source", src, "--listen", "0.0.0.0:0")
	if o.code != 2 || !strings.Contains(o.stderr, "--token-file") {
		t.Fatalf("serve on all interfaces without a token: exit %d, %s", o.code, o.stderr)
	}

	token := filepath.Join(dir, "token")
	os.WriteFile(token, []byte("s3cret-peer-token\n"), 0o600)
	url := c.serve("--source", src, "--repo", repo, "--no-repo-objects", "--token-file", token)

	target := filepath.Join(dir, "out")
	o = c.run("restore", "--repo", repo, "--from", url, "--no-repo-source", "latest", target)
	if o.code == 0 || !strings.Contains(o.stderr, "token") {
		t.Fatalf("restore from a peer without its token: exit %d, %s", o.code, o.stderr)
	}
	if strings.Contains(o.stderr+o.stdout, "s3cret") {
		t.Fatal("the token appears in the output")
	}
	c.ok("restore", "--repo", repo, "--from", url, "--no-repo-source", "--peer-token-file", token, "latest", target)
	restoretest.CompareTrees(t, src, target)

	// With the token, a path or an unknown hash is still just 404.
	for _, p := range []string{"/v1/objects/../../etc/passwd", "/etc/passwd", "/v1/objects/" + strings.Repeat("ab", 32), "/v1/"} {
		req, _ := http.NewRequest("GET", url+p, nil)
		req.Header.Set("Authorization", "Bearer s3cret-peer-token")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusNotFound || strings.Contains(string(body), "root:") || strings.Contains(string(body), src) {
			t.Errorf("GET %s: %d %q", p, resp.StatusCode, body)
		}
	}
}
