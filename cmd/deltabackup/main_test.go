package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/deltabackup/deltabackup/snapshot/digest"
	"github.com/deltabackup/deltabackup/upload"

	"github.com/deltabackup/deltabackup/hashstore"
	"github.com/deltabackup/deltabackup/hashstore/storetest"
	"github.com/deltabackup/deltabackup/restore/restoretest"
	"github.com/deltabackup/deltabackup/snapshot"
)

// binary is the deltabackup command built once for all tests, run as a
// user would run it.
var binary string

func TestMain(m *testing.M) {
	// Every repository the tests make is encrypted, under this password,
	// with key files that open in milliseconds; every command run in
	// this process or as a process of its own finds them here.
	os.Setenv("DELTABACKUP_PASSWORD", storetest.Password)
	os.Setenv("DELTABACKUP_KDF_MEMORY", "8MiB")
	os.Setenv("DELTABACKUP_KDF_PASSES", "1")
	// Key files are read on every open, unless a test turns the cache on.
	os.Setenv("DELTABACKUP_KEY_CACHE", "0")
	for _, v := range []string{"DELTABACKUP_PASSWORD_FILE", "DELTABACKUP_PASSWORD_COMMAND", "DELTABACKUP_FROM_PASSWORD", "DELTABACKUP_FROM_PASSWORD_FILE",
		"DELTABACKUP_FROM_PASSWORD_COMMAND", "DELTABACKUP_NEW_PASSWORD", "DELTABACKUP_NEW_PASSWORD_FILE", "DELTABACKUP_NEW_PASSWORD_COMMAND"} {
		os.Unsetenv(v)
	}
	dir, err := os.MkdirTemp("", "deltabackup-bin-")
	if err != nil {
		panic(err)
	}
	os.Chmod(dir, 0o755) // other users run it in the unreadable-file test
	binary = filepath.Join(dir, "deltabackup")
	build := exec.Command("go", "build", "-o", binary, ".")
	build.Stderr = os.Stderr
	if err := build.Run(); err != nil {
		panic("build deltabackup: " + err.Error())
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

type cli struct {
	t        *testing.T
	cacheDir string
	asUser   *syscall.Credential
	// process runs every command as a process of its own: for tests
	// whose work is heavy, which the race detector would only slow down
	// (the command layer is raced by the other tests).
	process bool
}

type outcome struct {
	stdout, stderr string
	code           int
}

func newCLI(t *testing.T) *cli {
	return &cli{t: t, cacheDir: filepath.Join(t.TempDir(), "cache")}
}

// run runs deltabackup in this process, through the same run function
// main calls, so that go test -race covers the command layer. Commands
// run as another user, and those that must be a process of their own
// (killed, signalled, racing other processes), use runProcess.
func (c *cli) run(args ...string) outcome {
	c.t.Helper()
	if c.asUser != nil || c.process {
		return c.runWithin(0, args...)
	}
	var stdout, stderr bytes.Buffer
	// The flag goes before a "--", after which come a command's own
	// arguments (backup --stdin-from-command).
	at := slices.Index(args, "--")
	if at < 0 {
		at = len(args)
	}
	args = slices.Concat(args[:at], []string{"--cache-dir", c.cacheDir}, args[at:])
	code := run(context.Background(), args, &stdout, &stderr)
	return outcome{stdout.String(), stderr.String(), code}
}

// runProcess runs the deltabackup binary as a process of its own.
func (c *cli) runProcess(args ...string) outcome {
	c.t.Helper()
	return c.runWithin(0, args...)
}

// runWithin runs the binary for commands that might not end by
// themselves (serve): after d (when not 0) the process is killed and the
// code is -1.
func (c *cli) runWithin(d time.Duration, args ...string) outcome {
	c.t.Helper()
	ctx := context.Background()
	if d > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, d)
		defer cancel()
	}
	cmd := exec.CommandContext(ctx, binary, args...)
	cmd.Env = append(os.Environ(), "DELTABACKUP_CACHE_DIR="+c.cacheDir, "DELTABACKUP_REPO=")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if c.asUser != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: c.asUser}
	}
	err := cmd.Run()
	code := 0
	if exit, ok := err.(*exec.ExitError); ok {
		code = exit.ExitCode()
		if ctx.Err() != nil {
			code = -1
		}
	} else if err != nil {
		c.t.Fatal(err)
	}
	return outcome{stdout.String(), stderr.String(), code}
}

