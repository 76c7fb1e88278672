package snapshot

import (
	"context"
	"fmt"
	"path"
	"path/filepath"
	"strings"

	"golang.org/x/sync/errgroup"
	"golang.org/x/sys/unix"

	"github.com/deltabackup/deltabackup/snapshot/beneath"
	"github.com/deltabackup/deltabackup/snapshot/digest"
)

// An incremental snapshot starts from the root tree of the previous
// snapshot of the same source (Options.Base) and a list of every path that
// may have changed since (Options.Dirty), as a file-system watcher or a
// database that knows what it wrote can provide. Only dirty paths and the
// directories above them are looked at: each directory on the way to a
// dirty path is listed again, a dirty directory is walked whole (its
// entries matched against the base by status), and every other entry is
// taken from the base tree as it is, subtrees by id. Only the trees of the
// directories on those paths are written again. The result is the tree a
// full walk would give, provided the list is complete.

// dirtySet is the cleaned dirty paths and every directory above them.
type dirtySet struct {
	dirty  map[string]bool
	onPath map[string]bool
}

func newDirtySet(paths []string) (*dirtySet, error) {
	d := &dirtySet{dirty: map[string]bool{}, onPath: map[string]bool{}}
	for _, p := range paths {
		p = path.Clean(strings.TrimPrefix(filepath.ToSlash(p), "/"))
		if p == "." || p == "" {
			continue
		}
		for part := range strings.SplitSeq(p, "/") {
			if err := ValidateName(part); err != nil {
				return nil, fmt.Errorf("dirty path %q: %w", p, err)
			}
		}
		d.dirty[p] = true
		for dir := path.Dir(p); dir != "."; dir = path.Dir(dir) {
			d.onPath[dir] = true
		}
	}
	return d, nil
}

// rootIncremental builds the root tree from the base and the dirty paths.
func (w *walker) rootIncremental(ctx context.Context, root *beneath.Dir, st *unix.Stat_t, dirty *dirtySet) (dirResult, error) {
	w.rootDev = st.Dev
	// The base's objects are in the repository: its record is, and gc
	// cannot run while the backup holds its lock.
	w.trusted = true
	base, err := w.readTree(ctx, w.s.opts.Base)
	if err != nil {
		return dirResult{}, err
	}
	return w.incDir(ctx, "", root, st, false, base, dirty)
}

// incDir rebuilds the tree of a directory on the way to a dirty path.
func (w *walker) incDir(ctx context.Context, rel string, d *beneath.Dir, st *unix.Stat_t, included bool, base *Tree, dirty *dirtySet) (dirResult, error) {
	ents, err := w.list(ctx, rel, d, included, false)
	if err != nil {
		return dirResult{}, err
	}
	prev := &prevDir{tree: base}
	giveNodes(ents)
	g, gctx := errgroup.WithContext(ctx)
	var tasks []func() error
	for _, e := range ents {
		n, _, inBase := prev.node(e.name)
		rel := e.rel()
		switch {
		case dirty.dirty[rel] || !inBase || n.Type != e.typ:
			// Examined whole: a dirty path, or one the base does not
			// have (the list should have named it; better safe).
			if e.typ == TypeDir {
				tasks = append(tasks, func() error { return w.subdir(gctx, d, e, prev) })
			} else {
				if n != nil && n.Type == e.typ && sameStatus(n, entryExtra{}, &e.st, false) {
					e.prev = n
				}
				tasks = append(tasks, func() error { return w.leaf(gctx, d, e) })
			}
		case dirty.onPath[rel] && e.typ == TypeDir:
			tasks = append(tasks, func() error { return w.incSubdir(gctx, d, e, n, dirty) })
		default:
			// Unchanged: the base's node, a subtree by id.
			e.setNode(*n)
			if n.Type == TypeFile || n.Type == TypeSymlink {
				w.col.cachedFiles.Add(1)
				if p := w.s.opts.Progress; p != nil {
					p.AddTotalBytes(n.Size)
					p.AddBytes(n.Size)
					p.AddSuccess(1)
				}
			}
			if n.Type == TypeDir {
				w.col.treesReused.Add(1)
			}
		}
	}
	w.runAll(g, tasks)
	if err := g.Wait(); err != nil {
		return dirResult{}, err
	}
	return w.finishDir(ctx, rel, d, st, included, ents, nil, digest.Digest{}, digest.Digest{}, true)
}

// incSubdir rebuilds a subdirectory on the way to a dirty path.
func (w *walker) incSubdir(ctx context.Context, d *beneath.Dir, e *entry, n *Node, dirty *dirtySet) error {
	child, err := d.OpenDir(e.name)
	if err != nil {
		if e.included {
			w.col.add(&w.col.changed, Problem{Path: e.rel(), Err: fmt.Errorf("%w: %w", ErrChangedWhileReading, unwrapPathError(err))})
		}
		return nil
	}
	defer child.Close()
	base, err := w.readTree(ctx, n.Subtree)
	if err != nil {
		return err
	}
	res, err := w.incDir(ctx, e.rel(), child, &e.st, e.included, base, dirty)
	if err != nil {
		return err
	}
	if !res.selected && !e.included {
		return nil
	}
	if sameStatus(n, entryExtra{}, &e.st, false) {
		e.prev = n
	}
	return w.dirNode(d, e, res)
}
