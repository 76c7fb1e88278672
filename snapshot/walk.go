package snapshot

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/bmatcuk/doublestar/v4"
	"github.com/zeebo/blake3"
	"golang.org/x/sync/errgroup"
	"golang.org/x/sys/unix"

	"github.com/deltabackup/deltabackup/snapshot/beneath"
	"github.com/deltabackup/deltabackup/snapshot/digest"
)

// The walker builds one tree per directory, bottom-up. Directories and
// files are handled by up to Parallel goroutines: the caller works
// through a directory's subdirectories and changed files itself, and
// helper goroutines join it while one is free (runAll), so the walk never
// waits for a goroutine it cannot get.
//
// Every directory is opened from its parent's handle without following a
// symbolic link (beneath), and files are opened below their directory's
// handle: a directory swapped for a link while the backup runs is
// reported, never followed out of the source.
type walker struct {
	s     *Snapshotter
	col   *collector
	stage *stager
	// cache is the directory cache to read (nil: none usable); trusted
	// when what it names may be taken as stored.
	cache   *DirCache
	trusted bool
	// newCache receives the records of this walk (nil: none).
	newCache *DirCache
	tokens   chan struct{}
	rootDev  uint64
	// links holds the result of hashing each multiply-linked inode, so
	// its other names are not read again.
	links   sync.Map
	hashers sync.Pool
	buffers sync.Pool
}

// linkKey is one inode in one state.
type linkKey struct {
	dev, ino     uint64
	ctime, mtime int64
	size         int64
}

type linkResult struct {
	once  sync.Once
	node  Node
	extra entryExtra
	err   error
}

func newWalker(s *Snapshotter, col *collector) *walker {
	w := &walker{s: s, col: col, tokens: make(chan struct{}, max(0, s.opts.Parallel-1))}
	w.hashers.New = func() any { return newHasher() }
	w.buffers.New = func() any { b := make([]byte, 0, 64<<10); return &b }
	if c := s.opts.Cache; c != nil {
		fp := s.Fingerprint()
		if c.usable(fp) {
			w.cache, w.trusted = c, c.Trusted
		}
		if err := c.begin(fp); err != nil {
			s.logger.Warn("directory cache not written", "err", err)
		} else {
			w.newCache = c
		}
	}
	return w
}

// runAll runs every task and records the first error in g. The caller
// works through the tasks in order, and whenever a token is free a helper
// goroutine joins it and takes the next tasks too. A helper stays until
// the tasks run out, so a token freed while the caller is deep in one
// subdirectory is picked up for the next one at once rather than when the
// caller comes back (with one token, spawning one goroutine per task kept
// a core idle while the caller stat'ed a directory on its own).
func (w *walker) runAll(g *errgroup.Group, tasks []func() error) {
	var next atomic.Int64
	var drain func() error
	drain = func() error {
		for {
			i := int(next.Add(1) - 1)
			if i >= len(tasks) {
				return nil
			}
			if i+1 < len(tasks) {
				select {
				case w.tokens <- struct{}{}:
					g.Go(func() error {
						defer func() { <-w.tokens }()
						return drain()
					})
				default:
				}
			}
			if err := tasks[i](); err != nil {
				return err
			}
		}
	}
	if err := drain(); err != nil {
		g.Go(func() error { return err })
	}
}

func matchAny(globs []string, rel string) bool {
	for _, g := range globs {
		if ok, _ := doublestar.Match(g, rel); ok {
			return true
		}
	}
	return false
}

// entry is one directory entry on its way into a tree.
type entry struct {
	name string
	dir  string // the directory's path (see rel)
	st   unix.Stat_t
	// listed is the time taken before st (see racy).
	listed int64
	// lazy: a regular file not stat'ed yet; st is filled in when the file
	// is opened.
	lazy bool
	typ  NodeType
	// prev is the entry's node in the previous tree when its status is
	// unchanged, so its content and metadata can be taken from there.
	prev *Node
	// node and extra are the result; keep is false when the entry is
	// left out (unreadable, changed, or nothing selected below it). node
	// is set only when needed: a directory taken whole by id needs no
	// node for its entries, and a Node is most of an entry's size.
	node  *Node
	extra entryExtra
	keep  bool
	// For directories: whether the directory was selected itself, and
	// whether it is a mount point not entered (OneFileSystem).
	included bool
	boundary bool
}