// openTestStore opens the local repository a test made with the CLI.
func openTestStore(t testing.TB, repo string) *hashstore.Store {
	t.Helper()
	store, err := hashstore.Open(context.Background(), hashstore.NewLocal(repo), storetest.Options(hashstore.Options{}))
	if err != nil {
		t.Fatal(err)
	}
	return store
}

// ok runs a command that must succeed.
func (c *cli) ok(args ...string) outcome {
	c.t.Helper()
	o := c.run(args...)
	if o.code != 0 {
		c.t.Fatalf("deltabackup %s: exit %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), o.code, o.stdout, o.stderr)
	}
	return o
}

// summary decodes the last stdout line of a --json command.
func summary(t *testing.T, o outcome) map[string]any {
	t.Helper()
	lines := strings.Split(strings.TrimSpace(o.stdout), "\n")
	for _, l := range lines {
		if !json.Valid([]byte(l)) {
			t.Fatalf("--json printed a line that is not JSON: %q", l)
		}
	}
	var m map[string]any
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &m); err != nil {
		t.Fatal(err)
	}
	if m["message_type"] != "summary" {
		t.Fatalf("last line is not a summary: %v", m)
	}
	return m
}

var old = time.Date(2021, 6, 7, 8, 9, 10, 111222333, time.UTC)

// makeSource writes a tree with nested dirs, many small and a few large
// files, duplicates, embedded files, symlinks, an empty dir and varied
// modes, all with old mtimes.
func makeSource(t *testing.T, root string) {
	t.Helper()
	write := func(rel string, data []byte, mode os.FileMode) {
		p := filepath.Join(root, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, data, mode); err != nil {
			t.Fatal(err)
		}
		os.Chmod(p, mode)
		os.Chtimes(p, old, old)
	}
	for i := range 120 {
		write(fmt.Sprintf("pkg%d/file%03d.go", i%7, i), []byte(strings.Repeat(fmt.Sprintf("line %d of file %d\n", i, i), 20+i*5)), 0o644)
	}
	big := make([]byte, 6<<20+123)
	for i := range big {
		big[i] = byte(i*7 + i/4096)
	}
	write("data/big.bin", big, 0o600)
	write("data/big-copy.bin", big, 0o640)
	write("bin/run.sh", []byte("#!/bin/sh\necho hello from a small script that is longer than the embed threshold of 150 bytes,\necho so that it is stored as an object of its own in the repository\n"), 0o755)
	write("tiny.txt", []byte("tiny"), 0o644)
	write("empty.txt", nil, 0o644)
	os.MkdirAll(filepath.Join(root, "var/empty/dir"), 0o750)
	os.Symlink("../tiny.txt", filepath.Join(root, "pkg0/link-to-tiny"))
	os.Symlink("/etc/hostname", filepath.Join(root, "abs-link"))
	filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if d.IsDir() {
			defer os.Chtimes(p, old, old) // after its children are done
		}
		return nil
	})
	time.Sleep(250 * time.Millisecond) // past the stat cache's racy window
}

