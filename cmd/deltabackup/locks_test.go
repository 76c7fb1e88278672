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
func slowSource(t *testing.T, dir string) { slowSourceSeeded(t, dir, 7) }

// slowSourceSeeded is slowSource with contents drawn from seed.
func slowSourceSeeded(t *testing.T, dir string, seed uint64) {
	t.Helper()
	rng := rand.New(rand.NewPCG(seed, 8))
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
// not take it for the lock of a dead process, and so waits for it before
// deleting anything.
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
	o := c.run("gc", "--json", "--repo", repo)
	syscall.Kill(-cmd.Process.Pid, syscall.SIGCONT)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("backup in its own PID namespace: %v\n%s", err, stderr.String())
	}
	if o.code != 0 {
		t.Fatalf("gc beside a live backup of another PID namespace: exit %d, %s", o.code, o.stderr)
	}
	gc := summary(t, o)
	if waiting, _ := gc["waiting_for"].([]any); gc["deleted_objects"].(float64) != 0 || len(waiting) != 1 {
		t.Fatalf("gc beside a live backup of another PID namespace (pid %s there) did not wait for it: %v", strconv.Itoa(lock.PID), gc)
	}
	c.ok("verify", "--read-data", "--repo", repo)
}

// smallFiles writes 300 files of 1–4 KiB under dir; those selected by
// changed get contents of version, the others of version 0.
func smallFiles(t *testing.T, dir string, version int, changed func(i int) bool) {
	t.Helper()
	for i := range 300 {
		v := 0
		if changed(i) {
			v = version
		}
		data := make([]byte, 1024+i*10)
		rand.NewChaCha8([32]byte{byte(i), byte(i >> 8), byte(v), 's'}).Read(data)
		p := filepath.Join(dir, fmt.Sprintf("s%d/f%03d", i%4, i))
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// TestBackupsBeforeDuringAndAfterGC is gc beside backups, end to end: a
// backup that started before a gc (held still while gc runs, and relying
// on data gc finds unreferenced), one that runs while gc's mark waits for
// the first, and one after; gc never waits for them, deletes and repacks,
// and afterwards every backup verifies with --read-data and restores
// byte for byte.
func TestBackupsBeforeDuringAndAfterGC(t *testing.T) {
	c := newCLI(t)
	top := t.TempDir()
	repo, src, v1 := filepath.Join(top, "repo"), filepath.Join(top, "src"), filepath.Join(top, "v1")
	slowSourceSeeded(t, filepath.Join(src, "big"), 7)
	smallFiles(t, filepath.Join(src, "small"), 1, func(int) bool { return false })
	c.ok("init", "--repo", repo)
	c.ok("backup", "--repo", repo, "--name", "old", src)
	copyTree(t, src, v1)
	slowSourceSeeded(t, filepath.Join(src, "big"), 8)
	smallFiles(t, filepath.Join(src, "small"), 2, func(i int) bool { return i%5 != 0 })
	c.ok("backup", "--repo", repo, "--name", "new", src)
	c.ok("forget", "--repo", repo, "--keep-last", "1") // "old" goes: its data is unreferenced now

	// Before: v1's content (which gc will find unreferenced) and slow new
	// content, held still once it holds its lock.
	before := filepath.Join(top, "before")
	copyTree(t, v1, before)
	slowSourceSeeded(t, filepath.Join(before, "zz"), 99)
	cmd := exec.Command(binary, "backup", "--json", "--name", "before", "--compression", "max", "--parallel", "1", "--repo", repo, before)
	cmd.Env = append(os.Environ(), "DELTABACKUP_CACHE_DIR="+c.cacheDir, "DELTABACKUP_REPO=")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the backup's lock", func() bool { return len(lockFiles(repo)) == 1 })
	if err := cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	gc1 := summary(t, c.ok("gc", "--json", "--repo", repo))
	t.Logf("gc beside the stopped backup: %v", gc1)
	if waiting, _ := gc1["waiting_for"].([]any); len(waiting) != 1 || gc1["pending_marks"].(float64) != 1 ||
		gc1["marked_objects"].(float64)+gc1["marked_packs"].(float64) == 0 || gc1["repacked_packs"].(float64) == 0 ||
		gc1["deleted_objects"].(float64)+gc1["deleted_packs"].(float64) != 0 {
		t.Fatalf("gc beside a running backup: %v; want a mark that repacks and waits for it, nothing deleted", gc1)
	}

	// During: a backup while the mark waits, of content the mark dooms
	// (v1's big files: it stores them again). v1's small files, which
	// only the stopped backup references, stay doomed: the sweep must
	// keep their pack.
	during := filepath.Join(top, "during")
	os.MkdirAll(during, 0o755)
	copyTree(t, filepath.Join(v1, "big"), filepath.Join(during, "big"))
	os.WriteFile(filepath.Join(during, "new.txt"), []byte("written while gc's mark waits"), 0o644)
	c.ok("backup", "--repo", repo, "--name", "during", during)

	cmd.Process.Signal(syscall.SIGCONT)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("the backup started before gc: %v\n%s", err, stderr.String())
	}
	gc2 := summary(t, c.ok("gc", "--json", "--repo", repo))
	t.Logf("gc after: %v", gc2)
	// What the sweep frees may come as whole packs or as repacked ones,
	// and v1's small files either stay in their doomed pack (kept_live) or
	// were stored again by the held backup, depending on how far it got
	// before it was stopped: whether it had read the pack index before the
	// mark was written (then it references the doomed copies) or after
	// (then it treats them as absent). The verify and the restores below
	// check that either way every backup is whole.
	if gc2["swept_marks"].(float64) == 0 || gc2["deleted_bytes"].(float64) == 0 {
		t.Fatalf("gc after the backups: %v; want the mark swept, deleting some", gc2)
	}

	after := filepath.Join(top, "after")
	copyTree(t, src, after)
	os.WriteFile(filepath.Join(after, "after.txt"), []byte("after gc"), 0o644)
	c.ok("backup", "--repo", repo, "--name", "after", after)
	c.ok("verify", "--read-data", "--repo", repo)
	for name, dir := range map[string]string{"new": src, "before": before, "during": during, "after": after} {
		out := filepath.Join(top, "out-"+name)
		c.ok("restore", "--repo", repo, name, out)
		restoretest.CompareTrees(t, dir, out)
	}
}

// TestDamagedPendingDeletionIsNamed: a pending deletion that cannot be
// read stops backups and gc, naming it and saying what to do; once it is
// deleted both work again.
func TestDamagedPendingDeletionIsNamed(t *testing.T) {
	c := newCLI(t)
	top := t.TempDir()
	src, repo := filepath.Join(top, "src"), filepath.Join(top, "repo")
	smallFiles(t, src, 1, func(int) bool { return false })
	c.ok("init", "--repo", repo)
	bad := filepath.Join(repo, "gc", "pending", "20260101T000000.000000000Z-bad.json")
	os.MkdirAll(filepath.Dir(bad), 0o755)
	os.WriteFile(bad, []byte(`{"version":1,"gc_lock":"../../config"}`), 0o644)
	for _, args := range [][]string{{"backup", "--repo", repo, src}, {"gc", "--repo", repo}} {
		o := c.run(args...)
		if o.code != 1 || !strings.Contains(o.stderr, "gc/pending/20260101T000000.000000000Z-bad.json") || !strings.Contains(o.stderr, "delete") {
			t.Fatalf("%s beside a damaged pending deletion: exit %d, %s", args[0], o.code, o.stderr)
		}
	}
	os.Remove(bad)
	c.ok("backup", "--repo", repo, src)
	c.ok("gc", "--repo", repo)
}
