package snapshot

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"syscall"

	"github.com/deltabackup/deltabackup/snapshot/beneath"
	"github.com/deltabackup/deltabackup/snapshot/digest"
)

// ErrUnavailable is what Objects.Open returns for content it does not
// know, or whose file changed since it was hashed.
var ErrUnavailable = errors.New("object not available")

// Objects serves the contents of a directory by id, using a snapshot of
// it to know which file holds which content: what a node offers its
// peers. A file is served only while its size and mtime are those of the
// snapshot, and its bytes are hashed while they are read, so a file that
// changed is answered "unavailable" or its transfer fails; wrong bytes
// are never passed on as good.
type Objects struct {
	mu     sync.RWMutex
	root   string
	dir    *beneath.Dir // root, opened at Update; files are opened below it without following links
	byHash map[digest.Digest]objectFile
}

type objectFile struct {
	rel     string
	size    int64
	mtimeNs int64
	layout  []Range // where the file's data lies (DataLayout)
	// off and length place the content in the file's data: the whole of
	// it, or one chunk.
	off, length int64
}

// ObjectIndex collects which file holds which content while a snapshot
// runs (its Add is an Options.OnFile).
type ObjectIndex struct {
	mu     sync.Mutex
	byHash map[digest.Digest]objectFile
}

// NewObjectIndex returns an empty index.
func NewObjectIndex() *ObjectIndex {
	return &ObjectIndex{byHash: map[digest.Digest]objectFile{}}
}

// Add records a file of the snapshot.
func (x *ObjectIndex) Add(rel string, n *Node) {
	if n.ID.IsZero() && len(n.Chunks) == 0 {
		return // embedded
	}
	f := objectFile{rel: rel, size: n.Size, mtimeNs: n.MtimeNs, layout: DataLayout(n)}
	x.mu.Lock()
	defer x.mu.Unlock()
	if !n.ID.IsZero() {
		f.length = n.DataSize()
		if _, dup := x.byHash[n.ID]; !dup {
			x.byHash[n.ID] = f
		}
		return
	}
	// Each chunk is served from its place in the file.
	for _, c := range n.Chunks {
		if _, dup := x.byHash[c.ID]; !dup {
			cf := f
			cf.length = c.Size
			x.byHash[c.ID] = cf
		}
		f.off += c.Size
	}
}

// NewObjects serves the files of index from the directory root (the
// snapshot's ReadRoot).
func NewObjects(root string, index *ObjectIndex) (*Objects, error) {
	o := &Objects{}
	if err := o.Update(root, index); err != nil {
		return nil, err
	}
	return o, nil
}

// Update replaces the index with a newer snapshot of the same directory.
func (o *Objects) Update(root string, index *ObjectIndex) error {
	dir, err := beneath.OpenRoot(root)
	if err != nil {
		return err
	}
	index.mu.Lock()
	byHash := index.byHash
	index.mu.Unlock()
	o.mu.Lock()
	old := o.dir
	o.root, o.dir, o.byHash = root, dir, byHash
	o.mu.Unlock()
	if old != nil {
		old.Close()
	}
	return nil
}

// Close releases the directory handle.
func (o *Objects) Close() error {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.dir == nil {
		return nil
	}
	err := o.dir.Close()
	o.dir = nil
	return err
}

// Name describes the directory.
func (o *Objects) Name() string {
	o.mu.RLock()
	defer o.mu.RUnlock()
	return "directory " + o.root
}

// Count is the number of distinct contents known.
func (o *Objects) Count() int64 {
	o.mu.RLock()
	defer o.mu.RUnlock()
	return int64(len(o.byHash))
}

// Has returns the sizes of the ids the snapshot knows.
func (o *Objects) Has(ctx context.Context, ids []digest.Digest) (map[digest.Digest]int64, error) {
	o.mu.RLock()
	defer o.mu.RUnlock()
	out := map[digest.Digest]int64{}
	for _, id := range ids {
		if f, ok := o.byHash[id]; ok {
			out[id] = f.length
		}
	}
	return out, nil
}

// Open returns a reader of the content id from the file that held it,
// and its size. The reader fails, rather than ends, if what it read does
// not hash to id or the file changed meanwhile.
func (o *Objects) Open(ctx context.Context, id digest.Digest) (io.ReadCloser, int64, error) {
	o.mu.RLock()
	f, ok := o.byHash[id]
	dir := o.dir
	if ok && dir != nil {
		dir.Acquire()
	}
	o.mu.RUnlock()
	if !ok || dir == nil {
		return nil, 0, ErrUnavailable
	}
	// No symbolic link is followed in any component: a directory swapped
	// for a link since the snapshot makes the file unavailable.
	file, err := dir.OpenRead(f.rel)
	dir.Close()
	if err != nil {
		return nil, 0, fmt.Errorf("%w: %s: %w", ErrUnavailable, f.rel, unwrapPathError(err))
	}
	st, err := file.Stat()
	if err != nil || st.Mode&syscall.S_IFMT != syscall.S_IFREG ||
		st.Size != f.size || st.Mtim.Nano() != f.mtimeNs {
		file.Close()
		return nil, 0, fmt.Errorf("%w: %s changed since it was hashed", ErrUnavailable, f.rel)
	}
	return &checkedFile{f: file, r: RangeReader(file, FileRanges(f.layout, f.off, f.length)), want: id, size: f.length, h: digest.NewHasher()}, f.length, nil
}

// checkedFile hashes what it reads and turns the end into an error when
// the content was not the one promised.
type checkedFile struct {
	f    *beneath.File
	r    io.Reader
	want digest.Digest
	size int64
	read int64
	h    *digest.Hasher
}

func (c *checkedFile) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.h.Write(p[:n])
	c.read += int64(n)
	if err == io.EOF {
		if c.read != c.size || digest.Digest(c.h.Sum(nil)) != c.want {
			return n, fmt.Errorf("%w: file changed while it was read", ErrUnavailable)
		}
	}
	if err != nil && err != io.EOF {
		return n, fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	return n, err
}

func (c *checkedFile) Close() error { return c.f.Close() }
