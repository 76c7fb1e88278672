package sftpstore_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/crypto/ssh"

	"github.com/deltabackup/deltabackup/hashstore"
	"github.com/deltabackup/deltabackup/hashstore/sftpstore"
	"github.com/deltabackup/deltabackup/hashstore/sftpstore/sftptest"
	"github.com/deltabackup/deltabackup/hashstore/storetest"
)

func open(t *testing.T, cfg sftpstore.Config) *sftpstore.Backend {
	t.Helper()
	b, err := sftpstore.Open(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b
}

// firstError opens cfg and returns the error of its first operation,
// which connects.
func firstError(t *testing.T, cfg sftpstore.Config) error {
	t.Helper()
	b, err := sftpstore.Open(context.Background(), cfg)
	if err != nil {
		return err
	}
	defer b.Close()
	_, err = b.Stat(context.Background(), "config")
	return err
}

func TestConformance(t *testing.T) {
	srv := sftptest.Start(t)
	storetest.Run(t, func(t *testing.T) hashstore.Backend { return open(t, srv.Config(t, "")) })
}

// TestConformanceBelowTheLoginDirectory: a path relative to the login
// directory ("~/..."), nested, and created on open.
func TestConformanceBelowTheLoginDirectory(t *testing.T) {
	srv := sftptest.Start(t)
	home, err := os.UserHomeDir()
	if err != nil {
		t.Fatal(err)
	}
	storetest.Run(t, func(t *testing.T) hashstore.Backend {
		cfg := srv.Config(t, "")
		top := filepath.Join(home, "sftptest-"+filepath.Base(cfg.Path))
		t.Cleanup(func() { os.RemoveAll(top) })
		dir := filepath.Join(top, "some", "prefix")
		rel, err := filepath.Rel(home, dir)
		if err != nil {
			t.Fatal(err)
		}
		cfg.Path = "~/" + rel
		b := open(t, cfg)
		if _, err := b.Stat(context.Background(), "config"); !errors.Is(err, hashstore.ErrNotFound) {
			t.Fatalf("stat in a new directory: %v", err)
		}
		if fi, err := os.Stat(dir); err != nil || !fi.IsDir() {
			t.Fatalf("repository directory %s not created below the login directory: %v", dir, err)
		}
		return b
	})
}

func TestUnknownHostKeyIsRefusedWithItsFingerprint(t *testing.T) {
	srv := sftptest.Start(t)
	cfg := srv.Config(t, "")
	empty := filepath.Join(t.TempDir(), "known_hosts")
	os.WriteFile(empty, nil, 0o600)
	cfg.KnownHostsFiles = []string{empty}
	err := firstError(t, cfg)
	if !errors.Is(err, sftpstore.ErrUnknownHostKey) || !strings.Contains(err.Error(), "SHA256:") {
		t.Fatalf("unknown host key: got %v, want ErrUnknownHostKey with the fingerprint", err)
	}
	if hashstore.Retryable(err) {
		t.Fatal("an unknown host key is retried")
	}
	// The fingerprint shown is the server's, so the user can compare it.
	data, _ := os.ReadFile(srv.KnownHosts)
	_, _, key, _, _, perr := ssh.ParseKnownHosts(data)
	if perr != nil || !strings.Contains(err.Error(), ssh.FingerprintSHA256(key)) {
		t.Fatalf("message %q does not show the server's fingerprint (%v)", err, perr)
	}
}

func TestChangedHostKeyIsRefused(t *testing.T) {
	srv := sftptest.Start(t)
	other := sftptest.Start(t) // another server, another key, same host name
	cfg := srv.Config(t, "")
	data, _ := os.ReadFile(other.KnownHosts)
	fields := strings.Fields(string(data))
	// other's key, written for srv's address.
	line := strings.Replace(string(data), fields[0], strings.Fields(mustRead(t, srv.KnownHosts))[0], 1)
	forged := filepath.Join(t.TempDir(), "known_hosts")
	os.WriteFile(forged, []byte(line), 0o600)
	cfg.KnownHostsFiles = []string{forged}
	err := firstError(t, cfg)
	if !errors.Is(err, sftpstore.ErrHostKeyChanged) || !strings.Contains(err.Error(), "SHA256:") {
		t.Fatalf("changed host key: got %v, want ErrHostKeyChanged with the fingerprint", err)
	}
}

func mustRead(t *testing.T, file string) string {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}

func TestWrongKeyIsRefused(t *testing.T) {
	srv := sftptest.Start(t)
	other := sftptest.Start(t)
	cfg := srv.Config(t, "")
	cfg.IdentityFiles = []string{other.Identity}
	err := firstError(t, cfg)
	if !errors.Is(err, sftpstore.ErrAuth) || hashstore.Retryable(err) {
		t.Fatalf("wrong key: got %v, want ErrAuth, not retried", err)
	}
}

func TestMissingDirectoryIsNamed(t *testing.T) {
	srv := sftptest.Start(t)
	cfg := srv.Config(t, "")
	cfg.CreateDir = false
	err := firstError(t, cfg)
	if !errors.Is(err, sftpstore.ErrDirMissing) || !strings.Contains(err.Error(), cfg.Path) {
		t.Fatalf("missing directory: got %v", err)
	}
}

func TestUnreachableServer(t *testing.T) {
	srv := sftptest.Start(t)
	proxy := storetest.NewProxy(t, "127.0.0.1:1") // nothing listens there
	err := firstError(t, srv.Config(t, proxy.Addr))
	if err == nil || !hashstore.Retryable(err) {
		t.Fatalf("unreachable server: got %v, want a retryable error", err)
	}
}

func TestPermissionDeniedIsPermanent(t *testing.T) {
	srv := sftptest.Start(t)
	cfg := srv.Config(t, "")
	b := open(t, cfg)
	if _, err := b.Stat(context.Background(), "config"); !errors.Is(err, hashstore.ErrNotFound) {
		t.Fatal(err)
	}
	if os.Geteuid() == 0 {
		// Root writes through any mode; an immutable directory refuses
		// even root (EPERM, which the server reports as permission denied).
		if out, err := exec.Command("chattr", "+i", cfg.Path).CombinedOutput(); err != nil {
			t.Fatalf("chattr +i: %v: %s", err, out)
		}
		defer exec.Command("chattr", "-i", cfg.Path).Run()
	} else {
		os.Chmod(cfg.Path, 0o500)
		defer os.Chmod(cfg.Path, 0o700)
	}
	err := b.Put(context.Background(), "config", bytes.NewReader([]byte("x")), 1)
	if !errors.Is(err, sftpstore.ErrPermission) || hashstore.Retryable(err) {
		t.Fatalf("write into a read-only directory: got %v", err)
	}
}

// TestNewConnectionAfterTheServerWasGone: a connection that dies is
// dialled again by the next operation.
func TestNewConnectionAfterTheServerWasGone(t *testing.T) {
	srv := sftptest.Start(t)
	proxy := storetest.NewProxy(t, srv.Host+":"+itoa(srv.Port))
	b := open(t, srv.Config(t, proxy.Addr))
	ctx := context.Background()
	data := bytes.Repeat([]byte("0123456789"), 100_000)
	proxy.CutAfter(200 << 10)
	err := b.Put(ctx, "objects/aa/one", bytes.NewReader(data), int64(len(data)))
	if err == nil {
		t.Fatal("a put through a cut connection succeeded")
	}
	proxy.Resume()
	if err := b.Put(ctx, "objects/aa/one", bytes.NewReader(data), int64(len(data))); err != nil {
		t.Fatalf("put after the server came back: %v", err)
	}
	rc, err := b.Get(ctx, "objects/aa/one")
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(rc)
	rc.Close()
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read back %d bytes, %v", len(got), err)
	}
	if n := b.Requests()["connect"]; n != 2 {
		t.Fatalf("connections made: %d, want 2", n)
	}
	// The failed write's temporary file (the connection died before it
	// could be removed) is no key, and gc's sweep removes it.
	var keys []string
	b.List(ctx, "", func(i hashstore.Info) error { keys = append(keys, i.Key); return nil })
	if len(keys) != 1 {
		t.Fatalf("keys after a failed and a good write: %v", keys)
	}
	if files, _, err := b.RemoveStaleTemps(0); err != nil || files > 1 {
		t.Fatalf("stale temporary files removed: %d (%v), want at most the failed write's", files, err)
	}
	if files, _, err := b.RemoveStaleTemps(0); err != nil || files != 0 {
		t.Fatalf("temporary files left after the sweep: %d (%v)", files, err)
	}
}

