package snapshot

import (
	"context"
	"fmt"
	"path"
	"path/filepath"
	"sort"
	"strings"
)

// An incremental snapshot starts from the manifest of the previous
// snapshot of the same source (Options.Base) and a list of every path that
// may have changed since (Options.Dirty), as a file-system watcher or a
// database that knows what it wrote can provide. Only dirty paths and the
// directories above them are looked at: each such directory is listed
// again, a dirty directory is walked whole, and every other entry is
// carried over from Base with its stat cache entry. The result is the
// manifest a full walk would give, provided the list is complete.

// dirtySet is the cleaned dirty paths and every directory above them.
type dirtySet struct {
	dirty  map[string]bool
	onPath map[string]bool
	all    bool // the root itself is dirty: walk everything
}

func newDirtySet(paths []string) (*dirtySet, error) {
	d := &dirtySet{dirty: map[string]bool{}, onPath: map[string]bool{}}
	for _, p := range paths {
		p = path.Clean(strings.TrimPrefix(filepath.ToSlash(p), "/"))
		if p == "." || p == "" {
			d.all = true
			continue
		}
		if err := ValidatePath(p); err != nil {
			return nil, fmt.Errorf("dirty path: %w", err)
		}
		d.dirty[p] = true
		for dir := path.Dir(p); dir != "."; dir = path.Dir(dir) {
			d.onPath[dir] = true
		}
	}
	return d, nil
}

// walkDirty lists dir again and examines its dirty entries and those on
// the way to one; the others come from the base manifest.
func (w *walker) walkDirty(ctx context.Context, rel, dir string, included bool) (bool, error) {
	entries, err := w.readDir(ctx, rel, dir)
	if err != nil {
		return false, err
	}
	selected := false
	for _, e := range entries {
		childRel := e.Name()
		if rel != "" {
			childRel = rel + "/" + e.Name()
		}
		var sel bool
		switch {
		case w.dirty.dirty[childRel] || (w.dirty.onPath[childRel] && !e.IsDir()):
			sel, err = w.entry(ctx, e, rel, dir, included, w.walkDir)
		case w.dirty.onPath[childRel]:
			sel, err = w.entry(ctx, e, rel, dir, included, w.walkDirty)
		default:
			sel = w.keepBase(childRel)
		}
		if err != nil {
			return false, err
		}
		selected = selected || sel
	}
	return selected, nil
}

// appendUnder appends to dst the entries of a list sorted by path that are
// at or below p: p itself, then the range of paths starting with p+"/"
// (which ends before p+"0", '0' being the byte after '/').
func appendUnder[T any](dst, list []T, key func(T) string, p string) []T {
	find := func(k string) int { return sort.Search(len(list), func(i int) bool { return key(list[i]) >= k }) }
	if i := find(p); i < len(list) && key(list[i]) == p {
		dst = append(dst, list[i])
	}
	return append(dst, list[find(p+"/"):find(p+"0")]...)
}

// keepBase carries over the base manifest's entries at and below p, with
// their stat cache entries, and reports whether there were any.
func (w *walker) keepBase(p string) bool {
	m, out := w.s.opts.Base, w.manifest
	nFiles, nLinks, nEmpty, nDirs := len(w.kept), len(out.Symlinks), len(out.EmptyDirs), len(out.Dirs)
	w.kept = appendUnder(w.kept, m.Files, func(f File) string { return f.RelativePath }, p)
	out.Symlinks = appendUnder(out.Symlinks, m.Symlinks, func(s Symlink) string { return s.RelativePath }, p)
	out.EmptyDirs = appendUnder(out.EmptyDirs, m.EmptyDirs, func(d string) string { return d }, p)
	out.Dirs = appendUnder(out.Dirs, m.Dirs, func(d Dir) string { return d.RelativePath }, p)
	files := w.kept[nFiles:]
	if c := w.s.opts.Cache; c != nil {
		c.carry(files)
	}
	w.col.cachedFiles.Add(int64(len(files)))
	if pr := w.s.opts.Progress; pr != nil && len(files) > 0 {
		pr.AddTotal(int64(len(files)))
		pr.AddSuccess(int64(len(files)))
	}
	return len(files)+len(out.Symlinks)-nLinks+len(out.EmptyDirs)-nEmpty+len(out.Dirs)-nDirs > 0
}
