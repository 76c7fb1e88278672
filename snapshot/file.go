package snapshot

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/zeebo/blake3"
	"golang.org/x/sync/errgroup"
	"golang.org/x/sys/unix"

	"github.com/deltabackup/deltabackup/snapshot/beneath"
	"github.com/deltabackup/deltabackup/snapshot/digest"
	"github.com/deltabackup/deltabackup/snapshot/internal/treehash"
)

// readBufferSize is the per-worker read buffer: large reads keep syscalls
// per byte low and let BLAKE3's SIMD paths work on many chunks at once.
const readBufferSize = 1 << 20

// A file of segmentedMin bytes or more is hashed in segments of
// segmentSize bytes (complete subtrees of its BLAKE3 tree), which idle
// workers help with: one large file is hashed by every core free for it.
// Files are read into the worker's buffer, not mapped: on the AMD EPYC of
// bench/results a read copies 13 GB/s from the page cache, where faulting
// in a mapping's pages held hashing to 3.6-3.9 GB/s.
const segmentSize = 16 << 20

// A segment is read in whole buffers.
const _ uint = -(segmentSize % readBufferSize)

var segmentedMin int64 = 64 << 20 // a variable for tests

// errShrank reports a file that ended before the size it had when opened.
var errShrank = fmt.Errorf("%w: shrank while read", ErrChangedWhileReading)

// Test hooks, nil outside tests.
var (
	testHookBeforeOpen func(path string)
	testHookAfterRead  func(path string, attempt int)
)

// hasher is one worker's state: a read buffer and BLAKE3 states.
type hasher struct {
	buf []byte
	// h hashes small inputs, and large ones unless the CPU has AVX-512,
	// where tree does (see kernel.go). Both compute the same BLAKE3.
	h    *blake3.Hasher
	tree *treehash.Hasher
	// whole is the file's entire data when the last read took it in one
	// piece (a slice of buf, valid until the next read), else nil.
	whole []byte
}

func newHasher() *hasher {
	return &hasher{buf: make([]byte, readBufferSize), h: blake3.New(), tree: treehash.New()}
}

// file fills the node of a regular file whose status changed (or is not
// known): it reads and hashes the file, stores its content through the
// Sink, and on a file that keeps changing reports it and leaves it out.
func (w *walker) file(ctx context.Context, d *beneath.Dir, e *entry) error {
	p := w.s.opts.Progress
	if e.lazy {
		// Its status comes with the open; a file with several names
		// turns out so only then, and goes the way of hard links.
		if err := w.readFile(ctx, d, e); !errors.Is(err, errHardLink) {
			return err
		}
	}
	if e.st.Nlink > 1 {
		// One read per inode: the other names take the first's result.
		k := linkKey{dev: e.st.Dev, ino: e.st.Ino, ctime: e.st.Ctim.Nano(), mtime: e.st.Mtim.Nano(), size: e.st.Size}
		v, _ := w.links.LoadOrStore(k, &linkResult{})
		lr := v.(*linkResult)
		first := false
		lr.once.Do(func() {
			first = true
			lr.err = w.readFile(ctx, d, e)
			if e.node != nil {
				lr.node = *e.node
			}
			lr.extra = e.extra
			if !e.keep && lr.err == nil {
				lr.err = errLeftOut
			}
		})
		if first {
			return ignoreLeftOut(lr.err)
		}
		if lr.err != nil {
			if errors.Is(lr.err, errLeftOut) {
				w.col.add(&w.col.changed, Problem{Path: e.rel(), Err: fmt.Errorf("%w: another name of the same file could not be read", ErrChangedWhileReading)})
				if p != nil {
					p.AddFail(1)
				}
				return nil
			}
			return lr.err
		}
		n := lr.node
		n.Name = e.name
		e.setNode(n)
		e.extra = lr.extra
		w.col.cachedFiles.Add(1)
		if p != nil {
			p.AddTotalBytes(n.Size)
			p.AddBytes(n.Size)
			p.AddSuccess(1)
		}
		return nil
	}
	return w.readFile(ctx, d, e)
}

var errLeftOut = errors.New("left out")

// errHardLink: a file opened without a status from the listing has
// several names; it is read through the hard-link path instead.
var errHardLink = errors.New("several names")

