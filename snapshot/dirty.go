package snapshot

import (
	"context"
	"fmt"
	"io/fs"
	"path"
	"path/filepath"
	"sort"
	"strings"

	"github.com/deltabackup/deltabackup/snapshot/beneath"
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
// the way to one; the others are carried over from the base manifest.
func (w *walker) walkDirty(ctx context.Context, rel string, dir *beneath.Dir, included bool) (bool, error) {
	entries, err := w.readDir(ctx, rel, dir)
	if err != nil {
		return false, err
	}
	var inBase map[string]bool // names below dir that the base has entries at or below
	selected := false
	for _, e := range entries {
		if e.Name == "" {
			continue // the placeholder of an unreadable directory
		}
		childRel := e.Name
		if rel != "" {
			childRel = rel + "/" + e.Name
		}
		var sel bool
		switch {
		case w.dirty.dirty[childRel] || (w.dirty.onPath[childRel] && e.Type != fs.ModeDir):
			sel, err = w.entry(ctx, e, rel, dir, included, w.walkDir)
		case w.dirty.onPath[childRel]:
			sel, err = w.entry(ctx, e, rel, dir, included, w.walkDirty)
		default:
			if inBase == nil {
				inBase = w.baseChildren(rel)
			}
			// Carried over later, in one pass over the base (finishIncremental).
			w.kept = append(w.kept, childRel)
			sel = inBase[e.Name]
		}
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

// baseChildren returns the names in directory rel ("" for the root) that
// the base manifest has an entry at or below. Each list is sorted by path,
// so the entries below rel are one range, and a child's subtree is skipped
// with one search.
func (w *walker) baseChildren(rel string) map[string]bool {
	names := map[string]bool{}
	m := w.s.opts.Base
	childrenIn(names, m.Files, filePath, rel)
	childrenIn(names, m.Dirs, dirPath, rel)
	childrenIn(names, m.EmptyDirs, func(s *string) string { return *s }, rel)
	childrenIn(names, m.Symlinks, symlinkPath, rel)
	return names
}

func childrenIn[T any](names map[string]bool, list []T, key func(*T) string, rel string) {
	find := func(from int, k string) int {
		return from + sort.Search(len(list)-from, func(i int) bool { return key(&list[from+i]) >= k })
	}
	prefix, lo, hi := "", 0, len(list)
	if rel != "" {
		prefix = rel + "/"
		lo, hi = find(0, prefix), find(0, rel+"0")
	}
	for i := lo; i < hi; {
		name := key(&list[i])[len(prefix):]
		slash := strings.IndexByte(name, '/')
		if slash < 0 {
			names[name] = true
			i++
			continue
		}
		names[name[:slash]] = true
		i = find(i, prefix+name[:slash]+"0")
	}
}
