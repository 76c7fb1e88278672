package main

import (
	"crypto/rand"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/deltabackup/deltabackup/hashstore/sftpstore/sftptest"
	"github.com/deltabackup/deltabackup/hashstore/storetest"
	"github.com/deltabackup/deltabackup/restore/restoretest"
)

// sftpCLI runs commands against one sftp:// repository: the arguments
// get the repository and the test server's key and known_hosts file.
type sftpCLI struct {
	*cli
	repo  string
	flags []string
}

func newSFTPCLI(t *testing.T, srv *sftptest.Server, addr string) *sftpCLI {
	repo, flags := srv.URL(t, addr)
	return &sftpCLI{cli: newCLI(t), repo: repo, flags: flags}
}

func (c *sftpCLI) args(args ...string) []string {
	return append(append(args, "--repo", c.repo), c.flags...)
}

func (c *sftpCLI) sok(args ...string) outcome {
	c.t.Helper()
	return c.ok(c.args(args...)...)
}

func copyGOROOTSrc(t *testing.T, dst string) {
	t.Helper()
	goroot, err := exec.Command("go", "env", "GOROOT").Output()
	if err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("cp", "-a", filepath.Join(strings.TrimSpace(string(goroot)), "src"), dst).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v\n%s", err, out)
	}
	os.Chmod(dst, 0o755)
}

// TestSFTPRoundTrip: GOROOT/src to an SFTP server and back, a no-change
// backup that makes few requests, verify --read-data, forget and gc.
func TestSFTPRoundTrip(t *testing.T) {
	srv := sftptest.Start(t)
	c := newSFTPCLI(t, srv, "")
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	copyGOROOTSrc(t, src)
	c.sok("init")
	full := summary(t, c.sok("backup", "--json", src))
	out := filepath.Join(dir, "out")
	c.sok("restore", "latest", out)
	restoretest.CompareTrees(t, src, out)

	nochange := summary(t, c.sok("backup", "--json", src))
	req := requestsOf(t, nochange)
	total := 0.0
	for _, n := range req {
		total += n
	}
	t.Logf("full backup: %v files, requests %v; no-change backup: %v requests %v", full["files"], full["requests"], total, req)
	if nochange["hashed_bytes"].(float64) != 0 || nochange["uploaded_objects"].(float64) != 0 {
		t.Fatalf("no-change backup read or stored contents: %v", nochange)
	}
	// The lock (written, refreshed, deleted) and the record (a temporary
	// file linked into place) take most of these; a listing of gc markers
	// and of the index the rest.
	if total > 30 {
		t.Fatalf("no-change backup made %v requests (%v)", total, req)
	}

	// A change, then forget the first backup and collect.
	os.WriteFile(filepath.Join(src, "go.mod"), []byte("module std\n// changed\n"), 0o644)
	os.RemoveAll(filepath.Join(src, "cmd"))
	c.sok("backup", src)
	c.sok("forget", "--keep-last", "1")
	gc := summary(t, c.sok("gc", "--json"))
	if gc["deleted_objects"].(float64)+gc["deleted_packs"].(float64)+gc["repacked_packs"].(float64) == 0 {
		t.Fatalf("gc after forgetting a backup of all of cmd/ deleted nothing: %v", gc)
	}
	v := summary(t, c.sok("verify", "--read-data", "--json"))
	if v["problems"] != nil && len(v["problems"].([]any)) != 0 {
		t.Fatalf("verify after gc: %v", v)
	}
	out2 := filepath.Join(dir, "out2")
	c.sok("restore", "latest", out2)
	restoretest.CompareTrees(t, src, out2)
}

// TestSFTPThroughResets: a proxy resets every tenth connection.
func TestSFTPThroughResets(t *testing.T) {
	srv := sftptest.Start(t)
	proxy := storetest.NewProxy(t, srv.Host+":"+strconv.Itoa(srv.Port))
	c := newSFTPCLI(t, srv, proxy.Addr)
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	makeSource(t, src)
	c.sok("init")
	proxy.SetResetRate(0.1)
	c.sok("backup", src)
	out := filepath.Join(dir, "out")
	c.sok("restore", "latest", out)
	restoretest.CompareTrees(t, src, out)
	if proxy.Resets() == 0 {
		t.Fatalf("no connection was reset (%d connections)", proxy.Connections())
	}
	t.Logf("%d of %d connections reset", proxy.Resets(), proxy.Connections())

	// SFTP keeps one connection per process, so resets early in the
	// handshake are not enough: every other connection now dies in the
	// middle of a transfer, after 64 KiB to 4 MiB.
	proxy.SetResetWindow(64<<10, 4<<20)
	proxy.SetResetRate(0.5)
	before := proxy.Resets()
	third := make([]byte, 12<<20) // incompressible, so it crosses the wire
	rand.Read(third)
	os.WriteFile(filepath.Join(src, "data/third.bin"), third, 0o644)
	c.sok("backup", src)
	out2 := filepath.Join(dir, "out2")
	c.sok("restore", "latest", out2)
	restoretest.CompareTrees(t, src, out2)
	if proxy.Resets() < before+2 {
		t.Fatalf("%d connections reset mid-transfer, want at least 2", proxy.Resets()-before)
	}
	t.Logf("%d of %d connections reset in all", proxy.Resets(), proxy.Connections())
}