func itoa(n int) string { return strconv.Itoa(n) }

func TestParseURL(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want sftpstore.Config
		bad  string
	}{
		{in: "sftp://backup@db1.example.com/srv/repo", want: sftpstore.Config{User: "backup", Host: "db1.example.com", Path: "/srv/repo"}},
		{in: "sftp://db1:2222/~/repo", want: sftpstore.Config{Host: "db1", Port: 2222, Path: "~/repo"}},
		{in: "sftp://[::1]:22/r", want: sftpstore.Config{Host: "::1", Port: 22, Path: "/r"}},
		{in: "sftp://u:secret@h/r", bad: "password"},
		{in: "sftp://h", bad: "directory"},
		{in: "sftp://h/", bad: "directory"},
		{in: "sftp:///r", bad: "no host"},
		{in: "sftp://h:99999/r", bad: "port"},
		{in: "sftp://h/r?x=1", bad: "query"},
	} {
		got, err := sftpstore.ParseURL(tc.in)
		if tc.bad != "" {
			if err == nil || !strings.Contains(err.Error(), tc.bad) || strings.Contains(err.Error(), "secret") {
				t.Errorf("%s: got %v, want an error about %s (and no secret)", tc.in, err, tc.bad)
			}
			continue
		}
		if err != nil || got.User != tc.want.User || got.Host != tc.want.Host || got.Port != tc.want.Port || got.Path != tc.want.Path {
			t.Errorf("%s: got %+v, %v; want %+v", tc.in, got, err, tc.want)
		}
	}
}
