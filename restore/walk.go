package restore

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"
	"golang.org/x/sys/unix"

	"github.com/deltabackup/deltabackup/snapshot"
	"github.com/deltabackup/deltabackup/snapshot/beneath"
	"github.com/deltabackup/deltabackup/snapshot/digest"
)

// A restore walks the backup's trees once more after validating them,
// depth first: directories are created as they are reached, small files
// written and existing files checked by a pool of goroutines, and larger
// files collected in batches. Each batch is planned over the sources
// (largest first to the least-loaded holder) and fetched by the
// scheduler before the walk goes on, so memory holds one batch and one
// directory path, never the whole tree. Directory metadata is set last,
// deepest first, since writing into a directory changes its mtime.

// Batch limits: a batch is planned and fetched once it holds this many
// files or bytes.
const (
	batchFileLimit = 20000
	batchByteLimit = 4 << 30
	// batchChunkedLimit bounds the chunked files of a batch, each open
	// until its last chunk arrives.
	batchChunkedLimit = 256
)

// linkState is one hard-link group of the restore: the name restored
// first, and the other names waiting to be linked to it.
type linkState struct {
	first     string
	committed bool
	pending   []fileTask
}

// dirMeta is a directory whose metadata is set at the end.
type dirMeta struct {
	rel  string
	node snapshot.Node
}

// walkState is the state of the restore walk.
type walkState struct {
	pool    *errgroup.Group
	poolCtx context.Context

	mu     sync.Mutex
	groups map[digest.Digest]*group
	order  []digest.Digest
	files  int
	bytes  int64
	// chunked counts the chunked files of the batch.
	chunked int

	created map[string]bool
	dirs    []dirMeta
}

func (r *restorer) newPool(ctx context.Context, ws *walkState) {
	ws.pool, ws.poolCtx = errgroup.WithContext(ctx)
	ws.pool.SetLimit(r.opts.Parallel)
}

// walk restores the backup whose root tree is root.
func (r *restorer) walk(ctx context.Context, root digest.Digest) error {
	ws := &walkState{groups: map[digest.Digest]*group{}, created: map[string]bool{"": true}}
	r.newPool(ctx, ws)
	var self *snapshot.Node
	if r.opts.Path == "" {
		t, err := snapshot.LoadTree(ctx, r.trees, root, "")
		if err != nil {
			return err
		}
		self = t.Self
		if err := r.restoreTree(ctx, ws, "", t, r.filter.selects("", false)); err != nil {
			return err
		}
	} else {
		n, _, err := snapshot.Lookup(ctx, r.trees, root, r.opts.Path)
		if err != nil {
			return err
		}
		if n.Type == snapshot.TypeDir {
			self = n
			t, err := snapshot.LoadTree(ctx, r.trees, n.Subtree, r.opts.Path)
			if err != nil {
				return err
			}
			if err := r.restoreTree(ctx, ws, "", t, r.filter.selects("", false)); err != nil {
				return err
			}
		} else if err := r.entry(ctx, ws, path.Base(r.opts.Path), n, true); err != nil {
			return err
		}
	}
	if err := r.flush(ctx, ws); err != nil {
		return err
	}
	if err := r.resolveLinks(ctx, ws); err != nil {
		return err
	}
	if err := r.flush(ctx, ws); err != nil {
		return err
	}
	for _, d := range ws.dirs {
		if err := ctx.Err(); err != nil {
			return err
		}
		r.dirMetadata(d.rel, &d.node)
	}
	if self != nil {
		r.dirMetadata("", self)
	}
	return nil
}