func ignoreLeftOut(err error) error {
	if errors.Is(err, errLeftOut) {
		return nil
	}
	return err
}

func (w *walker) readFile(ctx context.Context, d *beneath.Dir, e *entry) error {
	s := w.s
	p := s.opts.Progress
	dir, name := d, e.name
	if w.stage != nil {
		rel := e.rel()
		if _, err := w.stage.add(rel, d, e.name, &e.st); err != nil {
			w.col.add(&w.col.unreadable, Problem{Path: rel, Err: fmt.Errorf("stage into %s: %w", w.stage.dir.Name(), unwrapPathError(err))})
			if p != nil {
				p.AddFail(1)
			}
			return nil
		}
		// Read what was staged, not the live file the database may replace.
		dir, name = w.stage.dir, rel
	}
	h := w.hashers.Get().(*hasher)
	defer w.hashers.Put(h)
	for attempt := 0; ; attempt++ {
		err := w.readOnce(ctx, h, dir, name, e, attempt)
		if err == nil {
			if p != nil {
				p.AddSuccess(1)
			}
			return nil
		}
		if errors.Is(err, errHardLink) {
			return err
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if !errors.Is(err, ErrChangedWhileReading) {
			var fatal *sinkError
			if errors.As(err, &fatal) {
				return fatal.err
			}
			s.logger.Warn("file unreadable, skipped", "path", e.rel(), "err", err)
			w.col.add(&w.col.unreadable, Problem{Path: e.rel(), Err: unwrapPathError(err)})
			if p != nil {
				p.AddFail(1)
			}
			return nil
		}
		if attempt >= s.opts.ChangeRetries {
			s.logger.Warn("file kept changing while read, left out of the backup", "path", e.rel(), "attempts", attempt+1)
			w.col.add(&w.col.changed, Problem{Path: e.rel(), Err: err})
			if p != nil {
				p.AddFail(1)
			}
			return nil
		}
		s.logger.Debug("file changed while read, reading again", "path", e.rel(), "attempt", attempt+1)
	}
}

// sinkError carries an error of the Sink that must stop the snapshot.
type sinkError struct{ err error }

func (e *sinkError) Error() string { return e.err.Error() }

// readOnce reads, hashes and stores one file once, checking with fstat
// before and after that what was read is the content of one unchanged
// file.
func (w *walker) readOnce(ctx context.Context, h *hasher, dir *beneath.Dir, name string, e *entry, attempt int) error {
	s := w.s
	path := dir.Name() + "/" + name
	if testHookBeforeOpen != nil {
		testHookBeforeOpen(path)
	}
	// O_NONBLOCK: a FIFO swapped in must not hang the worker.
	f, err := dir.OpenRead(name)
	if err != nil {
		if errors.Is(err, beneath.ErrSymlink) {
			return fmt.Errorf("%w: no longer a regular file (a symlink)", ErrChangedWhileReading)
		}
		return err
	}
	defer f.Close()
	readStart := time.Now().UnixNano()
	before, err := f.Stat()
	if err != nil {
		return err
	}
	if before.Mode&unix.S_IFMT != unix.S_IFREG {
		return fmt.Errorf("%w: no longer a regular file", ErrChangedWhileReading)
	}
	switch {
	case dir == w.stageDir():
		// The staged link is the source's inode: its status is the status.
	case e.lazy:
		// Not stat'ed when listed: this is its status.
		e.st, e.lazy = before, false
		if before.Nlink > 1 {
			return errHardLink
		}
	case before.Ino != e.st.Ino || before.Dev != e.st.Dev:
		return fmt.Errorf("%w: replaced since it was listed", ErrChangedWhileReading)
	}
	size := before.Size
	var ranges []Range
	if size > 0 && before.Blocks*512 < size {
		if ranges, err = DataRanges(f, size); err != nil {
			return err
		}
	}
	sparse := ranges != nil
	n := w.baseNode(e)
	n.Mode, n.UID, n.GID, n.MtimeNs = before.Mode&0o7777, before.Uid, before.Gid, before.Mtim.Nano()
	n.User, n.Group = s.owners.user(before.Uid), s.owners.group(before.Gid)
	n.Size, n.Sparse, n.Data = size, sparse, ranges
	if before.Nlink > 1 {
		n.LinkDev, n.LinkIno = before.Dev, before.Ino
	}
	if x, err := fileXattrs(f); err != nil {
		s.logger.Debug("extended attributes unreadable", "path", e.rel(), "err", err)
	} else {
		n.Xattrs = x
	}
	dataSize := n.DataSize()
	embed := dataSize <= s.opts.EmbedThreshold
	var id digest.Digest
	var chunks []Chunk
	var read int64
	switch {
	case s.chunkers != nil && !s.readOnly && !embed && dataSize >= s.opts.Chunking.Threshold:
		chunks, read, err = w.chunkFile(ctx, h, newDataReader(f, size, sparse, ranges), e.rel(), dataSize)
	case sparse:
		id, read, err = h.hashReader(ctx, newDataReader(f, size, true, ranges), embed && !s.readOnly)
	case size >= segmentedMin && !s.readOnly && !embed && useAVX512Kernel: // zeebo's Hasher hashes one stream only
		id, read, err = w.hashSegmented(ctx, h, f, path, attempt, size)
	default:
		id, read, err = h.hashRead(ctx, f, path, attempt, size, s.readOnly)
	}
	if err != nil {
		return err
	}
	w.col.hashedBytes.Add(read)
	w.col.hashedFiles.Add(1)
	after, err := f.Stat()
	if err != nil {
		return err
	}
	if after.Size != before.Size || after.Mtim != before.Mtim || after.Ctim != before.Ctim || read != dataSize {
		h.whole = nil
		return fmt.Errorf("%w (read %d bytes, size %d then %d)", ErrChangedWhileReading, read, before.Size, after.Size)
	}
	if p := s.opts.Progress; p != nil {
		p.AddTotalBytes(size)
		p.AddBytes(size)
	}
	switch {
	case chunks != nil:
		n.Chunks = chunks
	case embed:
		if sparse {
			n.Embedded = append([]byte{}, h.whole...)
		} else {
			n.Embedded = append([]byte{}, h.whole[:dataSize]...)
		}
	default:
		n.ID = id
		if sink := s.opts.Sink; sink != nil && !s.readOnly {
			c := &Content{ID: id, Size: dataSize, Bundled: dataSize < s.opts.MinDeltaFileSize, Path: e.rel(),
				Open: func() io.Reader { return newDataReader(f, size, sparse, ranges) }}
			if !sparse && h.whole != nil && int64(len(h.whole)) == dataSize {
				c.Data = h.whole
			}
			if err := store(ctx, sink, c); err != nil {
				return err
			}
		}
	}
	e.setNode(n)
	e.extra = entryExtra{ino: before.Ino, ctime: before.Ctim.Nano()}
	if racy(&before, readStart) {
		e.extra = entryExtra{}
	}
	return nil
}

func (w *walker) stageDir() *beneath.Dir {
	if w.stage == nil {
		return nil
	}
	return w.stage.dir
}

// hashRead reads a file through the worker's buffer. A file that fits is
// read with one call of size+1 bytes: a short read of a regular file means
// its end, so no second call is needed to see EOF. The whole content of a
// file read in one piece stays in h.whole.
func (h *hasher) hashRead(ctx context.Context, f io.Reader, path string, attempt int, size int64, readOnly bool) (digest.Digest, int64, error) {
	sum := h.stream(size)
	h.whole = nil
	var n int64
	for first := true; ; first = false {
		if err := ctx.Err(); err != nil {
			return digest.Digest{}, 0, err
		}
		buf := h.buf
		if first && size < int64(len(buf)) {
			buf = buf[:size+1]
		}
		k, err := f.Read(buf)
		if k > 0 {
			if !readOnly {
				_, _ = sum.Write(buf[:k])
			}
			n += int64(k)
		}
		if first && int64(k) == size && (err == io.EOF || (err == nil && len(buf) == int(size)+1)) {
			h.whole = buf[:k] // the whole file in one read
			break
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			return digest.Digest{}, 0, err
		}
		if testHookAfterRead != nil && first {
			testHookAfterRead(path, attempt)
		}
	}
	var id digest.Digest
	sum.Sum(id[:0])
	return id, n, nil
}

// streamHash is what hashes a file read in pieces: zeebo's Hasher or the
// tree hasher.
type streamHash interface {
	io.Writer
	Sum([]byte) []byte
	Reset()
}

// stream returns the worker's BLAKE3 for a file of size bytes, reset:
// the faster kernel's for its size (kernel.go; below a block of 16 KiB
// zeebo's, as digest.Of decides for data in memory).
func (h *hasher) stream(size int64) streamHash {
	var s streamHash = h.h
	if size >= treehash.BlockSize && useAVX512Kernel {
		s = h.tree
	}
	s.Reset()
	return s
}

// hashReader hashes what r gives (the data ranges of a sparse file);
// with keep, the data is kept in h.whole (embedded files only).
func (h *hasher) hashReader(ctx context.Context, r io.Reader, keep bool) (digest.Digest, int64, error) {
	h.h.Reset()
	h.whole = nil
	var n int64
	var kept []byte
	for {
		if err := ctx.Err(); err != nil {
			return digest.Digest{}, 0, err
		}
		k, err := r.Read(h.buf)
		if k > 0 {
			h.h.Write(h.buf[:k])
			if keep && len(kept) < MaxEmbeddedSize {
				kept = append(kept, h.buf[:k]...)
			}
			n += int64(k)
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			if errors.Is(err, io.ErrUnexpectedEOF) {
				return digest.Digest{}, 0, errShrank
			}
			return digest.Digest{}, 0, err
		}
	}
	if keep {
		h.whole = kept
		if kept == nil {
			h.whole = []byte{}
		}
	}
	var id digest.Digest
	copy(id[:], h.h.Sum(nil))
	return id, n, nil
}

// hashSegmented hashes a large file (not sparse) with the tree hasher:
// its whole segments as tasks of runAll, so whichever workers are free
// join in, each reading its segment with pread into a buffer of its own;
// then the rest in this goroutine. The caller compares the file's status
// before and after.
func (w *walker) hashSegmented(ctx context.Context, h *hasher, f *beneath.File, path string, attempt int, size int64) (digest.Digest, int64, error) {
	h.whole = nil
	segments := int(treehash.LastBlockStart(size) / segmentSize) // none holds the last block
	cvs := make([][8]uint32, segments)
	tasks := make([]func() error, segments)
	for i := range tasks {
		tasks[i] = func() error {
			lane := w.hashers.Get().(*hasher)
			defer w.hashers.Put(lane)
			cv, err := lane.segment(ctx, f, int64(i)*segmentSize)
			cvs[i] = cv
			if err == nil && i == 0 && testHookAfterRead != nil {
				testHookAfterRead(path, attempt)
			}
			return err
		}
	}
	var g errgroup.Group
	w.runAll(&g, tasks)
	if err := g.Wait(); err != nil {
		return digest.Digest{}, 0, err
	}
	h.tree.Reset()
	for _, cv := range cvs {
		h.tree.Push(cv, segmentSize/treehash.ChunkSize)
	}
	read := int64(segments) * segmentSize
	for read < size {
		if err := ctx.Err(); err != nil {
			return digest.Digest{}, 0, err
		}
		k, err := f.ReadAt(h.buf[:min(int64(len(h.buf)), size-read)], read)
		_, _ = h.tree.Write(h.buf[:k])
		read += int64(k)
		if err == io.EOF {
			return digest.Digest{}, 0, errShrank
		}
		if err != nil {
			return digest.Digest{}, 0, err
		}
	}
	var id digest.Digest
	h.tree.Sum(id[:0])
	return id, read, nil
}

// segment returns the chaining value of the segment of f at off.
func (h *hasher) segment(ctx context.Context, f *beneath.File, off int64) ([8]uint32, error) {
	h.tree.ResetAt(uint64(off / treehash.ChunkSize))
	for pos := off; pos < off+segmentSize; pos += int64(len(h.buf)) {
		if err := ctx.Err(); err != nil {
			return [8]uint32{}, err
		}
		k, err := f.ReadAt(h.buf, pos)
		if err == io.EOF {
			return [8]uint32{}, errShrank
		}
		if err != nil {
			return [8]uint32{}, err
		}
		h.tree.WriteBlocks(h.buf[:k])
	}
	return h.tree.Subtree(), nil
}
