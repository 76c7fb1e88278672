package snapshot

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"slices"
	"strings"
	"unicode/utf8"

	"github.com/bmatcuk/doublestar/v4"
	"golang.org/x/sys/unix"

	"github.com/deltabackup/deltabackup/snapshot/beneath"
)

// walker lists the source tree in one goroutine and feeds regular files to
// the hashing workers through a bounded channel; directories, empty dirs,
// symlinks and special files it records itself.
//
// Every directory is opened from its parent's handle without following a
// symbolic link (beneath), and each file is handed to the workers with the
// handle of its directory: a directory swapped for a link while the backup
// runs is reported, never followed out of the source.
type walker struct {
	s        *Snapshotter
	jobs     chan<- fileJob
	col      *collector
	manifest *Manifest // Dirs, EmptyDirs, Symlinks: only the walker writes them
	dirty    *dirtySet // for an incremental snapshot
	kept     []string  // paths whose base entries (at and below) an incremental snapshot carries over
}

func matchAny(globs []string, rel string) bool {
	for _, g := range globs {
		if ok, _ := doublestar.Match(g, rel); ok {
			return true
		}
	}
	return false
}

func (w *walker) walk(ctx context.Context, rel string, dir *beneath.Dir, included bool) error {
	_, err := w.walkDir(ctx, rel, dir, included)
	return err
}

// walkDir lists dir (rel "" for the root) and reports whether anything
// below it was selected. included is true when a directory above matched
// an include glob, which selects everything below it.
func (w *walker) walkDir(ctx context.Context, rel string, dir *beneath.Dir, included bool) (selected bool, err error) {
	entries, err := w.readDir(ctx, rel, dir)
	if err != nil {
		return false, err
	}
	for _, e := range entries {
		sel, err := w.entry(ctx, e, rel, dir, included, w.walkDir)
		if err != nil {
			return false, err
		}
		selected = selected || sel
	}
	if !selected && len(entries) == 0 && rel != "" {
		return false, errEmptyDir
	}
	return selected, nil
}

// errEmptyDir is walkDir's way of saying a directory has no entries at
// all (not one excluded or unreadable): an empty directory to record.
var errEmptyDir = errors.New("empty directory")

// readDir lists dir, sorted by name. An unreadable directory below the
// root is reported and yields no entries; an unreadable root fails the
// snapshot.
func (w *walker) readDir(ctx context.Context, rel string, dir *beneath.Dir) ([]beneath.Entry, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	entries, err := dir.Entries()
	if err != nil {
		if rel == "" {
			return nil, fmt.Errorf("read source directory: %w", err)
		}
		w.s.logger.Warn("directory unreadable, skipped", "path", rel, "err", err)
		w.col.add(&w.col.unreadable, Problem{Path: rel, Err: unwrapPathError(err)})
		return []beneath.Entry{{}}, nil // not empty: unknown
	}
	slices.SortFunc(entries, func(a, b beneath.Entry) int { return strings.Compare(a.Name, b.Name) })
	return entries, nil
}

// sendFile hands a regular file to the hashing workers, which take its
// stat, so stats run on every core. The job holds a reference to dir.
func (w *walker) sendFile(ctx context.Context, rel string, dir *beneath.Dir, name string) error {
	if p := w.s.opts.Progress; p != nil {
		p.AddTotal(1)
	}
	dir.Acquire()
	select {
	case w.jobs <- fileJob{rel: rel, dir: dir, name: name}:
		return nil
	case <-ctx.Done():
		dir.Close()
		return ctx.Err()
	}
}

// walkFunc walks a directory below the source: the full walk, or the walk
// of an incremental snapshot.
type walkFunc func(ctx context.Context, rel string, dir *beneath.Dir, included bool) (bool, error)