func TestBackupRestoreIncremental(t *testing.T) {
	c := newCLI(t)
	dir := t.TempDir()
	repo, src := filepath.Join(dir, "repo"), filepath.Join(dir, "src")
	makeSource(t, src)
	c.ok("init", "--repo", repo)

	// 1. Full backup and restore into a new directory.
	first := summary(t, c.ok("backup", "--repo", repo, "--json", src))
	// Every distinct content once (chunks included: where the chunker
	// cuts depends on the repository's key).
	if first["files"].(float64) != 125 || first["uploaded_objects"].(float64) != float64(distinctContents(t, repo)) {
		t.Fatalf("first backup: %v, want %d objects", first, distinctContents(t, repo))
	}
	out := filepath.Join(dir, "out1")
	c.ok("restore", "--repo", repo, "latest", out)
	restoretest.CompareTrees(t, src, out)

	// 2. Nothing changed: nothing read, nothing uploaded.
	second := summary(t, c.ok("backup", "--repo", repo, "--json", src))
	if second["hashed_bytes"].(float64) != 0 || second["uploaded_objects"].(float64) != 0 {
		t.Fatalf("no-change backup read %v bytes and uploaded %v objects", second["hashed_bytes"], second["uploaded_objects"])
	}

	// 3. Change 3 files, add 1, delete 1, touch 1.
	os.WriteFile(filepath.Join(src, "pkg1/file001.go"), []byte(strings.Repeat("changed one\n", 40)), 0o644)
	os.WriteFile(filepath.Join(src, "pkg2/file002.go"), []byte(strings.Repeat("changed two\n", 40)), 0o644)
	os.WriteFile(filepath.Join(src, "tiny.txt"), []byte("tiny, now changed (still embedded)"), 0o644)
	os.WriteFile(filepath.Join(src, "pkg3/new.go"), []byte(strings.Repeat("a new file\n", 30)), 0o644)
	os.Remove(filepath.Join(src, "pkg4/file004.go"))
	now := time.Now()
	os.Chtimes(filepath.Join(src, "pkg5/file005.go"), now, now)
	time.Sleep(250 * time.Millisecond)
	third := summary(t, c.ok("backup", "--repo", repo, "--json", src))
	// New distinct contents above the embed threshold: two changed files
	// and the new one. The touched file has the same content.
	if third["uploaded_objects"].(float64) != 3 {
		t.Fatalf("incremental uploaded %v objects, want 3", third["uploaded_objects"])
	}
	out3 := filepath.Join(dir, "out3")
	c.ok("restore", "--repo", repo, third["name"].(string), out3)
	restoretest.CompareTrees(t, src, out3)

	// The first backup still restores to the first state.
	out1again := filepath.Join(dir, "out1-again")
	c.ok("restore", "--repo", repo, first["name"].(string), out1again)
	restoretest.CompareTrees(t, out, out1again)

	list := c.ok("list", "--repo", repo)
	for _, name := range []any{first["name"], second["name"], third["name"]} {
		if !strings.Contains(list.stdout, name.(string)) {
			t.Fatalf("list does not show %v:\n%s", name, list.stdout)
		}
	}
	ls := c.ok("ls", "-l", "--repo", repo, "latest")
	if !strings.Contains(ls.stdout, "pkg3/new.go") || !strings.Contains(ls.stdout, "abs-link -> /etc/hostname") {
		t.Fatalf("ls output:\n%s", ls.stdout)
	}
	show := c.ok("show", "--repo", repo, "latest")
	if !strings.Contains(show.stdout, "125 files") || !strings.Contains(show.stdout, third["root_hash"].(string)) {
		t.Fatalf("show output:\n%s", show.stdout)
	}
	var m struct {
		Root   string          `json:"root"`
		Files  []snapshot.File `json:"files"`
		Hashes []snapshot.Hash `json:"hashes"`
	}
	if err := json.Unmarshal([]byte(c.ok("show", "--json", "--repo", repo, "latest").stdout), &m); err != nil || len(m.Files) != 125 || m.Root != third["root_hash"] || len(m.Hashes) == 0 {
		t.Fatalf("show --json: %v, %d files, root %s", err, len(m.Files), m.Root)
	}
	// The 6 MiB file is kept in chunks: the manifest and ls list them,
	// and dump puts it together.
	big, _ := os.ReadFile(filepath.Join(src, "data/big.bin"))
	for _, f := range m.Files {
		if f.RelativePath == "data/big.bin" && (len(f.Chunks) < 2 || !f.Hexdigest.IsZero()) {
			t.Fatalf("show --json lists big.bin as %+v, want its chunks", f)
		}
	}
	var entry struct {
		Chunks []snapshot.Hash `json:"chunks"`
	}
	if err := json.Unmarshal([]byte(c.ok("ls", "--json", "--repo", repo, "latest", "data/big.bin").stdout), &entry); err != nil || len(entry.Chunks) < 2 {
		t.Fatalf("ls --json of a chunked file: %v, %d chunks", err, len(entry.Chunks))
	}
	if dumped := c.ok("dump", "--repo", repo, "latest", "data/big.bin").stdout; dumped != string(big) {
		t.Fatalf("dump of a chunked file gave %d bytes, want its %d", len(dumped), len(big))
	}
}

