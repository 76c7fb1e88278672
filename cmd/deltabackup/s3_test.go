package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/deltabackup/deltabackup/hashstore"
	"github.com/deltabackup/deltabackup/hashstore/s3store"
	"github.com/deltabackup/deltabackup/hashstore/s3store/s3test"
	"github.com/deltabackup/deltabackup/hashstore/storetest"
	"github.com/deltabackup/deltabackup/restore/restoretest"
)

// s3Repo returns an s3:// repository URL in a fresh bucket of the test
// server, reached through endpoint (the server itself, or a proxy).
func s3Repo(t *testing.T, endpoint string) string {
	t.Helper()
	return fmt.Sprintf("s3://%s/repo?endpoint=%s", s3test.NewBucket(t), url.QueryEscape(endpoint))
}

func requestsOf(t *testing.T, s map[string]any) map[string]float64 {
	t.Helper()
	raw, ok := s["requests"].(map[string]any)
	if !ok {
		t.Fatalf("summary has no requests: %v", s)
	}
	out := map[string]float64{}
	for k, v := range raw {
		out[k] = v.(float64)
	}
	return out
}

func TestS3BackupIncrementalRestore(t *testing.T) {
	endpoint := s3test.Endpoint(t)
	c := newCLI(t)
	dir := t.TempDir()
	goroot, err := exec.Command("go", "env", "GOROOT").Output()
	if err != nil {
		t.Fatal(err)
	}
	src := filepath.Join(dir, "src")
	if err := exec.Command("cp", "-a", filepath.Join(strings.TrimSpace(string(goroot)), "src"), src).Run(); err != nil {
		t.Fatal(err)
	}
	os.Chmod(src, 0o755)
	repo := s3Repo(t, endpoint)
	c.ok("init", "--create-bucket", "--repo", repo)
	full := summary(t, c.ok("backup", "--json", "--repo", repo, src))
	out := filepath.Join(dir, "out")
	c.ok("restore", "--repo", repo, "latest", out)
	restoretest.CompareTrees(t, src, out)

	// No change: a handful of requests besides the record.
	nochange := summary(t, c.ok("backup", "--json", "--repo", repo, src))
	req := requestsOf(t, nochange)
	total := 0.0
	for _, n := range req {
		total += n
	}
	// Writing the record (created only if absent) and the backup's lock:
	// one PUT each; the trees are all taken by id. Opening the encrypted
	// repository lists keys/ and reads the key file: two more.
	others := total - 2
	t.Logf("full backup: %v files, requests %v; no-change backup requests %v", full["files"], full["requests"], req)
	fullReq := requestsOf(t, full)
	if fullReq["HeadObject"] > 100 {
		t.Fatalf("a first backup of %v files made %v HEAD requests: small contents must not be looked up one by one", full["files"], fullReq["HeadObject"])
	}
	if others > 12 || nochange["hashed_bytes"].(float64) != 0 || nochange["uploaded_objects"].(float64) != 0 {
		t.Fatalf("no-change backup made %v requests besides the lock and the record (%v)", others, req)
	}

	// Five changed files: five objects.
	var changed []string
	filepath.Walk(src, func(p string, fi os.FileInfo, err error) error {
		if err == nil && fi.Mode().IsRegular() && fi.Size() > 1000 && fi.Size() < 100000 && len(changed) < 5 && strings.HasSuffix(p, ".go") {
			changed = append(changed, p)
		}
		return nil
	})
	for i, p := range changed {
		data, _ := os.ReadFile(p)
		os.WriteFile(p, append(data, []byte(fmt.Sprintf("\n// changed %d\n", i))...), 0o644)
	}
	incr := summary(t, c.ok("backup", "--json", "--repo", repo, src))
	if incr["uploaded_objects"].(float64) != 5 {
		t.Fatalf("after changing 5 files, %v objects uploaded", incr["uploaded_objects"])
	}
	out2 := filepath.Join(dir, "out2")
	c.ok("restore", "--repo", repo, "latest", out2)
	restoretest.CompareTrees(t, src, out2)
}

func TestS3BackupAndRestoreThroughResets(t *testing.T) {
	endpoint := s3test.Endpoint(t)
	u, _ := url.Parse(endpoint)
	proxy := storetest.NewProxy(t, u.Host)
	c := newCLI(t)
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	makeSource(t, src)
	repo := s3Repo(t, "http://"+proxy.Addr)
	c.ok("init", "--create-bucket", "--repo", repo)
	proxy.SetResetRate(0.1)
	c.ok("backup", "--repo", repo, "--s3-part-size", "5MiB", src)
	out := filepath.Join(dir, "out")
	c.ok("restore", "--repo", repo, "latest", out)
	restoretest.CompareTrees(t, src, out)
	if proxy.Resets() == 0 {
		t.Fatalf("no connection was reset (%d connections)", proxy.Connections())
	}
	t.Logf("%d of %d connections reset", proxy.Resets(), proxy.Connections())
}