// rel is the entry's path relative to the source root.
func (e *entry) rel() string {
	if e.dir == "" {
		return e.name
	}
	return e.dir + "/" + e.name
}

// setNode sets the entry's node and keeps the entry. An unchanged entry's
// node is its previous node itself (leaf), read-only: setNode never
// writes through it.
func (e *entry) setNode(n Node) {
	if e.node == nil || e.node == e.prev {
		e.node = new(Node)
	}
	*e.node = n
	e.keep = true
}

// giveNodes gives the entries that will need a node of their own (not
// unchanged ones, which take their previous node) one each, from a single
// allocation.
func giveNodes(ents []*entry) {
	count := 0
	for _, e := range ents {
		if e.node == nil && e.prev == nil {
			count++
		}
	}
	slab := make([]Node, count)
	for _, e := range ents {
		if e.node == nil && e.prev == nil {
			e.node, slab = &slab[0], slab[1:]
		}
	}
}

// prevDir is what the previous backup held in a directory: its tree and,
// from the cache, each entry's inode and ctime (strong matching); from a
// base tree alone, entries match by size, mtime, mode and owner.
type prevDir struct {
	rec    *dirRecord
	tree   *Tree
	strong bool
}

// node finds the previous node of name. A tree's nodes are sorted by name
// (DecodeTree checks it), so a binary search finds it with no map to
// build: a map per directory was 13 MB of garbage per incremental backup
// of tiny. Safe for concurrent use.
func (p *prevDir) node(name string) (*Node, entryExtra, bool) {
	if p == nil || p.tree == nil {
		return nil, entryExtra{}, false
	}
	nodes := p.tree.Nodes
	i := sort.Search(len(nodes), func(i int) bool { return nodes[i].Name >= name })
	if i == len(nodes) || nodes[i].Name != name {
		return nil, entryExtra{}, false
	}
	var x entryExtra
	if p.rec != nil && i < len(p.rec.extras) {
		x = p.rec.extras[i]
	}
	return &p.tree.Nodes[i], x, true
}

// decode decodes the previous tree of a cache record when needed.
func (p *prevDir) decode() error {
	if p == nil || p.tree != nil || p.rec == nil {
		return nil
	}
	t, err := DecodeTree(p.rec.encoded)
	if err != nil {
		return err
	}
	p.tree = t
	return nil
}

// root walks the whole source.
func (w *walker) root(ctx context.Context, root *beneath.Dir, st *unix.Stat_t) (dirResult, error) {
	w.rootDev = st.Dev
	return w.walkDir(ctx, "", root, st, false, nil)
}

// dirResult is what a walked directory gives its parent.
type dirResult struct {
	id    digest.Digest
	below Counts
	// selected is false when nothing in or below the directory was
	// selected (and the directory itself was not).
	selected bool
}