func TestCorruptObjectThenRepair(t *testing.T) {
	c := newCLI(t)
	dir := t.TempDir()
	repo, src := filepath.Join(dir, "repo"), filepath.Join(dir, "src")
	makeSource(t, src)
	c.ok("init", "--repo", repo)
	c.ok("backup", "--repo", repo, src)

	content, _ := os.ReadFile(filepath.Join(src, "bin/run.sh"))
	h := digest.Of(content)
	store := openTestStore(t, repo)
	loc, err := store.Locate(context.Background(), h)
	if err != nil || !loc.Packed {
		t.Fatalf("small file's object is not in a pack: %+v, %v", loc, err)
	}
	objectFile := filepath.Join(repo, filepath.FromSlash(loc.Key))
	good, err := os.ReadFile(objectFile)
	if err != nil {
		t.Fatal(err)
	}
	bad := bytes.Clone(good)
	bad[loc.Offset+loc.Length-3] ^= 0x01 // a byte of this object's payload inside the pack
	os.WriteFile(objectFile, bad, 0o600)

	out := filepath.Join(dir, "out")
	o := c.run("restore", "--repo", repo, "latest", out)
	if o.code != 1 || !strings.Contains(o.stderr, "bin/run.sh") || !strings.Contains(o.stderr, h.String()) {
		t.Fatalf("restore with a corrupt object: exit %d, stderr:\n%s", o.code, o.stderr)
	}
	if _, err := os.Stat(filepath.Join(out, "bin/run.sh")); err == nil {
		t.Fatal("the file of the corrupt object was written")
	}
	restoretest.CompareTrees(t, src, out, "bin/run.sh")

	os.WriteFile(objectFile, good, 0o600)
	o = c.ok("restore", "--repo", repo, "--json", "latest", out)
	if s := summary(t, o); s["objects_downloaded"].(float64) != 1 {
		t.Fatalf("second restore fetched %v objects, want only the repaired one", s["objects_downloaded"])
	}
	restoretest.CompareTrees(t, src, out)
}

func TestHandMadeTreeWithEscapeIsRefused(t *testing.T) {
	c := newCLI(t)
	dir := t.TempDir()
	repo := filepath.Join(dir, "repo")
	c.ok("init", "--repo", repo)
	ctx := context.Background()
	store := openTestStore(t, repo)
	// A valid tree with a file "xx-escape", patched into "../escape" as
	// a hostile writer would.
	tree, _ := (&snapshot.Tree{Nodes: []snapshot.Node{{Name: "xx-escape", Type: snapshot.TypeFile, Mode: 0o644, Size: 5, Embedded: []byte("owned")}}}).Encode()
	tree = bytes.Replace(tree, []byte("xx-escape"), []byte("../escape"), 1)
	root := digest.Of(tree)
	if _, err := store.PutBytes(ctx, root, tree); err != nil {
		t.Fatal(err)
	}
	if err := store.PutBackup(ctx, hashstore.BackupRecord{Name: "evil", Root: root, End: time.Now()}); err != nil {
		t.Fatal(err)
	}
	target := filepath.Join(dir, "target")
	o := c.run("restore", "--repo", repo, "evil", target)
	if o.code != 1 || !strings.Contains(o.stderr, "../escape") {
		t.Fatalf("hostile tree: exit %d, stderr:\n%s", o.code, o.stderr)
	}
	if _, err := os.Lstat(filepath.Join(dir, "escape")); err == nil {
		t.Fatal("a file was written outside the target")
	}
	if _, err := os.Lstat(target); err == nil {
		t.Fatal("the target was created although the tree was refused")
	}
}

