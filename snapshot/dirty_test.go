package snapshot

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

// fsStorm makes random changes to a tree and lists the paths it touched,
// as a watcher would report them.
type fsStorm struct {
	root string
	rng  *rand.Rand
	n    int
}

func (s *fsStorm) existing(dirs bool) []string {
	var out []string
	filepath.WalkDir(s.root, func(p string, d os.DirEntry, err error) error {
		if err != nil || p == s.root {
			return nil
		}
		// Writing through a symlink would change a path the storm does
		// not report: only regular files are picked as files.
		if (dirs && d.IsDir()) || (!dirs && d.Type().IsRegular()) {
			rel, _ := filepath.Rel(s.root, p)
			out = append(out, filepath.ToSlash(rel))
		}
		return nil
	})
	return out
}

// step makes one change and returns the dirty paths.
func (s *fsStorm) step() []string {
	s.n++
	files, dirs := s.existing(false), s.existing(true)
	pick := func(l []string) string {
		if len(l) == 0 {
			return ""
		}
		return l[s.rng.IntN(len(l))]
	}
	abs := func(rel string) string { return filepath.Join(s.root, filepath.FromSlash(rel)) }
	newName := func() string {
		parent := pick(append(dirs, ""))
		return strings.TrimPrefix(parent+"/"+fmt.Sprintf("n%d", s.n), "/")
	}
	switch op := s.rng.IntN(9); {
	case op == 0 || len(files) == 0: // create a file
		p := newName()
		os.WriteFile(abs(p), []byte(strings.Repeat(p, 1+s.rng.IntN(50))), 0o644)
		return []string{p}
	case op == 1: // modify
		p := pick(files)
		os.WriteFile(abs(p), []byte(fmt.Sprintf("changed %d %s", s.n, strings.Repeat("x", s.rng.IntN(400)))), 0o644)
		return []string{p}
	case op == 2: // delete a file
		p := pick(files)
		os.Remove(abs(p))
		return []string{p}
	case op == 3: // rename a file
		p, q := pick(files), newName()
		os.Rename(abs(p), abs(q))
		return []string{p, q}
	case op == 4: // make a directory with a file in it
		d := newName()
		os.MkdirAll(abs(d), 0o755)
		os.WriteFile(abs(d+"/inner"), []byte("inner "+d), 0o644)
		return []string{d, d + "/inner"}
	case op == 5 && len(dirs) > 0: // rename a directory
		d := pick(dirs)
		q := fmt.Sprintf("moved%d", s.n)
		if err := os.Rename(abs(d), abs(q)); err != nil {
			return nil
		}
		return []string{d, q}
	case op == 6 && len(dirs) > 0: // delete a directory
		d := pick(dirs)
		os.RemoveAll(abs(d))
		return []string{d}
	case op == 7: // a symlink
		p := newName()
		os.Symlink(pick(files), abs(p))
		return []string{p}
	default: // an empty directory
		d := newName()
		os.Mkdir(abs(d), 0o700)
		return []string{d}
	}
}

func comparable(m *Manifest) Manifest {
	c := *m
	c.Start, c.End = time.Time{}, time.Time{} // they differ run to run
	return c
}

// TestIncrementalSnapshotEqualsFullWalk: after each burst of random
// changes, a snapshot of the dirty paths alone equals a full walk.
func TestIncrementalSnapshotEqualsFullWalk(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	for i := range 60 {
		p := filepath.Join(root, fmt.Sprintf("d%d/e%d/f%d", i%4, i%3, i))
		os.MkdirAll(filepath.Dir(p), 0o755)
		os.WriteFile(p, []byte(strings.Repeat(fmt.Sprint(i), 10+i*7)), 0o644)
	}
	storm := &fsStorm{root: root, rng: rand.New(rand.NewPCG(7, 8))}
	full := func() *Manifest {
		s, _ := New(DefaultOptions(root))
		res, err := s.Snapshot(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return res.Manifest
	}
	base := full()
	cache := NewMemoryStatCache()
	ops := 0
	for round := range 40 {
		var dirty []string
		for range 1 + storm.rng.IntN(60) {
			dirty = append(dirty, storm.step()...)
			ops++
		}
		opts := DefaultOptions(root)
		opts.Base, opts.Dirty, opts.Cache = base, dirty, cache
		s, err := New(opts)
		if err != nil {
			t.Fatal(err)
		}
		res, err := s.Snapshot(ctx)
		if err != nil {
			t.Fatal(err)
		}
		cache.Save()
		want := full()
		if got, w := comparable(res.Manifest), comparable(want); !reflect.DeepEqual(got, w) {
			d := Compare(want, res.Manifest)
			t.Fatalf("round %d (dirty %v): incremental snapshot differs from a full walk: %+v\nfiles %d vs %d, dirs %d vs %d, empty %v vs %v",
				round, dirty, d, len(res.Manifest.Files), len(want.Files), len(res.Manifest.Dirs), len(want.Dirs), res.Manifest.EmptyDirs, want.EmptyDirs)
		}
		base = res.Manifest
	}
	t.Logf("%d random operations in 40 rounds, each compared with a full walk", ops)
}
