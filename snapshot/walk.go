package snapshot

import (
	"context"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"unicode/utf8"

	"github.com/bmatcuk/doublestar/v4"
)

// walker lists the source tree in one goroutine and feeds regular files to
// the hashing workers through a bounded channel; directories, empty dirs,
// symlinks and special files it records itself.
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

func (w *walker) walk(ctx context.Context, rel, dir string, included bool) error {
	_, err := w.walkDir(ctx, rel, dir, included)
	return err
}

// walkDir lists dir (rel "" for the root) and reports whether anything
// below it was selected. included is true when a directory above matched
// an include glob, which selects everything below it.
func (w *walker) walkDir(ctx context.Context, rel, dir string, included bool) (selected bool, err error) {
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
	return selected, nil
}

// readDir lists dir. An unreadable directory below the root is reported
// and yields no entries; an unreadable root fails the snapshot.
func (w *walker) readDir(ctx context.Context, rel, dir string) ([]fs.DirEntry, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		if rel == "" {
			return nil, fmt.Errorf("read source directory: %w", err)
		}
		w.s.logger.Warn("directory unreadable, skipped", "path", rel, "err", err)
		w.col.add(&w.col.unreadable, Problem{Path: rel, Err: unwrapPathError(err)})
		return nil, nil
	}
	return entries, nil
}

// sendFile hands a regular file to the hashing workers, which take its
// lstat, so stats run on every core.
func (w *walker) sendFile(ctx context.Context, rel string) error {
	if p := w.s.opts.Progress; p != nil {
		p.AddTotal(1)
	}
	select {
	case w.jobs <- fileJob{rel: rel}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// walkFunc walks a directory below the source: the full walk, or the walk
// of an incremental snapshot.
type walkFunc func(ctx context.Context, rel, dir string, included bool) (bool, error)

// entry records one directory entry of dir (rel "" for the root): files go
// to the hashing workers, symlinks and special files are recorded, and
// directories are walked with recurse. It reports whether anything was
// selected.
func (w *walker) entry(ctx context.Context, e fs.DirEntry, rel, dir string, included bool, recurse walkFunc) (selected bool, err error) {
	childRel := path.Join(rel, e.Name())
	if rel == "" {
		childRel = e.Name()
	}
	if matchAny(w.s.opts.Excludes, childRel) {
		return false, nil
	}
	if err := ValidatePath(childRel); err != nil {
		w.col.add(&w.col.unreadable, Problem{Path: childRel, Err: fmt.Errorf("name cannot be stored: %w", err)})
		return false, nil
	}
	child := filepath.Join(dir, e.Name())
	childIncluded := included || matchAny(w.s.opts.Includes, childRel)
	if e.Type().IsRegular() {
		if !childIncluded {
			return false, nil
		}
		return true, w.sendFile(ctx, childRel)
	}
	info, err := e.Info() // lstat
	if err != nil {
		if childIncluded {
			w.col.add(&w.col.unreadable, Problem{Path: childRel, Err: unwrapPathError(err)})
		}
		return false, nil
	}
	switch mode := info.Mode(); {
	case mode.IsDir():
		sub, err := recurse(ctx, childRel, child, childIncluded)
		if err != nil {
			return false, err
		}
		if !sub && childIncluded && isEmptyDir(child) {
			w.manifest.EmptyDirs = append(w.manifest.EmptyDirs, childRel)
			sub = true
		}
		if sub {
			w.manifest.Dirs = append(w.manifest.Dirs, Dir{RelativePath: childRel, Mode: unixMode(info), MtimeNs: info.ModTime().UnixNano()})
			selected = true
		}
	case !childIncluded:
	case mode&fs.ModeSymlink != 0:
		target, err := os.Readlink(child)
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
	case mode.IsRegular(): // only when the directory entry did not say
		if err := w.sendFile(ctx, childRel); err != nil {
			return false, err
		}
		selected = true
	default:
		w.s.logger.Info("special file skipped", "path", childRel, "type", mode.Type().String())
		w.col.add(&w.col.special, Problem{Path: childRel, Err: fmt.Errorf("special file (%s) skipped", describeType(mode))})
	}
	return selected, nil
}

func isEmptyDir(dir string) bool {
	f, err := os.Open(dir)
	if err != nil {
		return false
	}
	defer f.Close()
	names, _ := f.Readdirnames(1)
	return len(names) == 0
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