func TestUnreadableFileExitCode3(t *testing.T) {
	c := newCLI(t)
	// Root reads any file whatever its mode, so as root the backup runs as
	// the unprivileged user nobody, in a directory nobody may use.
	dir, err := os.MkdirTemp("", "deltabackup-unreadable-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o777)
	if os.Geteuid() == 0 {
		c.asUser = &syscall.Credential{Uid: 65534, Gid: 65534}
	}
	c.cacheDir = filepath.Join(dir, "cache")
	src, repo := filepath.Join(dir, "src"), filepath.Join(dir, "repo")
	makeSource(t, src)
	filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if fi, err := os.Lstat(p); err == nil && fi.Mode()&fs.ModeSymlink == 0 {
			os.Chmod(p, fi.Mode().Perm()|0o005) // readable by the other user
		}
		return nil
	})
	secret := filepath.Join(src, "pkg1/secret.key")
	os.WriteFile(secret, []byte(strings.Repeat("s", 500)), 0o644)
	os.Chmod(secret, 0)
	os.Chmod(dir, 0o777)
	c.ok("init", "--repo", repo)
	o := c.run("backup", "--repo", repo, "--json", src)
	if o.code != 3 {
		t.Fatalf("backup with an unreadable file: exit %d, want 3\nstderr: %s", o.code, o.stderr)
	}
	s := summary(t, o)
	if fmt.Sprint(s["unreadable"]) != "[pkg1/secret.key]" || s["files"].(float64) != 125 {
		t.Fatalf("summary: unreadable %v, files %v", s["unreadable"], s["files"])
	}
	o = c.run("backup", "--repo", repo, src)
	if o.code != 3 || !strings.Contains(o.stderr, "pkg1/secret.key") || !strings.Contains(o.stderr, "permission denied") {
		t.Fatalf("text output does not list the unreadable file: exit %d\n%s", o.code, o.stderr)
	}
	out := filepath.Join(dir, "out")
	c.ok("restore", "--repo", repo, "latest", out)
	// Restored by the other user, the files are that user's.
	restoretest.CompareTreesWith(t, src, out, restoretest.Options{Ignore: []string{"pkg1/secret.key"}})
}

func TestUsageAndRepositoryErrors(t *testing.T) {
	c := newCLI(t)
	dir := t.TempDir()
	repo := filepath.Join(dir, "repo")
	c.ok("init", "--repo", repo)
	notRepo := filepath.Join(dir, "plain")
	os.MkdirAll(notRepo, 0o755)
	cases := []struct {
		args []string
		code int
		want string
	}{
		{[]string{"backup", dir}, 2, "no repository given"},
		{[]string{"backup", "--repo", repo}, 2, "one source directory"},
		{[]string{"backup", "--repo", repo, "--bogus", dir}, 2, "unknown flag"},
		{[]string{"frobnicate"}, 2, "unknown command"},
		{[]string{"backup", "--repo", repo, "--embed-below", "lots", dir}, 2, "invalid size"},
		{[]string{"backup", "--repo", repo, "--name", "../x", dir}, 2, "invalid backup name"},
		{[]string{"init", "--repo", repo}, 1, "already exists"},
		{[]string{"list", "--repo", filepath.Join(dir, "nowhere")}, 10, "does not exist: not a deltabackup repository; create one with 'deltabackup init"},
		{[]string{"list", "--repo", notRepo}, 10, "not a deltabackup repository"},
		{[]string{"restore", "--repo", repo, "latest", filepath.Join(dir, "t")}, 1, "no backups yet"},
		{[]string{"restore", "--repo", repo, "nope", filepath.Join(dir, "t")}, 1, "backup \"nope\": not found"},
		{[]string{"backup", "--repo", repo, filepath.Join(dir, "missing-src")}, 1, "no such file or directory"},
		{[]string{"backup", "--repo", "s3cr3t://user:pw@host/x", dir}, 2, "unsupported scheme"},
	}
	for _, tc := range cases {
		o := c.run(tc.args...)
		if o.code != tc.code || !strings.Contains(o.stderr, tc.want) {
			t.Errorf("deltabackup %s: exit %d, stderr %q; want exit %d and %q", strings.Join(tc.args, " "), o.code, o.stderr, tc.code, tc.want)
		}
		if strings.Count(strings.TrimSpace(o.stderr), "\n") > 0 {
			t.Errorf("deltabackup %s: error is not one line: %q", strings.Join(tc.args, " "), o.stderr)
		}
		if strings.Contains(o.stderr, "pw@") {
			t.Errorf("credentials leaked into an error: %q", o.stderr)
		}
	}
	o := c.run("--json", "list", "--repo", notRepo)
	var exitErr map[string]any
	if err := json.Unmarshal([]byte(o.stderr), &exitErr); err != nil || exitErr["message_type"] != "exit_error" || exitErr["code"].(float64) != 10 {
		t.Fatalf("--json error output %q", o.stderr)
	}
}

