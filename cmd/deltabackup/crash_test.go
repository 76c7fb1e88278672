package main

import (
	"bufio"
	"flag"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/deltabackup/deltabackup/snapshot/digest"
)

var (
	crashPoints = flag.Int("crash-points", 50, "kill points of TestCrashAtRandomPoints")
	crashSeed   = flag.Uint64("crash-seed", 0, "seed of TestCrashAtRandomPoints (0: from the clock; the test logs it)")
)

// crashTestSeed is -crash-seed, or one from the clock, logged so that a
// failing run can be replayed.
func crashTestSeed(t *testing.T) uint64 {
	seed := *crashSeed
	if seed == 0 {
		seed = uint64(time.Now().UnixNano())
	}
	t.Logf("seed %d (rerun with -crash-seed %d)", seed, seed)
	return seed
}

// crashTree is the expected content of a backup: path → hexdigest.
type crashTree map[string]string

// crashSource is a data directory the crash test changes between backups:
// small files (stored in packs) and large ones (stored as loose objects,
// uploaded while the backup runs).
type crashSource struct {
	t    *testing.T
	root string
	rng  *rand.Rand
	tree crashTree
	// newLoose and newBytes are the large contents the last change
	// introduced, and the bytes of all contents it introduced.
	newLoose []string
	newBytes int64
	serial   int
}

const (
	crashSmallFiles = 200
	crashLargeFiles = 12
	crashLargeMin   = 600 << 10 // above the 512 KiB pack threshold
)

func newCrashSource(t *testing.T, root string, seed uint64) *crashSource {
	s := &crashSource{t: t, root: root, rng: rand.New(rand.NewPCG(seed, 7)), tree: crashTree{}}
	for i := range crashSmallFiles {
		s.writeSmall(fmt.Sprintf("d%02d/small%03d.txt", i%17, i))
	}
	for i := range crashLargeFiles {
		s.writeLarge(fmt.Sprintf("large/l%02d.bin", i))
	}
	return s
}

func (s *crashSource) write(rel string, data []byte) {
	p := filepath.Join(s.root, filepath.FromSlash(rel))
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		s.t.Fatal(err)
	}
	if err := os.WriteFile(p, data, 0o644); err != nil {
		s.t.Fatal(err)
	}
	h := digest.Of(data).String()
	s.tree[rel] = h
	s.newBytes += int64(len(data))
}

func (s *crashSource) writeSmall(rel string) {
	s.serial++
	line := fmt.Sprintf("%s version %d %x\n", rel, s.serial, s.rng.Uint64())
	s.write(rel, []byte(strings.Repeat(line, 10+s.rng.IntN(200))))
}

func (s *crashSource) writeLarge(rel string) {
	data := make([]byte, crashLargeMin+s.rng.IntN(600<<10))
	var seed [32]byte
	for i := range seed {
		seed[i] = byte(s.rng.Uint32())
	}
	rand.NewChaCha8(seed).Read(data) // incompressible, so stored ≈ written
	s.write(rel, data)
	s.newLoose = append(s.newLoose, s.tree[rel])
}

// change rewrites, adds and deletes files, as a day of a database would.
func (s *crashSource) change() {
	s.newLoose, s.newBytes = nil, 0
	paths := make([]string, 0, len(s.tree))
	for p := range s.tree {
		paths = append(paths, p)
	}
	sort.Strings(paths)
	for _, p := range paths {
		switch r := s.rng.IntN(100); {
		case r < 3:
			os.Remove(filepath.Join(s.root, filepath.FromSlash(p)))
			delete(s.tree, p)
		case r < 30:
			if strings.HasPrefix(p, "large/") {
				s.writeLarge(p)
			} else {
				s.writeSmall(p)
			}
		}
	}
	s.serial++
	s.writeLarge(fmt.Sprintf("large/new%04d.bin", s.serial))
	s.writeSmall(fmt.Sprintf("new/n%04d.txt", s.serial))
}

// allNew makes every content count as new, for a fresh repository.
func (s *crashSource) allNew() {
	s.newLoose, s.newBytes = nil, 0
	for p, h := range s.tree {
		fi, err := os.Stat(filepath.Join(s.root, filepath.FromSlash(p)))
		if err != nil {
			s.t.Fatal(err)
		}
		s.newBytes += fi.Size()
		if strings.HasPrefix(p, "large/") {
			s.newLoose = append(s.newLoose, h)
		}
	}
}