// walkDir builds and stores the tree of directory rel ("" for the root),
// whose status is st. included is true when a directory above matched an
// include glob, which selects everything below it. base, in an
// incremental snapshot, is the directory's tree in the base backup.
func (w *walker) walkDir(ctx context.Context, rel string, d *beneath.Dir, st *unix.Stat_t, included bool, base *Tree) (dirResult, error) {
	if err := ctx.Err(); err != nil {
		return dirResult{}, err
	}
	var prev *prevDir
	switch {
	case base != nil:
		prev = &prevDir{tree: base}
	case w.cache != nil:
		rec, err := w.cache.lookup(rel)
		if err != nil {
			w.s.logger.Warn("directory cache record unusable; reading the directory again", "path", rel, "err", err)
		} else if rec != nil {
			prev = &prevDir{rec: rec, strong: true}
		}
	}
	// With nothing to compare against, every file is read anyway, and the
	// status taken when it is opened serves instead of an lstat first.
	lazy := prev == nil && w.stage == nil && w.s.opts.ExcludeLargerThan <= 0
	ents, err := w.list(ctx, rel, d, included, lazy)
	if err != nil {
		return dirResult{}, err
	}
	var localSig digest.Digest
	var racyEntries bool
	signLocal := func() {
		localSig, racyEntries = w.localSignature(ents)
		if rel == "" {
			localSig = signRoot(localSig, st)
		}
	}
	if !lazy {
		signLocal()
	}
	unchanged := prev != nil && prev.rec != nil && w.trusted && !racyEntries && prev.rec.localSig == localSig

	if !unchanged {
		if err := prev.decode(); err != nil {
			w.s.logger.Warn("directory cache record unusable; reading the directory again", "path", rel, "err", err)
			prev = nil
		}
		if err := w.matchPrevious(ctx, ents, prev); err != nil {
			return dirResult{}, err
		}
		giveNodes(ents)
	}
	g, gctx := errgroup.WithContext(ctx)
	var tasks []func() error
	for _, e := range ents {
		if e.typ == TypeDir {
			tasks = append(tasks, func() error { return w.subdir(gctx, d, e, prev) })
		}
	}
	if !unchanged {
		for _, e := range ents {
			if e.typ != TypeDir {
				tasks = append(tasks, func() error { return w.leaf(gctx, d, e) })
			}
		}
	}
	w.runAll(g, tasks)
	if err := g.Wait(); err != nil {
		return dirResult{}, err
	}
	if lazy {
		signLocal() // now that every file's status is known
	}
	fullSig := fullSignature(localSig, ents)
	if unchanged && prev.rec.fullSig == fullSig && w.s.opts.OnFile == nil {
		// Nothing in or below the directory changed: its tree is taken by
		// id, unread and not encoded again.
		var leaves, bytes int64
		for _, e := range ents {
			if e.typ == TypeFile || e.typ == TypeSymlink {
				leaves++
				bytes += e.st.Size
			}
		}
		w.col.treesReused.Add(1)
		w.col.cachedFiles.Add(leaves)
		if p := w.s.opts.Progress; p != nil {
			p.AddTotalBytes(bytes)
			p.AddBytes(bytes)
			p.AddSuccess(leaves)
		}
		w.record(prev.rec)
		return dirResult{id: prev.rec.tree, below: prev.rec.below, selected: true}, nil
	}
	if unchanged {
		// The entries are as before but something below changed (or the
		// caller wants every file): the previous tree gives the nodes.
		if err := prev.decode(); err != nil {
			return dirResult{}, fmt.Errorf("directory cache record of %q: %w", rel, err)
		}
		if err := w.takeUnchanged(ctx, d, ents, prev); err != nil {
			return dirResult{}, err
		}
	}
	return w.finishDir(ctx, rel, d, st, included, ents, prev, localSig, fullSig, racyEntries)
}

