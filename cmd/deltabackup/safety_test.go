package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestServeRequiresATokenEvenOnLoopback is the audit's M4: on loopback, a
// local user could ask a root serve for any content without a token.
// serve now refuses to start without --token-file, and --no-auth (tests)
// is refused off loopback.
func TestServeRequiresATokenEvenOnLoopback(t *testing.T) {
	c := newCLI(t)
	_, src, _ := c.backedUpSource()
	for _, args := range [][]string{
		{"serve", "--source", src, "--listen", "127.0.0.1:0"},
		{"serve", "--source", src, "--listen", "0.0.0.0:0", "--no-auth"},
	} {
		o := c.runWithin(10*time.Second, args...)
		if o.code != 2 || !strings.Contains(o.stderr, "--token-file") || strings.Contains(o.stdout, "serving") {
			t.Errorf("%v: exit %d, %s%s", args, o.code, o.stdout, o.stderr)
		}
	}
}

// TestServeReportsAMissingCertificateFirst is the audit's L11: a missing
// TLS certificate is reported before the source is snapshotted and before
// anything says it is serving.
func TestServeReportsAMissingCertificateFirst(t *testing.T) {
	c := newCLI(t)
	dir, src, _ := c.backedUpSource()
	token := filepath.Join(dir, "token")
	os.WriteFile(token, []byte("t"), 0o600)
	start := time.Now()
	o := c.runWithin(10*time.Second, "serve", "--json", "--source", src, "--token-file", token, "--tls-cert", filepath.Join(dir, "nope.pem"), "--tls-key", filepath.Join(dir, "nope.key"))
	if o.code == 0 || strings.Contains(o.stdout, "serving") || !strings.Contains(o.stderr, "nope.pem") {
		t.Fatalf("serve with a missing certificate: exit %d after %s, %s%s", o.code, time.Since(start), o.stdout, o.stderr)
	}
	if _, err := os.Stat(filepath.Join(c.cacheDir, "serve")); err == nil {
		t.Fatal("the source was snapshotted before the certificate was looked at")
	}
}

// TestNamesWithControlCharactersArePrintedQuoted is the audit's L9: a
// file name with a newline or a terminal escape must not fake lines or
// drive the terminal in ls, diff and problem lists.
func TestNamesWithControlCharactersArePrintedQuoted(t *testing.T) {
	c := newCLI(t)
	top := t.TempDir()
	src, repo := filepath.Join(top, "src"), filepath.Join(top, "repo")
	os.MkdirAll(src, 0o755)
	os.WriteFile(filepath.Join(src, "plain"), []byte("x"), 0o644)
	c.ok("init", "--repo", repo)
	c.ok("backup", "--name", "one", "--repo", repo, src)
	for _, name := range []string{"new\nline", "esc\x1b[31mred"} {
		os.WriteFile(filepath.Join(src, name), []byte(strings.Repeat("y", 300)), 0o644)
	}
	c.ok("backup", "--name", "two", "--repo", repo, src)
	for _, args := range [][]string{{"ls", "--repo", repo, "two"}, {"diff", "--repo", repo, "one", "two"}} {
		o := c.ok(args...)
		if strings.Contains(o.stdout, "new\nline") || strings.Contains(o.stdout, "\x1b") {
			t.Errorf("%s printed a raw control character:\n%q", args[0], o.stdout)
		}
		if !strings.Contains(o.stdout, `"new\nline"`) {
			t.Errorf("%s does not show the name quoted:\n%s", args[0], o.stdout)
		}
	}
}
