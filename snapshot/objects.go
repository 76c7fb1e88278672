package snapshot

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"syscall"

	"github.com/zeebo/blake3"

	"github.com/deltabackup/deltabackup/snapshot/beneath"
	"github.com/deltabackup/deltabackup/snapshot/digest"
)

// ErrUnavailable is what Objects.Open returns for content it does not
// know, or whose file changed since it was hashed.
var ErrUnavailable = errors.New("object not available")

// Objects serves the contents of a directory by hexdigest, using a
// snapshot of it to know which file holds which content: what a node
// offers its peers. A file is served only while its size and mtime are
// those of the snapshot, and its bytes are hashed while they are read, so
// a file that changed is answered "unavailable" or its transfer fails;
// wrong bytes are never passed on as good.
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
}

// NewObjects indexes the files of a snapshot result.
func NewObjects(res *Result) (*Objects, error) {
	o := &Objects{}
	if err := o.Update(res); err != nil {
		return nil, err
	}
	return o, nil
}

// Update replaces the index with a newer snapshot of the same directory.
func (o *Objects) Update(res *Result) error {
	dir, err := beneath.OpenRoot(res.ReadRoot)
	if err != nil {
		return err
	}
	byHash := make(map[digest.Digest]objectFile, len(res.Manifest.Hashes))
	for _, f := range res.Manifest.Files {
		if f.Embedded() {
			continue
		}
		if _, dup := byHash[f.Hexdigest]; !dup {
			byHash[f.Hexdigest] = objectFile{rel: f.RelativePath, size: f.FileSize, mtimeNs: f.MtimeNs}
		}
	}
	o.mu.Lock()
	old := o.dir
	o.root, o.dir, o.byHash = res.ReadRoot, dir, byHash
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

// Has returns the sizes of the hexdigests the snapshot knows.
func (o *Objects) Has(ctx context.Context, hexdigests []digest.Digest) (map[digest.Digest]int64, error) {
	o.mu.RLock()
	defer o.mu.RUnlock()
	out := map[digest.Digest]int64{}
	for _, h := range hexdigests {
		if f, ok := o.byHash[h]; ok {
			out[h] = f.size
		}
	}
	return out, nil
}

// Open returns a reader of the content hexdigest from the file that held
// it, and its size. The reader fails, rather than ends, if what it read
// does not hash to hexdigest or the file changed meanwhile.
func (o *Objects) Open(ctx context.Context, hexdigest digest.Digest) (io.ReadCloser, int64, error) {
	o.mu.RLock()
	f, ok := o.byHash[hexdigest]
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
	file, err := dir.Open(f.rel, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	dir.Close()
	if err != nil {
		return nil, 0, fmt.Errorf("%w: %s: %v", ErrUnavailable, f.rel, unwrapPathError(err))
	}
	var st syscall.Stat_t
	if err := syscall.Fstat(int(file.Fd()), &st); err != nil || st.Mode&syscall.S_IFMT != syscall.S_IFREG ||
		st.Size != f.size || st.Mtim.Nano() != f.mtimeNs {
		file.Close()
		return nil, 0, fmt.Errorf("%w: %s changed since it was hashed", ErrUnavailable, f.rel)
	}
	return &checkedFile{f: file, want: hexdigest, size: f.size, h: blake3.New()}, f.size, nil
}

// checkedFile hashes what it reads and turns the end into an error when
// the content was not the one promised.
type checkedFile struct {
	f    *os.File
	want digest.Digest
	size int64
	read int64
	h    *blake3.Hasher
}

func (c *checkedFile) Read(p []byte) (int, error) {
	if int64(len(p)) > c.size-c.read+1 {
		p = p[:c.size-c.read+1]
	}
	n, err := c.f.Read(p)
	c.h.Write(p[:n])
	c.read += int64(n)
	if c.read > c.size {
		return n, fmt.Errorf("%w: file grew while it was read", ErrUnavailable)
	}
	if err == io.EOF {
		if c.read != c.size || digest.Digest(c.h.Sum(nil)) != c.want {
			return n, fmt.Errorf("%w: file changed while it was read", ErrUnavailable)
		}
	}
	return n, err
}

func (c *checkedFile) Close() error { return c.f.Close() }