// list reads and stats the entries of a directory, sorted by name, and
// decides which are selected.
//
// With lazy, regular files (as the directory listing types them) are not
// stat'ed here: their status is the one taken when they are opened.
func (w *walker) list(ctx context.Context, rel string, d *beneath.Dir, included, lazy bool) ([]*entry, error) {
	opts := &w.s.opts
	des, err := d.Entries()
	if err != nil {
		if rel == "" {
			return nil, fmt.Errorf("read source directory: %w", err)
		}
		w.s.logger.Warn("directory unreadable, recorded empty", "path", rel, "err", err)
		w.col.add(&w.col.unreadable, Problem{Path: rel, Err: unwrapPathError(err)})
		return nil, nil
	}
	slices.SortFunc(des, func(a, b beneath.Entry) int { return strings.Compare(a.Name, b.Name) })
	if marker := w.exclusionMarker(d, des); marker != "" {
		// Only the marker files stay; the directory is recorded.
		des = slices.DeleteFunc(des, func(e beneath.Entry) bool { return !w.isMarker(e.Name) })
		w.s.logger.Debug("directory contents excluded by a marker", "path", rel, "marker", marker)
	}
	ents := make([]*entry, 0, len(des))
	// One allocation for the directory's entries rather than one each.
	store := make([]entry, len(des))
	listed := time.Now().UnixNano()
	for i, de := range des {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		e := &store[i]
		*e = entry{name: de.Name, dir: rel, listed: listed}
		// The path is built only for globs to match: most entries never
		// need it.
		var childRel string
		if len(opts.Excludes)+len(opts.Includes) > 0 {
			childRel = e.rel()
		}
		if matchAny(opts.Excludes, childRel) {
			continue
		}
		if err := ValidateName(de.Name); err != nil {
			w.col.add(&w.col.unreadable, Problem{Path: e.rel(), Err: fmt.Errorf("name cannot be stored: %w", err)})
			continue
		}
		e.included = included || matchAny(opts.Includes, childRel)
		if lazy && de.Type.IsRegular() {
			if !e.included {
				continue
			}
			e.typ, e.lazy = TypeFile, true
			if p := opts.Progress; p != nil {
				p.AddTotal(1)
			}
			ents = append(ents, e)
			continue
		}
		e.st, err = d.Fstatat(de.Name)
		if err != nil {
			if e.included {
				w.col.add(&w.col.unreadable, Problem{Path: e.rel(), Err: unwrapPathError(err)})
			}
			continue
		}
		switch e.st.Mode & unix.S_IFMT {
		case unix.S_IFDIR:
			e.typ = TypeDir
			if opts.OneFileSystem && e.st.Dev != w.rootDev {
				if !e.included {
					continue
				}
				e.boundary = true
			}
		case unix.S_IFREG:
			e.typ = TypeFile
			if opts.ExcludeLargerThan > 0 && e.st.Size > opts.ExcludeLargerThan && e.included {
				w.col.add(&w.col.skipped, Problem{Path: e.rel(), Err: fmt.Errorf("%d bytes, larger than %d: left out", e.st.Size, opts.ExcludeLargerThan)})
				continue
			}
		case unix.S_IFLNK:
			e.typ = TypeSymlink
		case unix.S_IFIFO:
			e.typ = TypeFIFO
		case unix.S_IFCHR:
			e.typ = TypeCharDevice
		case unix.S_IFBLK:
			e.typ = TypeBlockDevice
		default:
			if e.included {
				w.s.logger.Info("socket skipped", "path", e.rel())
				w.col.add(&w.col.skipped, Problem{Path: e.rel(), Err: errors.New("socket: left out (a socket cannot be restored)")})
			}
			continue
		}
		if e.typ != TypeDir && !e.included {
			continue
		}
		if e.typ == TypeFile || e.typ == TypeSymlink {
			if p := opts.Progress; p != nil {
				p.AddTotal(1)
			}
		}
		ents = append(ents, e)
	}
	return ents, nil
}

// cacheDirSignature is the first line a CACHEDIR.TAG must start with.
const cacheDirSignature = "Signature: 8a477f597d28d172789f06886806bc55"

func (w *walker) isMarker(name string) bool {
	return slices.Contains(w.s.opts.ExcludeIfPresent, name) || (w.s.opts.ExcludeCaches && name == "CACHEDIR.TAG")
}

// exclusionMarker returns the name of a file that excludes the contents
// of the directory, or "".
func (w *walker) exclusionMarker(d *beneath.Dir, des []beneath.Entry) string {
	opts := &w.s.opts
	if len(opts.ExcludeIfPresent) == 0 && !opts.ExcludeCaches {
		return ""
	}
	for _, de := range des {
		if slices.Contains(opts.ExcludeIfPresent, de.Name) {
			return de.Name
		}
		if opts.ExcludeCaches && de.Name == "CACHEDIR.TAG" && de.Type.IsRegular() && validCacheTag(d, de.Name) {
			return de.Name
		}
	}
	return ""
}