// restoreTree restores the entries of tree t into the target directory
// rel, which exists. selected says whether rel itself was selected.
func (r *restorer) restoreTree(ctx context.Context, ws *walkState, rel string, t *snapshot.Tree, selected bool) error {
	if !r.fresh {
		// The partial files of chunked files an interrupted run left here
		// are resumed, not removed with other temporary files.
		for i := range t.Nodes {
			if n := &t.Nodes[i]; len(n.Chunks) > 0 {
				r.resumable.Store(path.Join(rel, resumeName(joinRel(rel, n.Name), n)), true)
			}
		}
	}
	if r.opts.Delete && !r.fresh {
		r.deleteExtras(rel, t, selected)
	}
	for i := range t.Nodes {
		if err := ctx.Err(); err != nil {
			return err
		}
		n := &t.Nodes[i]
		childRel := joinRel(rel, n.Name)
		if r.filter.excluded(childRel) {
			continue
		}
		sel := r.filter.selects(childRel, selected)
		if n.Type != snapshot.TypeDir {
			if sel {
				if err := r.entry(ctx, ws, childRel, n, sel); err != nil {
					return err
				}
			}
			continue
		}
		if sel {
			if !r.ensureDirs(ws, childRel) {
				continue
			}
		}
		sub, err := snapshot.LoadTree(ctx, r.trees, n.Subtree, childRel)
		if err != nil {
			return err
		}
		if err := r.restoreTree(ctx, ws, childRel, sub, sel); err != nil {
			return err
		}
		if ws.created[childRel] {
			ws.dirs = append(ws.dirs, dirMeta{rel: childRel, node: *n})
			r.res.Dirs++
		}
	}
	return nil
}

func joinRel(dir, name string) string {
	if dir == "" {
		return name
	}
	return dir + "/" + name
}

// ensureDirs makes rel and the directories above it exist as real
// directories (not symlinks left in the target), creating what is
// missing; it reports failures itself and returns false.
func (r *restorer) ensureDirs(ws *walkState, rel string) bool {
	if ws.created[rel] {
		return true
	}
	if parent := parentOf(rel); !ws.created[parent] && !r.ensureDirs(ws, parent) {
		return false
	}
	if err := r.ensureDir(rel); err != nil {
		r.fail(rel, digest.Digest{}, err)
		return false
	}
	ws.created[rel] = true
	return true
}

func (r *restorer) ensureDir(rel string) error {
	st, err := r.root.Lstat(rel)
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return fmt.Errorf("restore directory: %w", err)
	case st.Mode&unix.S_IFMT == unix.S_IFDIR:
		// A partial earlier restore: make sure we can write into it, and
		// drop temporary files an interrupted run left behind.
		if st.Mode&0o700 != 0o700 {
			if err := r.root.Chmod(rel, st.Mode&0o7777|0o700); err != nil {
				return fmt.Errorf("restore directory: %w", err)
			}
		}
		r.removeTemps(rel)
		return nil
	default:
		// A file or symlink where the backup has a directory: the backup
		// wins, and nothing is ever written through a symlink.
		if err := r.root.Remove(rel); err != nil {
			return fmt.Errorf("restore directory: replace a %s: %w", describeType(st.Mode), err)
		}
	}
	if err := r.root.Mkdir(rel, 0o700); err != nil {
		return fmt.Errorf("restore directory: %w", err)
	}
	return nil
}

// removeTemps removes the temporary files an interrupted restore left in
// dir: regular files named exactly as tempName names them, mode 0600, and
// older than this run. A user's own file that merely starts the same way
// is left alone.
func (r *restorer) removeTemps(dir string) {
	d, err := r.root.OpenDir(dir)
	if err != nil {
		return
	}
	defer d.Close()
	entries, _ := d.Entries()
	for _, e := range entries {
		if !isTempName(e.Name) || !e.Type.IsRegular() {
			continue
		}
		if _, resume := r.resumable.Load(path.Join(dir, e.Name)); resume {
			continue
		}
		st, err := d.Fstatat(e.Name)
		if err != nil || st.Mode&unix.S_IFMT != unix.S_IFREG || st.Mode&0o7777 != 0o600 || st.Nlink != 1 ||
			!time.Unix(st.Mtim.Unix()).Before(r.start) {
			continue
		}
		_ = d.Remove(e.Name)
	}
}