func TestS3ServerGoneFailsCleanly(t *testing.T) {
	endpoint := s3test.Endpoint(t)
	u, _ := url.Parse(endpoint)
	proxy := storetest.NewProxy(t, u.Host)
	c := newCLI(t)
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	makeSource(t, src)
	bucket := s3test.NewBucket(t)
	repo := fmt.Sprintf("s3://%s/repo?endpoint=%s", bucket, url.QueryEscape("http://"+proxy.Addr))
	c.ok("init", "--create-bucket", "--repo", repo)
	proxy.SetResetRate(1) // every connection dies: the server is gone
	o := c.run("backup", "--retry-max-time", "3s", "--repo", repo, src)
	// One error naming the unreachable server, after the retries' warnings.
	lines := strings.Split(strings.TrimSpace(o.stderr), "\n")
	if o.code != 1 || !strings.Contains(lines[len(lines)-1], "connection to http://"+proxy.Addr) {
		t.Fatalf("backup with the server gone: exit %d\n%s", o.code, o.stderr)
	}
	for _, l := range lines[:len(lines)-1] {
		if !strings.Contains(l, "retrying") {
			t.Fatalf("backup with the server gone printed more than retries and one error:\n%s", o.stderr)
		}
	}
	proxy.SetResetRate(0)
	list := c.ok("list", "--json", "--repo", repo)
	var records []any
	json.Unmarshal([]byte(list.stdout), &records)
	if len(records) != 0 {
		t.Fatalf("a failed backup left records: %s", list.stdout)
	}
	// The server is back: the next backup completes.
	c.ok("backup", "--repo", repo, src)
	b, err := s3store.Open(context.Background(), s3store.Config{Bucket: bucket, Endpoint: endpoint})
	if err != nil {
		t.Fatal(err)
	}
	if uploads, _ := b.IncompleteUploads(context.Background()); len(uploads) != 0 {
		t.Fatalf("incomplete multipart uploads left: %v", uploads)
	}
}

// TestS3CopyForgetGC copies a local repository to S3, restores from S3,
// then forgets and collects there: deletes go in batches (DeleteObjects).
func TestS3CopyForgetGC(t *testing.T) {
	endpoint := s3test.Endpoint(t)
	c := newCLI(t)
	dir := t.TempDir()
	local, src := filepath.Join(dir, "local"), filepath.Join(dir, "src")
	makeSource(t, src)
	c.ok("init", "--repo", local, "--no-chunking") // big.bin one loose object, for gc to delete whole
	c.ok("backup", "--repo", local, "--name", "one", src)
	os.WriteFile(filepath.Join(src, "data/second.bin"), []byte(strings.Repeat("second ", 300000)), 0o644)
	os.Remove(filepath.Join(src, "data/big.bin"))
	os.Remove(filepath.Join(src, "data/big-copy.bin"))
	c.ok("backup", "--repo", local, "--name", "two", src)

	remote := s3Repo(t, endpoint)
	c.ok("init", "--create-bucket", "--repo", remote)
	first := summary(t, c.ok("copy", "--json", "--from", local, "--to", remote, "one"))
	rest := summary(t, c.ok("copy", "--json", "--from", local, "--to", remote))
	if first["objects"].(float64) == 0 || rest["present_objects"].(float64) == 0 || len(rest["copied"].([]any)) != 1 {
		t.Fatalf("copies: %v then %v", first, rest)
	}
	out := filepath.Join(dir, "out")
	c.ok("restore", "--repo", remote, "two", out)
	restoretest.CompareTrees(t, src, out)

	c.ok("forget", "--repo", remote, "--keep-last", "1")
	gc := summary(t, c.ok("gc", "--json", "--repo", remote))
	t.Logf("gc on S3: %v", gc)
	if gc["deleted_objects"].(float64) != 1 || gc["deleted_bytes"].(float64) < 6<<20 {
		t.Fatalf("gc did not delete the big file's object: %v", gc)
	}
	if req := requestsOf(t, gc); req["DeleteObjects"] == 0 || req["DeleteObject"] > 2 {
		t.Fatalf("gc deletes were not batched: %v", req)
	}
	c.ok("verify", "--repo", remote, "--read-data")
	out2 := filepath.Join(dir, "out2")
	c.ok("restore", "--repo", remote, "latest", out2)
	restoretest.CompareTrees(t, src, out2)
}

// TestS3MissingBucketHint: the library says the bucket is missing; the
// CLI adds what to do about it.
func TestS3MissingBucketHint(t *testing.T) {
	endpoint := s3test.Endpoint(t)
	c := newCLI(t)
	o := c.run("init", "--repo", s3Repo(t, endpoint))
	if o.code != 1 || !strings.Contains(o.stderr, "bucket does not exist") || !strings.Contains(o.stderr, "--create-bucket") {
		t.Fatalf("init of a missing bucket: exit %d, %s", o.code, o.stderr)
	}
}