func validCacheTag(d *beneath.Dir, name string) bool {
	f, err := d.Open(name, unix.O_RDONLY|unix.O_NONBLOCK, 0)
	if err != nil {
		return false
	}
	defer f.Close()
	buf := make([]byte, len(cacheDirSignature))
	n, _ := f.Read(buf)
	return string(buf[:n]) == cacheDirSignature
}

// localSignature hashes the status of every entry (a directory's own
// status included, not what lies below it) and reports whether one is
// too recent to be trusted next time.
func (w *walker) localSignature(ents []*entry) (digest.Digest, bool) {
	h := blake3.New()
	var b [128]byte
	racyAny := false
	for _, e := range ents {
		st := &e.st
		buf := appendString(b[:0], e.name)
		buf = binary.AppendUvarint(buf, uint64(st.Mode))
		buf = binary.AppendUvarint(buf, uint64(st.Uid))
		buf = binary.AppendUvarint(buf, uint64(st.Gid))
		buf = binary.AppendUvarint(buf, uint64(st.Size))
		buf = binary.AppendVarint(buf, st.Mtim.Nano())
		buf = binary.AppendVarint(buf, st.Ctim.Nano())
		buf = binary.AppendUvarint(buf, st.Ino)
		buf = binary.AppendUvarint(buf, st.Dev)
		buf = binary.AppendUvarint(buf, st.Rdev)
		buf = binary.AppendUvarint(buf, uint64(st.Nlink))
		if e.included {
			buf = append(buf, 1)
		} else {
			buf = append(buf, 0)
		}
		h.Write(buf)
		if e.typ != TypeDir && racy(st, e.listed) {
			racyAny = true
		}
	}
	var sig digest.Digest
	copy(sig[:], h.Sum(nil))
	return sig, racyAny
}

// signRoot adds the source directory's own status to the root's
// signature: the root tree carries it.
func signRoot(sig digest.Digest, st *unix.Stat_t) digest.Digest {
	b := append([]byte{}, sig[:]...)
	for _, v := range []uint64{uint64(st.Mode), uint64(st.Uid), uint64(st.Gid), uint64(st.Mtim.Nano()), uint64(st.Ctim.Nano()), st.Ino} {
		b = binary.AppendUvarint(b, v)
	}
	return digest.Of(b)
}

// fullSignature adds the trees below to a directory's local signature.
func fullSignature(local digest.Digest, ents []*entry) digest.Digest {
	b := append(make([]byte, 0, 32+len(ents)*34), local[:]...)
	for _, e := range ents {
		if e.typ == TypeDir {
			if e.keep {
				b = append(b, 1)
			} else {
				b = append(b, 0)
			}
			b = append(b, e.node.Subtree[:]...) // set when kept
		}
	}
	return digest.Of(b)
}

// racy reports whether a status is too recent to be trusted: a file
// modified this close to when it was read could change again within the
// same timestamp tick without its status changing (git's "racily clean").
//
// now is a time no later than when st was taken (a directory's entries
// share the time taken before they were listed: an earlier now only
// makes more entries racy).
func racy(st *unix.Stat_t, now int64) bool {
	window := racyWindow
	if st.Ctim.Nsec == 0 {
		// Nobody can set ctime, so whole seconds mean a file system with
		// coarse stamps.
		window = coarseRacyWindow
	}
	return now-st.Mtim.Nano() < int64(window) || now-st.Ctim.Nano() < int64(window)
}

const (
	racyWindow       = 100 * time.Millisecond
	coarseRacyWindow = 2 * time.Second
)