// isTempName reports whether name has the form tempName gives: the prefix
// and 16 lower-case hex digits.
func isTempName(name string) bool {
	suffix, ok := strings.CutPrefix(name, tempPrefix)
	if !ok || len(suffix) != 16 {
		return false
	}
	for _, c := range suffix {
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

func describeType(mode uint32) string {
	switch mode & unix.S_IFMT {
	case unix.S_IFLNK:
		return "symlink"
	case unix.S_IFREG:
		return "file"
	case unix.S_IFDIR:
		return "directory"
	}
	return "special file"
}

// deleteExtras removes what the target directory rel holds and the tree
// does not, except temporary files of this restore and what the filter
// leaves out.
func (r *restorer) deleteExtras(rel string, t *snapshot.Tree, selected bool) {
	d := r.root
	if rel != "" {
		var err error
		if d, err = r.root.OpenDir(rel); err != nil {
			return // missing: nothing to delete
		}
		defer d.Close()
	}
	entries, err := d.Entries()
	if err != nil {
		r.fail(rel, digest.Digest{}, fmt.Errorf("list for --delete: %w", err))
		return
	}
	names := make(map[string]bool, len(t.Nodes))
	for i := range t.Nodes {
		names[t.Nodes[i].Name] = true
	}
	for _, e := range entries {
		p := joinRel(rel, e.Name)
		if names[e.Name] || isTempName(e.Name) || r.filter.excluded(p) || !r.filter.selects(p, selected) {
			continue
		}
		if err := d.RemoveAll(e.Name); err != nil {
			r.fail(p, digest.Digest{}, fmt.Errorf("delete: %w", err))
			continue
		}
		atomic.AddInt64(&r.res.Deleted, 1)
	}
}

// entry restores one entry that is not a directory.
func (r *restorer) entry(ctx context.Context, ws *walkState, rel string, n *snapshot.Node, selected bool) error {
	if !r.ensureDirs(ws, parentOf(rel)) {
		if n.Type == snapshot.TypeFile {
			r.fail(rel, n.ID, errors.New("its directory could not be created"))
		}
		return nil
	}
	switch n.Type {
	case snapshot.TypeFile:
		return r.file(ctx, ws, rel, n)
	case snapshot.TypeSymlink:
		r.symlink(rel, n)
	default:
		r.special(rel, n)
	}
	return nil
}

// file restores a regular file: checked and kept when it is already
// right, written at once when its content is embedded, otherwise added to
// the batch.
func (r *restorer) file(ctx context.Context, ws *walkState, rel string, n *snapshot.Node) error {
	if n.Hardlinked() && r.laterLink(rel, n) {
		return nil // linked to the group's first name at the end
	}
	if ws.full() {
		if err := r.flush(ctx, ws); err != nil {
			return err
		}
	}
	task := fileTask{rel: rel, node: n}
	ws.pool.Go(func() error {
		if err := ws.poolCtx.Err(); err != nil {
			return err
		}
		if len(n.Chunks) > 0 {
			// Whether the target holds it already is found chunk by chunk,
			// together with the chunks it holds.
			switch ok, err := r.chunked(ws, rel, n); {
			case err != nil:
				r.fail(rel, digest.Digest{}, err)
			case ok:
				r.upToDateKept(rel, n)
			}
			return nil
		}
		if !r.fresh {
			ok, err := r.upToDate(rel, n)
			switch {
			case err != nil:
				r.fail(rel, n.ID, err)
				return nil
			case ok:
				r.upToDateKept(rel, n)
				return nil
			}
		}
		if n.IsEmbedded() {
			if err := r.writeEmbedded(rel, n); err != nil {
				r.fail(rel, digest.Digest{}, err)
				return nil
			}
			r.written(n.Size)
			return nil
		}
		ws.add(task)
		return nil
	})
	return nil
}

// upToDateKept counts a file the target held already.
func (r *restorer) upToDateKept(rel string, n *snapshot.Node) {
	atomic.AddInt64(&r.res.FilesUpToDate, 1)
	if n.Hardlinked() {
		r.linkCommitted(n, rel)
	}
	r.done(n.Size)
}

// full reports whether the batch should be fetched before it grows.
func (ws *walkState) full() bool {
	ws.mu.Lock()
	defer ws.mu.Unlock()
	return ws.files >= batchFileLimit || ws.bytes >= batchByteLimit || ws.chunked >= batchChunkedLimit
}

// add puts a file whose content must be fetched into the batch.
func (ws *walkState) add(t fileTask) {
	ws.mu.Lock()
	defer ws.mu.Unlock()
	gr := ws.group(t.node.ID, t.node.DataSize())
	gr.paths = append(gr.paths, t.rel)
	gr.files = append(gr.files, t)
	ws.files++
}

// group returns the batch's group of content id, new if need be. Called
// with ws.mu held.
func (ws *walkState) group(id digest.Digest, size int64) *group {
	gr := ws.groups[id]
	if gr == nil {
		gr = &group{id: id, size: size}
		ws.groups[id] = gr
		ws.order = append(ws.order, id)
		ws.bytes += size
	}
	return gr
}

// flush waits for the pool, then plans and fetches the batch.
func (r *restorer) flush(ctx context.Context, ws *walkState) error {
	if err := ws.pool.Wait(); err != nil {
		return err
	}
	r.newPool(ctx, ws)
	ws.mu.Lock()
	groups, order := ws.groups, ws.order
	ws.groups, ws.order, ws.files, ws.bytes, ws.chunked = map[digest.Digest]*group{}, nil, 0, 0, 0
	ws.mu.Unlock()
	if len(groups) == 0 {
		return nil
	}
	needed := make([]snapshot.Hash, len(order))
	for i, id := range order {
		needed[i] = snapshot.Hash{Hexdigest: id, Size: groups[id].size}
	}
	plan, err := MakePlan(ctx, r.sources, needed)
	if err != nil {
		return err
	}
	total := r.res.Plan
	for i := range r.sources {
		total.Bytes[i] += plan.Bytes[i]
		total.Objects[i] += plan.Objects[i]
		if plan.SourceErrors[i] != nil {
			if total.SourceErrors[i] == nil {
				r.logger.Warn("source left out of the restore", "err", plan.SourceErrors[i])
			}
			total.SourceErrors[i] = plan.SourceErrors[i]
		}
	}
	for _, h := range plan.Unavailable {
		total.Unavailable = append(total.Unavailable, h)
		where := make([]string, len(r.sources))
		for i, s := range r.sources {
			where[i] = s.String()
		}
		r.failGroup(groups[h.Hexdigest], fmt.Errorf("object %s is in none of the sources (%s)", h.Hexdigest, strings.Join(where, ", ")))
		delete(groups, h.Hexdigest)
	}
	return r.writeFiles(ctx, plan, groups)
}

// laterLink reports whether rel is a further name of a hard-link group
// whose first name is restored already or on its way; such a name is
// linked at the end.
func (r *restorer) laterLink(rel string, n *snapshot.Node) bool {
	r.linksMu.Lock()
	defer r.linksMu.Unlock()
	g := linkGroup{n.LinkDev, n.LinkIno}
	st := r.links[g]
	if st == nil {
		r.links[g] = &linkState{first: rel}
		return false
	}
	st.pending = append(st.pending, fileTask{rel: rel, node: n})
	return true
}

// linkCommitted records that the first name of n's group is in place.
func (r *restorer) linkCommitted(n *snapshot.Node, rel string) {
	r.linksMu.Lock()
	defer r.linksMu.Unlock()
	if st := r.links[linkGroup{n.LinkDev, n.LinkIno}]; st != nil && st.first == rel {
		st.committed = true
	}
}

// resolveLinks links the further names of each hard-link group to its
// first; when the first could not be restored they get their own copies.
func (r *restorer) resolveLinks(ctx context.Context, ws *walkState) error {
	r.linksMu.Lock()
	states := make([]*linkState, 0, len(r.links))
	for _, st := range r.links {
		if len(st.pending) > 0 {
			states = append(states, st)
		}
	}
	r.links = map[linkGroup]*linkState{}
	r.linksMu.Unlock()
	for _, st := range states {
		for _, p := range st.pending {
			if err := ctx.Err(); err != nil {
				return err
			}
			if !st.committed {
				ws.add(p)
				continue
			}
			if err := r.link(st.first, p.rel); err != nil {
				r.fail(p.rel, p.node.ID, err)
				continue
			}
			atomic.AddInt64(&r.res.Links, 1)
			r.done(p.node.Size)
		}
	}
	return nil
}

// link makes rel a hard link of first, replacing what is at rel.
func (r *restorer) link(first, rel string) error {
	a, _ := r.root.Lstat(first)
	if st, err := r.root.Lstat(rel); err == nil {
		if st.Ino == a.Ino && st.Dev == a.Dev {
			return nil // already linked (an earlier restore)
		}
		if st.Mode&unix.S_IFMT == unix.S_IFDIR {
			return errors.New("target has a directory where the backup has a file; move it away and restore again")
		}
		if err := r.root.Remove(rel); err != nil {
			return err
		}
	}
	if err := r.root.Link(first, r.root, rel); err != nil {
		return fmt.Errorf("hard link to %s: %w", first, err)
	}
	return nil
}

// symlink restores a symbolic link, never following one.
func (r *restorer) symlink(rel string, n *snapshot.Node) {
	if st, err := r.root.Lstat(rel); err == nil {
		if st.Mode&unix.S_IFMT == unix.S_IFDIR {
			r.fail(rel, digest.Digest{}, errors.New("target has a directory where the backup has a symlink; move it away and restore again"))
			return
		}
		same := false
		if st.Mode&unix.S_IFMT == unix.S_IFLNK {
			target, err := r.root.Readlink(rel)
			same = err == nil && target == n.Target
		}
		if !same {
			if err := r.root.Remove(rel); err != nil {
				r.fail(rel, digest.Digest{}, err)
				return
			}
		}
		if same {
			r.linkMetadata(rel, n)
			atomic.AddInt64(&r.res.Symlinks, 1)
			r.done(0)
			return
		}
	}
	if err := r.root.Symlink(n.Target, rel); err != nil {
		r.fail(rel, digest.Digest{}, err)
		return
	}
	r.linkMetadata(rel, n)
	atomic.AddInt64(&r.res.Symlinks, 1)
	r.done(0)
}

func (r *restorer) linkMetadata(rel string, n *snapshot.Node) {
	dir, name := r.at(rel)
	defer dir.Close()
	if err := r.setMetadata(metaTarget{dir: dir, name: name, link: true}, rel, n); err != nil {
		r.warn(rel, "symlink metadata", err)
	}
}

// special restores a FIFO or device node; a device node needs root.
func (r *restorer) special(rel string, n *snapshot.Node) {
	var kind uint32
	switch n.Type {
	case snapshot.TypeFIFO:
		kind = unix.S_IFIFO
	case snapshot.TypeCharDevice:
		kind = unix.S_IFCHR
	case snapshot.TypeBlockDevice:
		kind = unix.S_IFBLK
	}
	if kind != unix.S_IFIFO && !r.asRoot {
		r.warn(rel, "device node", errors.New("only root can create device nodes; left out"))
		return
	}
	dir, name := r.at(rel)
	defer dir.Close()
	if st, err := dir.Fstatat(name); err == nil {
		if st.Mode&unix.S_IFMT == kind && (kind == unix.S_IFIFO || st.Rdev == n.Rdev) {
			r.specialMetadata(dir, name, rel, n)
			return
		}
		if st.Mode&unix.S_IFMT == unix.S_IFDIR {
			r.fail(rel, digest.Digest{}, errors.New("target has a directory where the backup has a special file; move it away and restore again"))
			return
		}
		if err := dir.Remove(name); err != nil {
			r.fail(rel, digest.Digest{}, err)
			return
		}
	}
	if err := dir.Mknod(name, kind|0o600, n.Rdev); err != nil {
		r.fail(rel, digest.Digest{}, err)
		return
	}
	r.specialMetadata(dir, name, rel, n)
}

func (r *restorer) specialMetadata(dir *beneath.Dir, name, rel string, n *snapshot.Node) {
	if err := r.setMetadata(metaTarget{dir: dir, name: name}, rel, n); err != nil {
		r.fail(rel, digest.Digest{}, err)
		return
	}
	atomic.AddInt64(&r.res.Specials, 1)
}

// dirMetadata sets a directory's metadata through a handle on it.
// Directories keep setgid when their group is restored (it decides the
// group of new files, not who runs a program).
func (r *restorer) dirMetadata(rel string, n *snapshot.Node) {
	d := r.root
	if rel != "" {
		var err error
		if d, err = r.root.OpenDir(rel); err != nil {
			r.fail(rel, digest.Digest{}, fmt.Errorf("directory metadata: %w", err))
			return
		}
		defer d.Close()
	}
	if err := r.setMetadata(metaTarget{dir: d, name: "."}, rel, n); err != nil {
		r.fail(rel, digest.Digest{}, fmt.Errorf("directory metadata: %w", err))
	}
}
