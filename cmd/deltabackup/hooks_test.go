package main

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func records(t *testing.T, c *cli, repo string) []map[string]any {
	t.Helper()
	var list []map[string]any
	if err := json.Unmarshal([]byte(c.ok("list", "--json", "--repo", repo).stdout), &list); err != nil {
		t.Fatal(err)
	}
	return list
}

// TestBackupOfAStream: the output of a command, or standard input, is
// backed up as one file and dumped back byte for byte; a command that
// fails leaves no record.
func TestBackupOfAStream(t *testing.T) {
	c := newCLI(t)
	repo := filepath.Join(t.TempDir(), "repo")
	c.ok("init", "--repo", repo)
	s := summary(t, c.ok("backup", "--json", "--repo", repo, "--stdin-from-command", "--stdin-filename", "db.sql", "--",
		"sh", "-c", "for i in $(seq 1 20000); do echo \"INSERT INTO t VALUES ($i);\"; done"))
	list := records(t, c, repo)
	if len(list) != 1 || list[0]["source"] != "stdin:db.sql" || list[0]["name"] != s["name"] {
		t.Fatalf("records after a stream backup: %v", list)
	}
	got := c.ok("dump", "--repo", repo, "latest", "db.sql").stdout
	if !strings.HasPrefix(got, "INSERT INTO t VALUES (1);\n") || strings.Count(got, "\n") != 20000 {
		t.Fatalf("dump of the stream: %d bytes, %d lines", len(got), strings.Count(got, "\n"))
	}

	o := c.run("backup", "--repo", repo, "--stdin-from-command", "--", "sh", "-c", "echo partial output; exit 3")
	if o.code != 1 || !strings.Contains(o.stderr, "exit status 3") || !strings.Contains(o.stderr, "nothing was backed up") {
		t.Fatalf("a failing command: exit %d\n%s", o.code, o.stderr)
	}
	if n := len(records(t, c, repo)); n != 1 {
		t.Fatalf("a failing command left %d records, want the 1 from before", n)
	}

	// Standard input, through the binary.
	cmd := exec.Command(binary, "backup", "--repo", repo, "--stdin", "--stdin-filename", "piped.bin")
	cmd.Env = append(os.Environ(), "DELTABACKUP_CACHE_DIR="+c.cacheDir)
	data := bytes.Repeat([]byte{0, 1, 2, 3, 255}, 300000)
	cmd.Stdin = bytes.NewReader(data)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("backup --stdin: %v\n%s", err, out)
	}
	if got := c.ok("dump", "--repo", repo, "latest", "--source", "stdin:piped.bin", "piped.bin").stdout; got != string(data) {
		t.Fatalf("dump of standard input: %d bytes, want %d", len(got), len(data))
	}
	for _, bad := range [][]string{{"--stdin", "somedir"}, {"--stdin-from-command"}, {"--stdin", "--stdin-from-command", "--", "true"}, {"--stdin", "--stdin-filename", "a/b"}} {
		if o := c.run(append([]string{"backup", "--repo", repo}, bad...)...); o.code == 0 {
			t.Errorf("backup %v succeeded", bad)
		}
	}
}

// TestBackupHooks: a failing pre-hook stops the backup; the post-hook
// runs however the backup ended and learns how; a hook that hangs is
// stopped.
func TestBackupHooks(t *testing.T) {
	c := newCLI(t)
	dir := t.TempDir()
	repo, src, post := filepath.Join(dir, "repo"), filepath.Join(dir, "src"), filepath.Join(dir, "post")
	makeSource(t, src)
	c.ok("init", "--repo", repo)
	postHook := `echo "$DELTABACKUP_HOOK $DELTABACKUP_OUTCOME $DELTABACKUP_BACKUP" > ` + post
	c.ok("backup", "--repo", repo, "--name", "good", "--pre-hook", "test -d "+src, "--post-hook", postHook, src)
	if got, _ := os.ReadFile(post); string(got) != "post success good\n" {
		t.Fatalf("post-hook after a good backup saw %q", got)
	}
	o := c.run("backup", "--repo", repo, "--pre-hook", "echo cannot flush >&2; exit 4", "--post-hook", postHook, src)
	if o.code != 1 || !strings.Contains(o.stderr, "pre-hook") || !strings.Contains(o.stderr, "exit status 4") || !strings.Contains(o.stderr, "cannot flush") {
		t.Fatalf("a failing pre-hook: exit %d\n%s", o.code, o.stderr)
	}
	if got, _ := os.ReadFile(post); string(got) != "post failure \n" {
		t.Fatalf("post-hook after a failed pre-hook saw %q", got)
	}
	if n := len(records(t, c, repo)); n != 1 {
		t.Fatalf("a failed pre-hook left %d records, want 1", n)
	}
	o = c.run("backup", "--repo", repo, "--pre-hook", "sleep 30", "--hook-timeout", "300ms", src)
	if o.code != 1 || !strings.Contains(o.stderr, "did not finish within 300ms") {
		t.Fatalf("a hanging pre-hook: exit %d\n%s", o.code, o.stderr)
	}
	o = c.run("backup", "--repo", repo, "--name", "then", "--post-hook", "exit 5", src)
	if o.code != 1 || !strings.Contains(o.stderr, "backup then is stored, but post-hook") {
		t.Fatalf("a failing post-hook: exit %d\n%s", o.code, o.stderr)
	}
}
