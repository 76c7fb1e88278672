package main

import (
	"crypto/rand"
	"encoding/json"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/deltabackup/deltabackup/hashstore/azurestore/azuretest"
	"github.com/deltabackup/deltabackup/hashstore/gcsstore/gcstest"
	"github.com/deltabackup/deltabackup/hashstore/sftpstore/sftptest"
	"github.com/deltabackup/deltabackup/hashstore/storetest"
	"github.com/deltabackup/deltabackup/restore/restoretest"
)

// remote is a server of one kind of remote storage for the CLI tests.
type remote struct {
	// upstream is the server's host:port, for a proxy in front of it.
	upstream string
	// repo returns a new repository location reached through addr (""
	// for the server itself, else a proxy's host:port) and the flags that
	// go with it; it may point the environment at addr.
	repo func(t testing.TB, addr string) (string, []string)
	// initFlags are what init needs (creating the bucket).
	initFlags []string
}

var remoteKinds = []string{"sftp", "gcs", "azure"}

func newRemote(t *testing.T, kind string) *remote {
	t.Helper()
	switch kind {
	case "sftp":
		srv := sftptest.Start(t)
		return &remote{upstream: srv.Host + ":" + strconv.Itoa(srv.Port), repo: srv.URL}
	case "gcs":
		emulator := gcstest.Emulator(t)
		u, err := url.Parse(emulator)
		if err != nil || u.Host == "" {
			t.Fatalf("STORAGE_EMULATOR_HOST %q is not a URL", emulator)
		}
		return &remote{upstream: u.Host, initFlags: []string{"--create-bucket"},
			repo: func(t testing.TB, addr string) (string, []string) {
				if addr != "" {
					t.Setenv("STORAGE_EMULATOR_HOST", "http://"+addr)
				}
				return "gs://" + storetest.BucketName(t) + "/repo", nil
			}}
	case "azure":
		cs := azuretest.ConnectionString(t)
		endpoint := ""
		for _, part := range strings.Split(cs, ";") {
			if v, ok := strings.CutPrefix(part, "BlobEndpoint="); ok {
				endpoint = v
			}
		}
		u, err := url.Parse(endpoint)
		if err != nil || u.Host == "" {
			t.Fatalf("the Azurite connection string has no BlobEndpoint URL")
		}
		return &remote{upstream: u.Host, initFlags: []string{"--create-bucket"},
			repo: func(t testing.TB, addr string) (string, []string) {
				if addr != "" {
					t.Setenv("AZURE_STORAGE_CONNECTION_STRING", strings.Replace(cs, u.Host, addr, 1))
				} else {
					t.Setenv("AZURE_STORAGE_CONNECTION_STRING", cs)
				}
				return "azure://" + storetest.BucketName(t) + "/repo", nil
			}}
	}
	t.Fatalf("unknown remote kind %q", kind)
	return nil
}

// remoteCLI runs commands against one remote repository.
type remoteCLI struct {
	*cli
	repo  string
	flags []string
}

func (r *remote) cli(t *testing.T, addr string) *remoteCLI {
	repo, flags := r.repo(t, addr)
	c := &remoteCLI{cli: newCLI(t), repo: repo, flags: flags}
	c.ok(c.args(append([]string{"init"}, r.initFlags...)...)...)
	return c
}

func (c *remoteCLI) args(args ...string) []string {
	return append(append(args, "--repo", c.repo), c.flags...)
}

