package snapshot

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/deltabackup/deltabackup/snapshot/beneath"
)

// A staging directory (Options.Dst) holds hard links to the files of the
// source, so that a file the database deletes or renames over during the
// backup stays readable. deltabackup deletes things in it, so it must be a
// directory deltabackup owns: one it created, or one that was empty when
// it was first used; either way it carries stageMarker. Only files it
// staged itself (listed in stageList by the last run) are ever removed.
const (
	stageMarker = ".deltabackup-stage"
	stageList   = ".deltabackup-staged"
)

// ErrStageDir marks a staging directory that cannot be used: it overlaps
// the source, or holds data deltabackup did not put there.
var ErrStageDir = errors.New("unusable staging directory")

// stager stages files into the staging directory of one snapshot.
type stager struct {
	dir *beneath.Dir

	mu     sync.Mutex
	staged []string
}

// checkStageDir refuses a staging directory that is the source, lies above
// it or inside it: pruning it would delete the source, or the source would
// contain its own copy.
func checkStageDir(src, dst string) error {
	realSrc, err := filepath.EvalSymlinks(src)
	if err != nil {
		return err
	}
	realDst := resolveExisting(dst)
	for _, pair := range [][2]string{{src, dst}, {realSrc, realDst}} {
		s, d := pair[0], pair[1]
		switch {
		case s == d:
			return fmt.Errorf("%w: staging directory %s is the source itself", ErrStageDir, dst)
		case within(d, s):
			return fmt.Errorf("%w: staging directory %s lies inside the source %s", ErrStageDir, dst, src)
		case within(s, d):
			return fmt.Errorf("%w: staging directory %s contains the source %s", ErrStageDir, dst, src)
		}
	}
	return nil
}

// within reports whether p lies strictly below dir (both absolute, clean).
func within(p, dir string) bool {
	rel, err := filepath.Rel(dir, p)
	return err == nil && rel != "." && rel != ".." && !strings.HasPrefix(rel, "../")
}

// resolveExisting resolves the symbolic links of the longest existing
// prefix of p and appends the rest.
func resolveExisting(p string) string {
	rest := ""
	for cur := p; ; cur = filepath.Dir(cur) {
		if real, err := filepath.EvalSymlinks(cur); err == nil {
			return filepath.Join(real, rest)
		}
		if cur == filepath.Dir(cur) {
			return p
		}
		rest = filepath.Join(filepath.Base(cur), rest)
	}
}

// openStage opens (creating and marking it if needed) the staging
// directory dst for a snapshot of src.
func openStage(src, dst string) (*stager, error) {
	if err := checkStageDir(src, dst); err != nil {
		return nil, err
	}
	switch fi, err := os.Lstat(dst); {
	case errors.Is(err, os.ErrNotExist):
		if err := os.MkdirAll(dst, 0o700); err != nil {
			return nil, fmt.Errorf("create staging directory: %w", err)
		}
	case err != nil:
		return nil, fmt.Errorf("staging directory: %w", err)
	case !fi.IsDir():
		return nil, fmt.Errorf("%w: %s is not a directory", ErrStageDir, dst)
	}
	dir, err := beneath.OpenRoot(dst)
	if err != nil {
		return nil, fmt.Errorf("staging directory: %w", err)
	}
	if _, err := dir.Lstat(stageMarker); err != nil {
		entries, lerr := dir.Entries()
		if lerr != nil {
			dir.Close()
			return nil, fmt.Errorf("staging directory: %w", lerr)
		}
		if len(entries) > 0 {
			dir.Close()
			return nil, fmt.Errorf("%w: %s is not empty and was not created by deltabackup (it has no %s); give an empty or a new directory",
				ErrStageDir, dst, stageMarker)
		}
		f, err := dir.Open(stageMarker, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			dir.Close()
			return nil, fmt.Errorf("mark staging directory: %w", err)
		}
		_, err = f.WriteString("deltabackup staging directory: files here are hard links to a backed-up source; deltabackup removes the ones it staged\n")
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			dir.Close()
			return nil, fmt.Errorf("mark staging directory: %w", err)
		}
	}
	return &stager{dir: dir}, nil
}