// matchPrevious finds, for each entry, its previous node when its status
// says it did not change; when the cache is not trusted, previous file
// contents are used only once the repository is known to hold them.
func (w *walker) matchPrevious(ctx context.Context, ents []*entry, prev *prevDir) error {
	if prev == nil || prev.tree == nil {
		return nil
	}
	var check []digest.Digest
	for _, e := range ents {
		n, x, ok := prev.node(e.name)
		if !ok || n.Type != e.typ || !sameStatus(n, x, &e.st, prev.strong) {
			continue
		}
		e.prev = n
		e.extra = x
		if !w.trusted && n.Type == TypeFile && !n.IsEmbedded() {
			check = append(check, fileObjects(n)...)
		}
	}
	if len(check) == 0 || w.s.opts.Sink == nil {
		return nil
	}
	missing, err := w.s.opts.Sink.Missing(ctx, check)
	if err != nil {
		return err
	}
	if len(missing) == 0 {
		return nil
	}
	gone := make(map[digest.Digest]bool, len(missing))
	for _, id := range missing {
		gone[id] = true
	}
	for _, e := range ents {
		if e.prev != nil && e.typ == TypeFile {
			for _, id := range fileObjects(e.prev) {
				if gone[id] {
					e.prev = nil // read and stored again
					break
				}
			}
		}
	}
	return nil
}

// fileObjects lists the objects a file node's data is in.
func fileObjects(n *Node) []digest.Digest {
	if !n.ID.IsZero() {
		return []digest.Digest{n.ID}
	}
	ids := make([]digest.Digest, len(n.Chunks))
	for i, c := range n.Chunks {
		ids[i] = c.ID
	}
	return ids
}

// sameStatus reports whether an entry whose status is st is still what
// node n (with cache extras x) describes.
func sameStatus(n *Node, x entryExtra, st *unix.Stat_t, strong bool) bool {
	if n.Mode != st.Mode&0o7777 || n.UID != st.Uid || n.GID != st.Gid || n.MtimeNs != st.Mtim.Nano() {
		return false
	}
	if strong && (x.ctime == 0 || x.ctime != st.Ctim.Nano() || x.ino != st.Ino) {
		return false
	}
	switch n.Type {
	case TypeFile:
		if n.Size != st.Size {
			return false
		}
		if linked := st.Nlink > 1; linked != n.Hardlinked() || (linked && (n.LinkIno != st.Ino || n.LinkDev != st.Dev)) {
			return false
		}
	case TypeCharDevice, TypeBlockDevice:
		return n.Rdev == st.Rdev
	}
	return true
}

// takeUnchanged fills the non-directory entries of an unchanged
// directory from its previous tree.
func (w *walker) takeUnchanged(ctx context.Context, d *beneath.Dir, ents []*entry, prev *prevDir) error {
	for _, e := range ents {
		if e.typ == TypeDir {
			continue
		}
		n, x, ok := prev.node(e.name)
		if !ok || n.Type != e.typ {
			// The signature matched but the tree does not say: read it.
			if err := w.leaf(ctx, d, e); err != nil {
				return err
			}
			continue
		}
		e.prev, e.extra = n, x
		if err := w.leaf(ctx, d, e); err != nil {
			return err
		}
	}
	return nil
}

// subdir walks a subdirectory entry and fills its node.
func (w *walker) subdir(ctx context.Context, d *beneath.Dir, e *entry, prev *prevDir) error {
	var base *Tree
	if prev != nil && !prev.strong && prev.tree != nil {
		// An incremental snapshot walks a dirty directory against the
		// base's tree, matching entries by status.
		if n, _, ok := prev.node(e.name); ok && n.Type == TypeDir {
			t, err := w.readTree(ctx, n.Subtree)
			if err != nil {
				return err
			}
			base = t
		}
	}
	if e.boundary {
		// A mount point on another file system: recorded, not entered.
		id, err := w.storeTree(ctx, &Tree{})
		if err != nil {
			return err
		}
		return w.dirNode(d, e, dirResult{id: id, selected: true})
	}
	child, err := d.OpenDir(e.name)
	if err != nil {
		if e.included || errors.Is(err, beneath.ErrSymlink) {
			w.col.add(&w.col.changed, Problem{Path: e.rel(), Err: fmt.Errorf("%w: %w", ErrChangedWhileReading, unwrapPathError(err))})
		}
		return nil
	}
	defer child.Close()
	res, err := w.walkDir(ctx, e.rel(), child, &e.st, e.included, base)
	if err != nil {
		return err
	}
	if !res.selected && !e.included {
		return nil
	}
	return w.dirNode(d, e, res)
}