func (c *remoteCLI) rok(args ...string) outcome {
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

// TestRemoteRoundTrip: GOROOT/src to each kind of remote storage and back,
// a no-change backup that makes few requests, verify --read-data, forget
// and gc.
func TestRemoteRoundTrip(t *testing.T) {
	for _, kind := range remoteKinds {
		t.Run(kind, func(t *testing.T) {
			c := newRemote(t, kind).cli(t, "")
			dir := t.TempDir()
			src := filepath.Join(dir, "src")
			copyGOROOTSrc(t, src)
			full := summary(t, c.rok("backup", "--json", src))
			out := filepath.Join(dir, "out")
			c.rok("restore", "latest", out)
			restoretest.CompareTrees(t, src, out)

			nochange := summary(t, c.rok("backup", "--json", src))
			req := requestsOf(t, nochange)
			total := 0.0
			for _, n := range req {
				total += n
			}
			t.Logf("full backup: %v files, requests %v; no-change backup: %v requests %v", full["files"], full["requests"], total, req)
			if nochange["hashed_bytes"].(float64) != 0 || nochange["uploaded_objects"].(float64) != 0 {
				t.Fatalf("no-change backup read or stored contents: %v", nochange)
			}
			// The lock and the record take most of these; listings of
			// gc markers, locks, the index and the records the rest.
			if total > 30 {
				t.Fatalf("no-change backup made %v requests (%v)", total, req)
			}

			os.WriteFile(filepath.Join(src, "go.mod"), []byte("module std\n// changed\n"), 0o644)
			os.RemoveAll(filepath.Join(src, "cmd"))
			c.rok("backup", src)
			c.rok("forget", "--keep-last", "1")
			gc := summary(t, c.rok("gc", "--json"))
			if gc["deleted_objects"].(float64)+gc["deleted_packs"].(float64)+gc["repacked_packs"].(float64) == 0 {
				t.Fatalf("gc after forgetting a backup of all of cmd/ deleted nothing: %v", gc)
			}
			c.rok("verify", "--read-data")
			out2 := filepath.Join(dir, "out2")
			c.rok("restore", "latest", out2)
			restoretest.CompareTrees(t, src, out2)
		})
	}
}

// TestRemoteThroughResets: a proxy resets every tenth connection early,
// then every other one in the middle of a transfer.
func TestRemoteThroughResets(t *testing.T) {
	for _, kind := range remoteKinds {
		t.Run(kind, func(t *testing.T) {
			r := newRemote(t, kind)
			proxy := storetest.NewProxy(t, r.upstream)
			c := r.cli(t, proxy.Addr)
			dir := t.TempDir()
			src := filepath.Join(dir, "src")
			makeSource(t, src)
			proxy.SetResetRate(0.1)
			c.rok("backup", src)
			out := filepath.Join(dir, "out")
			c.rok("restore", "latest", out)
			restoretest.CompareTrees(t, src, out)
			if proxy.Resets() == 0 {
				t.Fatalf("no connection was reset (%d connections)", proxy.Connections())
			}
			// SFTP keeps one connection per process, so resets early in
			// the handshake are not enough: connections now die after
			// 64 KiB to 4 MiB.
			proxy.SetResetWindow(64<<10, 4<<20)
			proxy.SetResetRate(0.5)
			before := proxy.Resets()
			// Incompressible, so it crosses the wire; in chunks it goes up
			// in packs of 16 MiB and comes back in ranged reads, so it
			// takes three packs to make several large transfers, each of
			// which the proxy cuts with even odds.
			third := make([]byte, 48<<20)
			rand.Read(third)
			os.WriteFile(filepath.Join(src, "data/third.bin"), third, 0o644)
			c.rok("backup", src)
			out2 := filepath.Join(dir, "out2")
			c.rok("restore", "latest", out2)
			restoretest.CompareTrees(t, src, out2)
			if proxy.Resets() == before {
				t.Fatalf("no connection reset mid-transfer (%d connections)", proxy.Connections())
			}
			t.Logf("%d of %d connections reset", proxy.Resets(), proxy.Connections())
		})
	}
}

// TestRemoteServerGoneMidBackup: the server goes away after a megabyte of
// the backup: one clear line, exit 1, no record; when it is back, the
// backup runs to the end.
func TestRemoteServerGoneMidBackup(t *testing.T) {
	for _, kind := range remoteKinds {
		t.Run(kind, func(t *testing.T) {
			r := newRemote(t, kind)
			proxy := storetest.NewProxy(t, r.upstream)
			c := r.cli(t, proxy.Addr)
			dir := t.TempDir()
			src := filepath.Join(dir, "src")
			makeSource(t, src)
			big := make([]byte, 8<<20)
			rand.Read(big)
			os.WriteFile(filepath.Join(src, "data/random.bin"), big, 0o644)
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
			json.Unmarshal([]byte(c.rok("list", "--json").stdout), &records)
			if len(records) != 0 {
				t.Fatalf("a failed backup left records: %v", records)
			}
			c.rok("backup", src)
			out := filepath.Join(dir, "out")
			c.rok("restore", "latest", out)
			restoretest.CompareTrees(t, src, out)
		})
	}
}

// TestCopyAcrossBackends: local → gs:// → azure:// → sftp://, and a
// restore from the last is the source.
func TestCopyAcrossBackends(t *testing.T) {
	dir := t.TempDir()
	src, local := filepath.Join(dir, "src"), filepath.Join(dir, "local")
	makeSource(t, src)
	c := newCLI(t)
	c.ok("init", "--repo", local)
	c.ok("backup", "--repo", local, "--name", "one", src)
	from, fromFlags := local, []string(nil)
	for _, kind := range remoteKinds[1:] {
		next := newRemote(t, kind).cli(t, "")
		c.ok(append(append([]string{"copy", "--from", from, "--to", next.repo}, fromFlags...), next.flags...)...)
		from, fromFlags = next.repo, next.flags
	}
	sftp := newRemote(t, "sftp").cli(t, "")
	c.ok(append(append([]string{"copy", "--from", from, "--to", sftp.repo}, fromFlags...), sftp.flags...)...)
	out := filepath.Join(dir, "out")
	sftp.rok("restore", "one", out)
	restoretest.CompareTrees(t, src, out)
}

// TestRemoteErrorsAreOneLine: an unknown host key, a wrong key, a missing
// directory, bucket or container each give one line that says what to do.
func TestRemoteErrorsAreOneLine(t *testing.T) {
	srv := sftptest.Start(t)
	other := sftptest.Start(t)
	repo, flags := srv.URL(t, "")
	c := newCLI(t)
	c.ok(append([]string{"init", "--repo", repo}, flags...)...)
	empty := filepath.Join(t.TempDir(), "known_hosts")
	os.WriteFile(empty, nil, 0o600)
	cases := []struct {
		name  string
		args  []string
		wants []string
	}{
		{"unknown host key", []string{"list", "--repo", repo, "--sftp-identity", srv.Identity, "--sftp-known-hosts", empty}, []string{"host key is not known", "SHA256:", "ssh-keyscan"}},
		{"wrong key", []string{"list", "--repo", repo, "--sftp-identity", other.Identity, "--sftp-known-hosts", srv.KnownHosts}, []string{"authentication failed", "--sftp-identity"}},
		{"missing directory", append([]string{"list", "--repo", repo + "-missing"}, flags...), []string{"directory does not exist", "deltabackup init"}},
	}
	if os.Getenv("STORAGE_EMULATOR_HOST") != "" || os.Getenv("CI") != "" {
		gcstest.Emulator(t)
		cases = append(cases, struct {
			name  string
			args  []string
			wants []string
		}{"missing bucket", []string{"list", "--repo", "gs://" + storetest.BucketName(t)}, []string{"bucket does not exist", "--create-bucket"}})
	}
	if os.Getenv("DELTABACKUP_AZURE_CONNECTION_STRING") != "" || os.Getenv("CI") != "" {
		t.Setenv("AZURE_STORAGE_CONNECTION_STRING", azuretest.ConnectionString(t))
		cases = append(cases, struct {
			name  string
			args  []string
			wants []string
		}{"missing container", []string{"list", "--repo", "azure://" + storetest.BucketName(t)}, []string{"container does not exist", "--create-bucket"}})
	}
	for _, tc := range cases {
		o := c.run(tc.args...)
		msg := strings.TrimSpace(o.stderr)
		if o.code != 1 || strings.Count(msg, "\n") != 0 {
			t.Errorf("%s: exit %d, want 1, and one line:\n%s", tc.name, o.code, msg)
		}
		for _, w := range tc.wants {
			if !strings.Contains(msg, w) {
				t.Errorf("%s: %q does not say %q", tc.name, msg, w)
			}
		}
	}
}