// add makes the staged rel the same file as name in dir (a hard link, or a
// copy when linking is impossible) and returns its stat. st is the lstat
// of the source file.
func (s *stager) add(rel string, dir *beneath.Dir, name string, st *unix.Stat_t) (unix.Stat_t, error) {
	if rel == stageMarker || rel == stageList {
		return unix.Stat_t{}, fmt.Errorf("the name %s is reserved in the staging directory", rel)
	}
	existing, err := s.dir.Lstat(rel)
	switch {
	case err == nil && existing.Dev == st.Dev && existing.Ino == st.Ino:
		s.record(rel)
		return existing, nil
	case err == nil && existing.Mode&unix.S_IFMT == unix.S_IFREG && existing.Size == st.Size &&
		existing.Mtim == st.Mtim && existing.Mode&0o7777 == st.Mode&0o7777:
		s.record(rel) // an up-to-date copy from an earlier run
		return existing, nil
	case err == nil && existing.Mode&unix.S_IFMT == unix.S_IFDIR:
		return unix.Stat_t{}, fmt.Errorf("the staging directory has a directory at %s; it is removed once empty", rel)
	case err == nil:
		if err := s.dir.Remove(rel); err != nil {
			return unix.Stat_t{}, err
		}
	}
	if parent := path.Dir(rel); parent != "." {
		if err := s.dir.MkdirAll(parent, 0o700); err != nil {
			return unix.Stat_t{}, err
		}
	}
	if err := dir.Link(name, s.dir, rel); err != nil {
		if err := s.copy(rel, dir, name, st); err != nil {
			return unix.Stat_t{}, err
		}
	}
	s.record(rel)
	return s.dir.Lstat(rel)
}

func (s *stager) record(rel string) {
	s.mu.Lock()
	s.staged = append(s.staged, rel)
	s.mu.Unlock()
}

// copy copies name of dir to the staged rel, with its mode and mtime.
func (s *stager) copy(rel string, dir *beneath.Dir, name string, st *unix.Stat_t) error {
	in, err := dir.Open(name, os.O_RDONLY|unix.O_NONBLOCK, 0)
	if err != nil {
		return err
	}
	defer in.Close()
	tmp := rel + ".deltabackup-staging"
	out, err := s.dir.Open(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	_, err = io.Copy(out, in)
	if err == nil {
		err = out.Chmod(os.FileMode(st.Mode & 0o777))
	}
	if err == nil {
		err = beneath.SetTimes(out, st.Mtim.Nano())
	}
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		parent, err2 := s.dir.OpenDir(path.Dir(rel))
		if err2 == nil {
			err = parent.Rename(path.Base(tmp), path.Base(rel))
			parent.Close()
		} else {
			err = err2
		}
	}
	if err != nil {
		_ = s.dir.Remove(tmp)
	}
	return err
}

// finish removes what the previous run staged and this one did not (with
// the directories that became empty), and records what this run staged.
// Nothing else in the directory is ever touched.
func (s *stager) finish(ctx context.Context) error {
	defer s.dir.Close()
	previous, err := s.readList()
	if err != nil {
		return err
	}
	slices.Sort(s.staged)
	now := slices.Compact(s.staged)
	for _, rel := range previous {
		if err := ctx.Err(); err != nil {
			return err
		}
		if _, ok := slices.BinarySearch(now, rel); ok || ValidatePath(rel) != nil || rel == stageMarker || rel == stageList {
			continue
		}
		st, err := s.dir.Lstat(rel)
		if err != nil || st.Mode&unix.S_IFMT == unix.S_IFDIR {
			continue // gone already, or not what was staged
		}
		if err := s.dir.Remove(rel); err != nil {
			return fmt.Errorf("prune staging directory: %w", err)
		}
		for dir := path.Dir(rel); dir != "."; dir = path.Dir(dir) {
			if s.dir.Remove(dir) != nil { // only an empty directory goes
				break
			}
		}
	}
	return s.writeList(now)
}

func (s *stager) readList() ([]string, error) {
	f, err := s.dir.Open(stageList, os.O_RDONLY, 0)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("staging directory: %w", err)
	}
	defer f.Close()
	// NUL-separated: a name may hold a newline, never a NUL.
	var list []string
	r := bufio.NewReaderSize(f, 256<<10)
	for {
		p, err := r.ReadString(0)
		if err == io.EOF {
			return list, nil
		}
		if err != nil {
			return nil, fmt.Errorf("staging directory: read %s: %w", stageList, err)
		}
		list = append(list, strings.TrimSuffix(p, "\x00"))
	}
}

func (s *stager) writeList(paths []string) error {
	tmp := stageList + ".tmp"
	f, err := s.dir.Open(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("staging directory: %w", err)
	}
	w := bufio.NewWriterSize(f, 256<<10)
	for _, p := range paths {
		w.WriteString(p)
		w.WriteByte(0)
	}
	err = w.Flush()
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = s.dir.Rename(tmp, stageList)
	}
	if err != nil {
		return fmt.Errorf("staging directory: record staged files: %w", err)
	}
	return nil
}