// dirNode fills a directory entry's node.
func (w *walker) dirNode(d *beneath.Dir, e *entry, res dirResult) error {
	n := w.baseNode(e)
	n.Subtree, n.Below = res.id, res.below
	if e.prev != nil && e.prev.Type == TypeDir {
		n.Xattrs = e.prev.Xattrs
	} else if x, err := entryXattrs(d, e.name); err != nil {
		w.s.logger.Debug("extended attributes unreadable", "path", e.rel(), "err", err)
	} else {
		n.Xattrs = x
	}
	e.setNode(n)
	e.extra = entryExtra{ino: e.st.Ino, ctime: e.st.Ctim.Nano()}
	return nil
}

// baseNode is the metadata every node has, from an entry's status.
func (w *walker) baseNode(e *entry) Node {
	st := &e.st
	return Node{
		Name:    e.name,
		Type:    e.typ,
		Mode:    st.Mode & 0o7777,
		UID:     st.Uid,
		GID:     st.Gid,
		User:    w.s.owners.user(st.Uid),
		Group:   w.s.owners.group(st.Gid),
		MtimeNs: st.Mtim.Nano(),
	}
}

// leaf fills the node of a file, symlink or special file.
func (w *walker) leaf(ctx context.Context, d *beneath.Dir, e *entry) error {
	p := w.s.opts.Progress
	if e.prev != nil {
		if e.typ == TypeFile || e.typ == TypeSymlink {
			w.col.cachedFiles.Add(1)
			if p != nil {
				p.AddTotalBytes(e.prev.Size)
				p.AddBytes(e.prev.Size)
				p.AddSuccess(1)
			}
		}
		if e.extra.ctime == 0 || racy(&e.st, e.listed) {
			e.extra = entryExtra{}
		}
		// The previous node as it is, not a copy (see setNode).
		e.node, e.keep = e.prev, true
		return nil
	}
	switch e.typ {
	case TypeFile:
		return w.file(ctx, d, e)
	case TypeSymlink:
		target, err := d.Readlink(e.name)
		if err != nil {
			w.col.add(&w.col.unreadable, Problem{Path: e.rel(), Err: unwrapPathError(err)})
			if p != nil {
				p.AddFail(1)
			}
			return nil
		}
		if len(target) > maxTargetLength || strings.ContainsRune(target, 0) || target == "" {
			w.col.add(&w.col.unreadable, Problem{Path: e.rel(), Err: fmt.Errorf("symlink target of %d bytes cannot be stored", len(target))})
			return nil
		}
		n := w.baseNode(e)
		n.Target = target
		n.Xattrs = w.entryXattrs(d, e)
		e.setNode(n)
		e.extra = entryExtra{ino: e.st.Ino, ctime: e.st.Ctim.Nano()}
		if p != nil {
			p.AddSuccess(1)
		}
	default:
		n := w.baseNode(e)
		if e.typ == TypeCharDevice || e.typ == TypeBlockDevice {
			n.Rdev = e.st.Rdev
		}
		n.Xattrs = w.entryXattrs(d, e)
		e.setNode(n)
		e.extra = entryExtra{ino: e.st.Ino, ctime: e.st.Ctim.Nano()}
	}
	if racy(&e.st, e.listed) {
		e.extra = entryExtra{}
	}
	return nil
}

func (w *walker) entryXattrs(d *beneath.Dir, e *entry) []Xattr {
	x, err := entryXattrs(d, e.name)
	if err != nil {
		w.s.logger.Debug("extended attributes unreadable", "path", e.rel(), "err", err)
		return nil
	}
	return x
}