// TestSFTPServerGoneMidBackup: the server goes away after a megabyte of
// the backup: one clear line, exit 1, no record; when it is back, the
// backup runs to the end.
func TestSFTPServerGoneMidBackup(t *testing.T) {
	srv := sftptest.Start(t)
	proxy := storetest.NewProxy(t, srv.Host+":"+strconv.Itoa(srv.Port))
	c := newSFTPCLI(t, srv, proxy.Addr)
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	makeSource(t, src)
	c.sok("init")
	proxy.CutAfter(1 << 20)
	o := c.run(c.args("backup", "--retry-max-time", "3s", src)...)
	lines := strings.Split(strings.TrimSpace(o.stderr), "\n")
	if o.code != 1 || !strings.Contains(lines[len(lines)-1], "127.0.0.1") {
		t.Fatalf("backup with the server gone: exit %d\n%s", o.code, o.stderr)
	}
	for _, l := range lines[:len(lines)-1] {
		if !strings.Contains(l, "retrying") {
			t.Fatalf("backup with the server gone printed more than retries and one error:\n%s", o.stderr)
		}
	}
	if !proxy.Cut() {
		t.Fatal("the backup ended before the server went away")
	}
	proxy.Resume()
	var records []any
	json.Unmarshal([]byte(c.sok("list", "--json").stdout), &records)
	if len(records) != 0 {
		t.Fatalf("a failed backup left records: %v", records)
	}
	c.sok("backup", src)
	out := filepath.Join(dir, "out")
	c.sok("restore", "latest", out)
	restoretest.CompareTrees(t, src, out)
}

// TestSFTPErrorsAreOneLine: an unknown host key, a wrong key and a missing
// repository each give one line that says what to do.
func TestSFTPErrorsAreOneLine(t *testing.T) {
	srv := sftptest.Start(t)
	other := sftptest.Start(t)
	c := newSFTPCLI(t, srv, "")
	c.sok("init")
	empty := filepath.Join(t.TempDir(), "known_hosts")
	os.WriteFile(empty, nil, 0o600)
	for _, tc := range []struct {
		name  string
		args  []string
		code  int
		wants []string
	}{
		{"unknown host key", []string{"list", "--repo", c.repo, "--sftp-identity", srv.Identity, "--sftp-known-hosts", empty}, 1, []string{"host key is not known", "SHA256:", "ssh-keyscan"}},
		{"wrong key", []string{"list", "--repo", c.repo, "--sftp-identity", other.Identity, "--sftp-known-hosts", srv.KnownHosts}, 1, []string{"authentication failed", "--sftp-identity"}},
		{"missing directory", append([]string{"list", "--repo", c.repo + "-missing"}, c.flags...), 1, []string{"directory does not exist", "deltabackup init"}},
	} {
		o := c.run(tc.args...)
		msg := strings.TrimSpace(o.stderr)
		if o.code != tc.code || strings.Count(msg, "\n") != 0 {
			t.Errorf("%s: exit %d, want %d, and one line:\n%s", tc.name, o.code, tc.code, msg)
		}
		for _, w := range tc.wants {
			if !strings.Contains(msg, w) {
				t.Errorf("%s: %q does not say %q", tc.name, msg, w)
			}
		}
	}
}

// TestCopyLocalToSFTP: copy a local repository to an SFTP server and
// restore from there.
func TestCopyLocalToSFTP(t *testing.T) {
	srv := sftptest.Start(t)
	c := newSFTPCLI(t, srv, "")
	dir := t.TempDir()
	src, local := filepath.Join(dir, "src"), filepath.Join(dir, "local")
	makeSource(t, src)
	c.ok("init", "--repo", local)
	c.ok("backup", "--repo", local, "--name", "one", src)
	c.sok("init")
	c.ok(append([]string{"copy", "--from", local, "--to", c.repo}, c.flags...)...)
	out := filepath.Join(dir, "out")
	c.sok("restore", "one", out)
	restoretest.CompareTrees(t, src, out)
}
