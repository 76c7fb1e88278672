package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/deltabackup/deltabackup/restore/restoretest"
)

// slowSource writes a tree whose backup with --compression max takes a
// few seconds: compressible text, zstd's slowest level.
func slowSource(t *testing.T, dir string) {
	t.Helper()
	rng := rand.New(rand.NewPCG(7, 8))
	words := []string{"alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa"}
	for i := range 12 {
		var b bytes.Buffer
		for b.Len() < 3<<20 {
			b.WriteString(words[rng.IntN(len(words))])
			b.WriteByte(" \n"[rng.IntN(2)])
		}
		p := filepath.Join(dir, fmt.Sprintf("big%02d.txt", i))
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, b.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// waitFor polls until cond holds, for at most a minute.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(time.Minute); !cond(); time.Sleep(2 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

// lockFiles returns the lock files of a local repository.
func lockFiles(repo string) []string {
	var out []string
	filepath.Walk(filepath.Join(repo, "locks"), func(p string, fi os.FileInfo, err error) error {
		if err == nil && fi.Mode().IsRegular() && strings.HasSuffix(p, ".json") {
			out = append(out, p)
		}
		return nil
	})
	return out
}

func filesUnder(dir string) int {
	n := 0
	filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err == nil && fi.Mode().IsRegular() && !strings.HasPrefix(fi.Name(), ".tmp-") {
			n++
		}
		return nil
	})
	return n
}

// TestStalledBackupSurvivesAGCThatTookItsLockForStale is the audit's H3
// (b): a backup is stopped (SIGSTOP) after it stored some objects, its
// lock looks 31 minutes old to a gc (a stall, a suspend, a skewed clock),
// the gc removes the lock and deletes those objects. When the backup goes
// on it must notice before it writes its record, take the lock again and
// store what is gone: the record it writes restores, and verify finds
// nothing missing.
func TestStalledBackupSurvivesAGCThatTookItsLockForStale(t *testing.T) {
	c := newCLI(t)
	top := t.TempDir()
	src, repo := filepath.Join(top, "src"), filepath.Join(top, "repo")
	slowSource(t, src)
	c.ok("init", "--repo", repo, "--no-chunking") // whole files: loose objects appear as the backup goes
	cmd := exec.Command(binary, "backup", "--json", "--compression", "max", "--parallel", "1", "--repo", repo, src)
	cmd.Env = append(os.Environ(), "DELTABACKUP_CACHE_DIR="+c.cacheDir, "DELTABACKUP_REPO=")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the backup to store an object", func() bool { return filesUnder(filepath.Join(repo, "objects")) > 0 })
	if err := cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	stored := filesUnder(filepath.Join(repo, "objects"))
	// The lock as another machine sees it after 31 minutes without a
	// refresh.
	locks := lockFiles(repo)
	if len(locks) != 1 {
		t.Fatalf("locks: %v", locks)
	}
	var lock map[string]any
	data, _ := os.ReadFile(locks[0])
	json.Unmarshal(data, &lock)
	lock["refreshed"] = time.Now().Add(-31 * time.Minute).UTC().Format(time.RFC3339Nano)
	data, _ = json.Marshal(lock)
	os.WriteFile(locks[0], data, 0o600)
	gc := summary(t, c.ok("gc", "--json", "--repo", repo))
	if gc["deleted_objects"].(float64) == 0 {
		t.Fatalf("the gc deleted none of the %d objects stored so far: %v", stored, gc)
	}
	cmd.Process.Signal(syscall.SIGCONT)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("backup after the gc: %v\n%s", err, stderr.String())
	}
	if !strings.Contains(stderr.String(), "lock") {
		t.Errorf("the backup did not say its lock was not held throughout: %s", stderr.String())
	}
	c.ok("verify", "--read-data", "--repo", repo)
	out := filepath.Join(top, "out")
	c.ok("restore", "--repo", repo, "latest", out)
	restoretest.CompareTrees(t, src, out)
}

// TestBackupInAnotherPIDNamespaceKeepsGCOut is the audit's H3 (a): a
// backup in another PID namespace with this host's name (a container on
// the host network) holds a lock whose PID means nothing here; gc must
// not take it for the lock of a dead process.
func TestBackupInAnotherPIDNamespaceKeepsGCOut(t *testing.T) {
	if err := exec.Command("unshare", "--pid", "--fork", "--mount-proc", "true").Run(); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("unshare --pid is not permitted here: %v", err)
		}
		t.Skipf("unshare --pid is not permitted here (%v); CI runs this as root", err)
	}
	c := newCLI(t)
	top := t.TempDir()
	src, repo := filepath.Join(top, "src"), filepath.Join(top, "repo")
	slowSource(t, src)
	c.ok("init", "--repo", repo, "--no-chunking") // whole files: loose objects appear as the backup goes
	// Enough processes first that the backup's PID in the namespace is
	// not one that exists on the host.
	script := fmt.Sprintf(`i=0; while [ $i -lt 400 ]; do /bin/true; i=$((i+1)); done; %s backup --compression max --parallel 1 --repo %s %s`, binary, repo, src)
	cmd := exec.Command("unshare", "--pid", "--fork", "--mount-proc", "sh", "-c", script)
	cmd.Env = append(os.Environ(), "DELTABACKUP_CACHE_DIR="+c.cacheDir, "DELTABACKUP_REPO=")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var lockFile string
	waitFor(t, "the backup's lock", func() bool {
		locks := lockFiles(repo)
		if len(locks) == 1 {
			lockFile = locks[0]
		}
		return len(locks) == 1 && filesUnder(filepath.Join(repo, "objects")) > 0
	})
	// Hold it still while gc looks: SIGSTOP to the whole group.
	syscall.Kill(-cmd.Process.Pid, syscall.SIGSTOP)
	var lock struct{ PID int }
	data, _ := os.ReadFile(lockFile)
	json.Unmarshal(data, &lock)
	if syscall.Kill(lock.PID, 0) == nil {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGCONT)
		cmd.Wait()
		t.Skipf("the backup's PID %d in its namespace also runs on the host; cannot tell the cases apart", lock.PID)
	}
	o := c.run("gc", "--repo", repo)
	syscall.Kill(-cmd.Process.Pid, syscall.SIGCONT)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("backup in its own PID namespace: %v\n%s", err, stderr.String())
	}
	if o.code == 0 || !strings.Contains(o.stderr, "locked") {
		t.Fatalf("gc beside a live backup of another PID namespace (pid %s there): exit %d, %s", strconv.Itoa(lock.PID), o.code, o.stderr)
	}
	c.ok("verify", "--read-data", "--repo", repo)
}
