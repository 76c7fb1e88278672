package snapshottest

import (
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
)

// Storm makes random changes to a tree — files created, rewritten,
// deleted and renamed, directories made, renamed and removed, symlinks and
// empty directories — and lists the paths each touched, as a watcher
// would report them.
type Storm struct {
	Root string
	Rand *rand.Rand
	n    int

	files, dirs []string
}

// NewStorm returns a Storm over root with a fixed seed.
func NewStorm(root string, seed uint64) *Storm {
	return &Storm{Root: root, Rand: rand.New(rand.NewPCG(seed, seed+1))}
}

func (s *Storm) existing(dirs bool) []string {
	var out []string
	filepath.WalkDir(s.Root, func(p string, d os.DirEntry, err error) error {
		if err != nil || p == s.Root {
			return nil
		}
		// Writing through a symlink would change a path the storm does
		// not report: only regular files are picked as files.
		if (dirs && d.IsDir()) || (!dirs && d.Type().IsRegular()) {
			rel, _ := filepath.Rel(s.Root, p)
			out = append(out, filepath.ToSlash(rel))
		}
		return nil
	})
	return out
}

// Step makes one change and returns the paths it touched.
func (s *Storm) Step() []string {
	s.n++
	// Listing the tree costs more than the change: refresh the lists every
	// few steps. A stale pick only makes a change fail, still reported.
	if s.n%8 == 1 || s.files == nil {
		s.files, s.dirs = s.existing(false), s.existing(true)
	}
	files, dirs := s.files, s.dirs
	pick := func(l []string) string {
		if len(l) == 0 {
			return ""
		}
		return l[s.Rand.IntN(len(l))]
	}
	abs := func(rel string) string { return filepath.Join(s.Root, filepath.FromSlash(rel)) }
	newName := func() string {
		parent := pick(append(dirs, ""))
		return strings.TrimPrefix(parent+"/"+fmt.Sprintf("n%d", s.n), "/")
	}
	switch op := s.Rand.IntN(9); {
	case op == 0 || len(files) == 0: // create a file
		p := newName()
		os.WriteFile(abs(p), []byte(strings.Repeat(p, 1+s.Rand.IntN(50))), 0o644)
		return []string{p}
	case op == 1: // modify
		p := pick(files)
		os.WriteFile(abs(p), []byte(fmt.Sprintf("changed %d %s", s.n, strings.Repeat("x", s.Rand.IntN(400)))), 0o644)
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