// finishDir builds, encodes and stores the tree of a directory whose
// entries are done, and records it in the new cache.
func (w *walker) finishDir(ctx context.Context, rel string, d *beneath.Dir, st *unix.Stat_t, included bool, ents []*entry, prev *prevDir, localSig, fullSig digest.Digest, racyEntries bool) (dirResult, error) {
	// The nodes are encoded where they are, in the entries.
	nodes := make([]*Node, 0, len(ents))
	extras := make([]entryExtra, 0, len(ents))
	var below Counts
	selected := included
	for _, e := range ents {
		if !e.keep {
			continue
		}
		selected = true
		nodes = append(nodes, e.node)
		extras = append(extras, e.extra)
		n := e.node
		below.Count(n)
		if fn := w.s.opts.OnFile; fn != nil && n.Type == TypeFile {
			fn(e.rel(), n)
		}
	}
	var self *Node
	if rel == "" {
		root := Node{Type: TypeDir, Mode: st.Mode & 0o7777, UID: st.Uid, GID: st.Gid,
			User: w.s.owners.user(st.Uid), Group: w.s.owners.group(st.Gid), MtimeNs: st.Mtim.Nano(), Below: below}
		if f, err := d.Open(".", unix.O_RDONLY|unix.O_DIRECTORY, 0); err == nil {
			root.Xattrs, _ = fileXattrs(f)
			f.Close()
		}
		self = &root
	}
	bufp := w.buffers.Get().(*[]byte)
	defer w.buffers.Put(bufp)
	encoded, err := appendTree((*bufp)[:0], self, len(nodes), func(i int) *Node { return nodes[i] })
	if err != nil {
		return dirResult{}, fmt.Errorf("tree of %q: %w", rel, err)
	}
	*bufp = encoded
	id := digest.Of(encoded)
	w.col.treesWritten.Add(1)
	if prev == nil || prev.rec == nil || prev.rec.tree != id || !w.trusted {
		if sink := w.s.opts.Sink; sink != nil {
			if err := sink.StoreTree(ctx, id, encoded); err != nil {
				return dirResult{}, fmt.Errorf("store tree of %q: %w", rel, err)
			}
		}
	}
	if racyEntries {
		localSig, fullSig = digest.Digest{}, digest.Digest{}
	}
	w.record(&dirRecord{path: rel, localSig: localSig, fullSig: fullSig, tree: id, below: below, encoded: encoded, extras: extras})
	return dirResult{id: id, below: below, selected: selected}, nil
}

// storeTree encodes and stores a tree that is not cached (an empty mount
// point).
func (w *walker) storeTree(ctx context.Context, t *Tree) (digest.Digest, error) {
	encoded, err := t.Encode()
	if err != nil {
		return digest.Digest{}, err
	}
	id := digest.Of(encoded)
	if sink := w.s.opts.Sink; sink != nil {
		if err := sink.StoreTree(ctx, id, encoded); err != nil {
			return digest.Digest{}, err
		}
	}
	return id, nil
}

func (w *walker) record(rec *dirRecord) {
	if w.newCache == nil {
		return
	}
	bufp := w.buffers.Get().(*[]byte)
	*bufp = w.newCache.put(rec, *bufp)
	w.buffers.Put(bufp)
}

// readTree reads and decodes a tree of the base backup.
func (w *walker) readTree(ctx context.Context, id digest.Digest) (*Tree, error) {
	data, err := w.s.opts.Trees.ReadTree(ctx, id)
	if err != nil {
		return nil, fmt.Errorf("base tree %s: %w", id, err)
	}
	t, err := DecodeTree(data)
	if err != nil {
		return nil, fmt.Errorf("base tree %s: %w", id, err)
	}
	return t, nil
}

// unwrapPathError drops the absolute path from an *fs.PathError, since the
// Problem already names the relative path.
func unwrapPathError(err error) error {
	if pe, ok := err.(*fs.PathError); ok {
		return fmt.Errorf("%s: %w", pe.Op, pe.Err)
	}
	return err
}

// joinRel joins a directory's path and a name ("" is the root).
func joinRel(dir, name string) string {
	if dir == "" {
		return name
	}
	return path.Join(dir, name)
}