func TestS3WrongCredentialsHint(t *testing.T) {
	endpoint := s3test.Endpoint(t)
	c := newCLI(t)
	repo := s3Repo(t, endpoint)
	c.ok("init", "--create-bucket", "--repo", repo)
	t.Setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret-do-not-print")
	o := c.run("list", "--repo", repo)
	lines := strings.Split(strings.TrimSpace(o.stderr), "\n")
	if o.code != 1 || len(lines) != 1 || !strings.Contains(o.stderr, "rejected the credentials") || !strings.Contains(o.stderr, "AWS_SECRET_ACCESS_KEY") {
		t.Fatalf("list with a wrong secret: exit %d, %s", o.code, o.stderr)
	}
	if strings.Contains(o.stderr+o.stdout, "wrong-secret-do-not-print") {
		t.Fatalf("the secret is printed: %s", o.stderr)
	}
}

// TestS3ObjectLock: with --s3-object-lock, what a backup writes (records,
// packs, index files, objects, key files) can be neither deleted nor
// overwritten by any credentials until the retention ends, while its lock
// files go as usual; forget keeps the backups its policy would remove
// that are still retained, and gc leaves retained garbage alone and
// succeeds. versitygw enforces Object Lock (compliance mode).
func TestS3ObjectLock(t *testing.T) {
	endpoint := s3test.Endpoint(t)
	c := newCLI(t)
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	makeSource(t, src)
	bucket := s3test.NewBucket(t)
	repo := fmt.Sprintf("s3://%s/repo?endpoint=%s", bucket, url.QueryEscape(endpoint))
	// The retention is the repository's: later commands apply it
	// without the flag.
	c.ok("init", "--create-bucket", "--repo", repo, "--s3-object-lock", "1h")
	c.ok("backup", "--repo", repo, "--name", "b1", src)
	os.WriteFile(filepath.Join(src, "new.txt"), []byte(strings.Repeat("new file ", 100)), 0o644)
	c.ok("backup", "--repo", repo, "--name", "b2", src)
	if st := c.ok("stats", "--repo", repo); !strings.Contains(st.stdout, "object lock:  every write retained 1h0m0s (compliance)") {
		t.Errorf("stats does not show the object lock:\n%s", st.stdout)
	}

	ctx := context.Background()
	b, err := s3store.Open(ctx, s3store.Config{Bucket: bucket, Prefix: "repo/", Endpoint: endpoint})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	var locked []string
	err = b.List(ctx, "", func(i hashstore.Info) error {
		if strings.HasPrefix(i.Key, "locks/") {
			t.Errorf("lock file %s left behind", i.Key)
		}
		locked = append(locked, i.Key)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, prefix := range []string{"backups/", "packs/", "index/", "objects/", "keys/"} {
		var key string
		for _, k := range locked {
			if strings.HasPrefix(k, prefix) {
				key = k
				break
			}
		}
		if key == "" {
			t.Fatalf("nothing stored under %s", prefix)
		}
		if until, err := b.RetainedUntil(ctx, key); err != nil || time.Until(until) < 50*time.Minute {
			t.Errorf("%s retained until %v (%v), want about an hour", key, until, err)
		}
		if err := b.Delete(ctx, key); err == nil {
			t.Errorf("%s could be deleted", key)
		}
		if err := b.Put(ctx, key, strings.NewReader("overwritten"), 11); err == nil {
			t.Errorf("%s could be overwritten", key)
		}
	}

	// forget keeps what is retained; nothing is removed, nothing fails.
	o := c.ok("forget", "--json", "--repo", repo, "--keep-last", "1")
	var f struct {
		Removed  []string `json:"removed"`
		Retained []string `json:"retained"`
	}
	json.Unmarshal([]byte(lastLine(o.stdout)), &f)
	if len(f.Removed) != 0 || len(f.Retained) != 1 || f.Retained[0] != "b1" {
		t.Errorf("forget with b1 retained: removed %v, retained %v", f.Removed, f.Retained)
	}
	// Garbage under retention (an object no backup references) is left
	// alone by gc, which still succeeds.
	lb, err := s3store.Open(ctx, s3store.Config{Bucket: bucket, Prefix: "repo/", Endpoint: endpoint, ObjectLock: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	defer lb.Close()
	orphan := "objects/ab/ab" + strings.Repeat("0", 62)
	if err := lb.Put(ctx, orphan, strings.NewReader("orphan"), 6); err != nil {
		t.Fatal(err)
	}
	var gc hashstore.GCReport
	json.Unmarshal([]byte(lastLine(c.ok("gc", "--json", "--repo", repo).stdout)), &gc)
	if gc.Retained < 1 || gc.DeletedObjects != 0 {
		t.Errorf("gc with retained garbage: %+v", gc)
	}
	if _, err := b.Stat(ctx, orphan); err != nil {
		t.Errorf("the retained orphan is gone: %v", err)
	}
	c.ok("verify", "--repo", repo, "--read-data")
	out := filepath.Join(dir, "out")
	c.ok("restore", "--repo", repo, "b1", out)
}