// entry records one directory entry of dir (rel "" for the root): files go
// to the hashing workers, symlinks and special files are recorded, and
// directories are walked with recurse. It reports whether anything was
// selected.
func (w *walker) entry(ctx context.Context, e beneath.Entry, rel string, dir *beneath.Dir, included bool, recurse walkFunc) (selected bool, err error) {
	if e.Name == "" {
		return false, nil // the placeholder of an unreadable directory
	}
	childRel := path.Join(rel, e.Name)
	if rel == "" {
		childRel = e.Name
	}
	if matchAny(w.s.opts.Excludes, childRel) {
		return false, nil
	}
	if err := ValidatePath(childRel); err != nil {
		w.col.add(&w.col.unreadable, Problem{Path: childRel, Err: fmt.Errorf("name cannot be stored: %w", err)})
		return false, nil
	}
	childIncluded := included || matchAny(w.s.opts.Includes, childRel)
	if e.Type.IsRegular() {
		if !childIncluded {
			return false, nil
		}
		return true, w.sendFile(ctx, childRel, dir, e.Name)
	}
	st, err := dir.Fstatat(e.Name)
	if err != nil {
		if childIncluded {
			w.col.add(&w.col.unreadable, Problem{Path: childRel, Err: unwrapPathError(err)})
		}
		return false, nil
	}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFDIR:
		child, err := dir.OpenDir(e.Name)
		if err != nil {
			if childIncluded || errors.Is(err, beneath.ErrSymlink) {
				w.col.add(&w.col.changed, Problem{Path: childRel, Err: fmt.Errorf("%w: %v", ErrChangedWhileReading, unwrapPathError(err))})
			}
			return false, nil
		}
		sub, err := recurse(ctx, childRel, child, childIncluded)
		child.Close()
		empty := errors.Is(err, errEmptyDir)
		if err != nil && !empty {
			return false, err
		}
		if empty && childIncluded {
			w.manifest.EmptyDirs = append(w.manifest.EmptyDirs, childRel)
			sub = true
		}
		if sub {
			w.manifest.Dirs = append(w.manifest.Dirs, Dir{RelativePath: childRel, Mode: st.Mode & 0o7777, MtimeNs: st.Mtim.Nano()})
			selected = true
		}
	case unix.S_IFLNK:
		if !childIncluded {
			return false, nil
		}
		target, err := dir.Readlink(e.Name)
		if err != nil {
			w.col.add(&w.col.unreadable, Problem{Path: childRel, Err: unwrapPathError(err)})
			return selected, nil
		}
		if !utf8.ValidString(target) {
			// JSON cannot carry it: stored, it would come back different.
			w.col.add(&w.col.unreadable, Problem{Path: childRel, Err: fmt.Errorf("symlink target %q is not valid UTF-8 and cannot be stored", target)})
			return selected, nil
		}
		w.manifest.Symlinks = append(w.manifest.Symlinks, Symlink{RelativePath: childRel, Target: target})
		selected = true
	case unix.S_IFREG: // only when the directory entry did not say
		if !childIncluded {
			return false, nil
		}
		if err := w.sendFile(ctx, childRel, dir, e.Name); err != nil {
			return false, err
		}
		selected = true
	default:
		if !childIncluded {
			return false, nil
		}
		mode := fileModeType(st.Mode)
		w.s.logger.Info("special file skipped", "path", childRel, "type", mode.String())
		w.col.add(&w.col.special, Problem{Path: childRel, Err: fmt.Errorf("special file (%s) skipped", describeType(mode))})
	}
	return selected, nil
}

// fileModeType converts the type bits of a stat mode.
func fileModeType(m uint32) fs.FileMode {
	switch m & unix.S_IFMT {
	case unix.S_IFSOCK:
		return fs.ModeSocket
	case unix.S_IFIFO:
		return fs.ModeNamedPipe
	case unix.S_IFCHR:
		return fs.ModeDevice | fs.ModeCharDevice
	case unix.S_IFBLK:
		return fs.ModeDevice
	case unix.S_IFDIR:
		return fs.ModeDir
	case unix.S_IFLNK:
		return fs.ModeSymlink
	}
	return 0
}

func describeType(m fs.FileMode) string {
	switch {
	case m&fs.ModeSocket != 0:
		return "socket"
	case m&fs.ModeNamedPipe != 0:
		return "fifo"
	case m&fs.ModeCharDevice != 0:
		return "character device"
	case m&fs.ModeDevice != 0:
		return "block device"
	}
	return m.Type().String()
}

// unwrapPathError drops the absolute path from an *fs.PathError, since the
// Problem already names the relative path.
func unwrapPathError(err error) error {
	if pe, ok := err.(*fs.PathError); ok {
		return fmt.Errorf("%s: %w", pe.Op, pe.Err)
	}
	return err
}