func TestJSONProgressLines(t *testing.T) {
	c := newCLI(t)
	dir := t.TempDir()
	repo, src := filepath.Join(dir, "repo"), filepath.Join(dir, "src")
	makeSource(t, src)
	c.ok("init", "--repo", repo)
	o := c.ok("backup", "--repo", repo, "--json", src)
	phases := map[string]int{}
	sc := bufio.NewScanner(strings.NewReader(o.stdout))
	for sc.Scan() {
		var line map[string]any
		if err := json.Unmarshal(sc.Bytes(), &line); err != nil {
			t.Fatalf("not JSON: %q", sc.Text())
		}
		if line["message_type"] == "status" {
			phases[line["phase"].(string)]++
			for _, k := range []string{"handled", "total", "bytes_handled", "bytes_per_second", "files_per_second"} {
				if _, ok := line[k]; !ok {
					t.Fatalf("status line without %s: %v", k, line)
				}
			}
		}
	}
	if phases["backup"] == 0 {
		t.Fatalf("progress lines per phase: %v", phases)
	}
	summary(t, o)
}

func TestGOROOTSourceRoundTrip(t *testing.T) {
	goroot, err := exec.Command("go", "env", "GOROOT").Output()
	if err != nil {
		t.Fatal(err)
	}
	src := filepath.Join(strings.TrimSpace(string(goroot)), "src")
	c := newCLI(t)
	dir := t.TempDir()
	repo, out := filepath.Join(dir, "repo"), filepath.Join(dir, "out")
	c.ok("init", "--repo", repo)
	first := summary(t, c.ok("backup", "--repo", repo, "--json", src))
	c.ok("restore", "--repo", repo, "latest", out)
	restoretest.CompareTrees(t, src, out)
	second := summary(t, c.ok("backup", "--repo", repo, "--json", src))
	if second["hashed_bytes"].(float64) != 0 || second["uploaded_objects"].(float64) != 0 || second["files"] != first["files"] {
		t.Fatalf("no-change backup of GOROOT/src: %v", second)
	}
}

func TestRepositoryInsideSourceIsLeftOut(t *testing.T) {
	c := newCLI(t)
	src := filepath.Join(t.TempDir(), "src")
	makeSource(t, src)
	repo := filepath.Join(src, "backups [weekly]")
	c.ok("init", "--repo", repo)
	first := summary(t, c.ok("backup", "--repo", repo, "--json", src))
	second := summary(t, c.ok("backup", "--repo", repo, "--json", src))
	if first["files"].(float64) != 125 || second["files"].(float64) != 125 {
		t.Fatalf("the repository inside the source was backed up: %v then %v files", first["files"], second["files"])
	}
}

// distinctContents counts the distinct contents (objects and chunks) of
// the latest backup in repo.
func distinctContents(t *testing.T, repo string) int {
	t.Helper()
	store := openTestStore(t, repo)
	rec, err := store.Backup(context.Background(), hashstore.LatestBackup, hashstore.BackupFilter{})
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	if err := snapshot.Hashes(context.Background(), &upload.Trees{Store: store}, rec.Root, func(snapshot.Hash) error { n++; return nil }); err != nil {
		t.Fatal(err)
	}
	return n
}