func (s *crashSource) snapshot() crashTree {
	out := make(crashTree, len(s.tree))
	for p, h := range s.tree {
		out[p] = h
	}
	return out
}

// treeOf reads a restored directory as a crashTree.
func treeOf(t *testing.T, dir string) crashTree {
	t.Helper()
	out := crashTree{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		out[filepath.ToSlash(rel)] = digest.Of(data).String()
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func diffTrees(want, got crashTree) string {
	var diffs []string
	for p, h := range want {
		if got[p] != h {
			diffs = append(diffs, fmt.Sprintf("%s: want %.12s, got %.12s", p, h, got[p]))
		}
	}
	for p := range got {
		if _, ok := want[p]; !ok {
			diffs = append(diffs, p+": not in the backup")
		}
	}
	sort.Strings(diffs)
	if len(diffs) > 10 {
		diffs = append(diffs[:10], fmt.Sprintf("and %d more", len(diffs)-10))
	}
	return strings.Join(diffs, "\n")
}

// crashKill is when the harness kills a backup.
type crashKill int

const (
	killAtRandomTime    crashKill = iota // anywhere in the run, the snapshot included
	killDuringUpload                     // once a random share of the new large objects is stored
	killAfterRecordSeen                  // as soon as the backup record exists (while the cache is saved)
)

// TestCrashAtRandomPoints kills 'deltabackup backup' with SIGKILL at many
// points (-crash-points, default 50) spread over the snapshot, the upload
// and the writing of the record. After each kill the repository must
// verify clean with --read-data, every backup record in it must restore
// byte for byte, and the next backup must complete, uploading little of
// what the killed one had already stored.
func TestCrashAtRandomPoints(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: the crash harness runs ~50 backups")
	}
	seed := crashTestSeed(t)
	rng := rand.New(rand.NewPCG(seed, 1))
	c := newCLI(t)
	dir := t.TempDir()
	src := newCrashSource(t, filepath.Join(dir, "src"), seed)
	const perRepo = 5 // kills per repository, so restoring every record stays cheap

	var (
		repo       string
		expected   map[string]crashTree
		lastRun    = 300 * time.Millisecond
		byPhase    = map[string]int{}
		late       int // kills with ≥90% of the new large objects stored
		restores   int
		afterRatio []string
	)
	for i := range *crashPoints {
		if i%perRepo == 0 {
			repo = filepath.Join(dir, fmt.Sprintf("repo%d", i/perRepo))
			c.ok("init", "--repo", repo)
			expected = map[string]crashTree{}
			src.allNew() // the first kill of a repository hits a full backup
		} else {
			src.change()
		}
		name := fmt.Sprintf("k%03d", i)
		state := src.snapshot()
		kind := crashKill(i % 3)
		share := rng.Float64()
		delay := time.Duration(rng.Int64N(int64(lastRun) * 12 / 10))
		stored := c.killBackup(repo, src.root, name, kind, delay, share, src.newLoose)

		_, err := os.Stat(filepath.Join(repo, "backups", name+".json"))
		recorded := err == nil
		phase := "snapshot (nothing stored yet)"
		switch {
		case recorded:
			phase = "record written"
			expected[name] = state
		case stored > 0:
			phase = "upload"
		}
		byPhase[phase]++
		storedShare := float64(stored) / float64(max(len(src.newLoose), 1))
		t.Logf("kill %d (%s): %s, %d of %d new large objects stored", i, []string{"random time", "during upload", "record seen"}[kind], phase, stored, len(src.newLoose))

		// The repository is consistent and every record restores.
		if o := c.run("verify", "--repo", repo, "--read-data"); o.code != 0 {
			t.Fatalf("kill %d (%s): verify --read-data: exit %d\n%s%s", i, phase, o.code, o.stdout, o.stderr)
		}
		for b, want := range expected {
			out := filepath.Join(dir, fmt.Sprintf("out-%d-%s", i, b))
			c.ok("restore", "--repo", repo, b, out)
			restores++
			if d := diffTrees(want, treeOf(t, out)); d != "" {
				t.Fatalf("kill %d (%s): backup %s does not restore byte for byte:\n%s", i, phase, b, d)
			}
			os.RemoveAll(out)
		}

		// The next backup completes and reuses what was stored.
		start := time.Now()
		done := c.ok("backup", "--repo", repo, "--json", "--name", fmt.Sprintf("c%03d", i), src.root)
		lastRun = time.Since(start)
		expected[fmt.Sprintf("c%03d", i)] = src.snapshot()
		uploaded := int64(summary(t, done)["uploaded_bytes"].(float64))
		if !recorded && storedShare >= 0.9 {
			late++
			afterRatio = append(afterRatio, fmt.Sprintf("%.2f", float64(uploaded)/float64(src.newBytes)))
			if uploaded > src.newBytes/2 {
				t.Errorf("kill %d with %.0f%% of the new large objects stored: the next backup uploaded %d of %d new bytes again",
					i, 100*storedShare, uploaded, src.newBytes)
			}
		}
		if recorded && uploaded > src.newBytes/10 {
			t.Errorf("kill %d after the record was written: the next backup uploaded %d bytes, want almost nothing", i, uploaded)
		}
	}
	// The last completed backups restore too.
	for b, want := range expected {
		out := filepath.Join(dir, "final-"+b)
		c.ok("restore", "--repo", repo, b, out)
		restores++
		if d := diffTrees(want, treeOf(t, out)); d != "" {
			t.Fatalf("backup %s does not restore byte for byte:\n%s", b, d)
		}
	}
	t.Logf("%d kill points: %v; %d restores compared; kills with ≥90%% of large objects stored: %d, re-uploaded share of new bytes: %v",
		*crashPoints, byPhase, restores, late, afterRatio)
	if *crashPoints >= 30 && (byPhase["upload"] == 0 || byPhase["record written"] == 0) {
		t.Errorf("kill points did not reach every phase: %v", byPhase)
	}
}

// killBackup runs a backup and kills it with SIGKILL: after delay, when a
// share of newLoose objects is stored, or when its record appears. It
// returns how many of newLoose were stored when it died.
func (c *cli) killBackup(repo, src, name string, kind crashKill, delay time.Duration, share float64, newLoose []string) int {
	c.t.Helper()
	store := openTestStore(c.t, repo)
	cmd := exec.Command(binary, "backup", "--repo", repo, "--name", name, src)
	cmd.Env = append(os.Environ(), "DELTABACKUP_CACHE_DIR="+c.cacheDir, "DELTABACKUP_REPO=")
	stderr, _ := cmd.StderrPipe()
	if err := cmd.Start(); err != nil {
		c.t.Fatal(err)
	}
	go func() { // drain, so the process never blocks on a full pipe
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
		}
	}()
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	storedCount := func() int {
		n := 0
		for _, h := range newLoose {
			if _, err := os.Stat(filepath.Join(repo, filepath.FromSlash(store.ObjectKey(digest.MustParse(h))))); err == nil {
				n++
			}
		}
		return n
	}
	want := int(share * float64(len(newLoose)))
	record := filepath.Join(repo, "backups", name+".json")
	deadline := time.After(delay)
	tick := time.NewTicker(200 * time.Microsecond)
	defer tick.Stop()
	for {
		select {
		case err := <-exited:
			// It finished before the kill point: still a valid run.
			if err != nil {
				c.t.Fatalf("backup %s failed before it was killed: %v", name, err)
			}
			return storedCount()
		case <-deadline:
			if kind == killAtRandomTime {
				return c.kill(cmd, exited, storedCount)
			}
		case <-tick.C:
			switch kind {
			case killDuringUpload:
				if storedCount() >= want {
					return c.kill(cmd, exited, storedCount)
				}
			case killAfterRecordSeen:
				if _, err := os.Stat(record); err == nil {
					return c.kill(cmd, exited, storedCount)
				}
			}
		}
	}
}

func (c *cli) kill(cmd *exec.Cmd, exited chan error, storedCount func() int) int {
	cmd.Process.Signal(syscall.SIGKILL)
	<-exited
	return storedCount()
}
