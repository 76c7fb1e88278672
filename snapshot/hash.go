package snapshot

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime/debug"
	"syscall"
	"time"

	"github.com/zeebo/blake3"
	"golang.org/x/sys/unix"

	"github.com/deltabackup/deltabackup/snapshot/beneath"
)

// readBufferSize is the per-worker read buffer: large reads keep syscalls
// per byte low and let BLAKE3's SIMD paths work on many chunks at once.
const readBufferSize = 1 << 20

// racyWindow: a file modified this close to when we read it could be
// modified again within the same timestamp tick without its stat changing,
// so its stat-cache entry is not kept (git's "racily clean" problem).
const (
	racyWindow       = 100 * time.Millisecond
	coarseRacyWindow = 2 * time.Second
)

// Test hooks, nil outside tests.
var (
	testHookBeforeOpen func(path string)
	testHookAfterRead  func(path string, attempt int)
)

// hasher is one worker: it owns a read buffer and a BLAKE3 state.
type hasher struct {
	s   *Snapshotter
	col *collector
	buf []byte
	// h is fastest on small inputs; tree uses the AVX-512 kernels on large
	// ones. Both compute the same BLAKE3.
	h    *blake3.Hasher
	tree treeHasher
	// files this worker added to the snapshot, merged when the walk ends.
	files []File
	// whole is the file's entire content when the last read took it in one
	// piece (a slice of buf, valid until the next read), else nil.
	whole []byte
}

func newHasher(s *Snapshotter, col *collector) *hasher {
	return &hasher{s: s, col: col, buf: make([]byte, readBufferSize), h: blake3.New()}
}

// handle adds one file to the snapshot. Problems with the file are
// recorded and not returned; an error means the snapshot must stop.
func (w *hasher) handle(ctx context.Context, job fileJob) error {
	f, problem := w.file(ctx, job)
	p := w.s.opts.Progress
	if problem != nil {
		if p != nil {
			p.AddFail(1)
		}
		return nil
	}
	if fn := w.s.opts.OnContent; fn != nil && w.whole != nil && !f.Embedded() {
		if err := fn(ctx, f, w.whole); err != nil {
			return err
		}
	}
	w.files = append(w.files, f)
	if p != nil {
		p.AddBytes(f.FileSize)
		p.AddSuccess(1)
	}
	return nil
}

// file returns the manifest entry of one regular file, or records why it
// cannot have one.
func (w *hasher) file(ctx context.Context, job fileJob) (File, error) {
	s := w.s
	dir, name := job.dir, job.name
	w.whole = nil
	// The stat is needed only to stage the file or to ask the stat cache;
	// in a first backup the file is just opened (and fstat'ed) once.
	if s.stage != nil || (s.opts.Cache != nil && s.opts.Cache.has(job.rel)) {
		st, err := dir.Fstatat(name)
		if err != nil {
			s.logger.Warn("file unreadable, skipped", "path", job.rel, "err", err)
			w.col.add(&w.col.unreadable, Problem{Path: job.rel, Err: unwrapPathError(err)})
			return File{}, err
		}
		if st.Mode&unix.S_IFMT != unix.S_IFREG {
			err := fmt.Errorf("%w: no longer a regular file", ErrChangedWhileReading)
			w.col.add(&w.col.changed, Problem{Path: job.rel, Err: err})
			return File{}, err
		}
		if s.stage != nil {
			staged, err := s.stage.add(job.rel, dir, name, &st)
			if err != nil {
				w.col.add(&w.col.unreadable, Problem{Path: job.rel, Err: fmt.Errorf("stage into %s: %w", s.stage.dir.Name(), unwrapPathError(err))})
				return File{}, err
			}
			st = staged
		}
		fs := statFromUnix(&st)
		if s.opts.Cache != nil {
			if e, ok := s.opts.Cache.lookup(job.rel, fs); ok && (!s.embeds(fs.size) || int64(len(e.content)) == fs.size) {
				s.opts.Cache.record(job.rel, e)
				w.col.cachedFiles.Add(1)
				if p := s.opts.Progress; p != nil {
					p.AddTotalBytes(fs.size)
				}
				return s.newFile(job.rel, fs, st.Mode&0o7777, e.digest, e.content), nil
			}
		}
	}
	if s.stage != nil {
		// Read what was staged, not the live file the database may replace.
		dir, name = s.stage.dir, job.rel
	}
	for attempt := 0; ; attempt++ {
		entry, mode, err := w.read(ctx, dir, name, attempt)
		if err == nil {
			if p := s.opts.Progress; p != nil {
				p.AddTotalBytes(entry.stat.size)
			}
			if s.opts.Cache != nil && !racy(entry.stat) {
				s.opts.Cache.record(job.rel, entry)
			}
			return s.newFile(job.rel, entry.stat, mode, entry.digest, entry.content), nil
		}
		if !errors.Is(err, ErrChangedWhileReading) {
			s.logger.Warn("file unreadable, skipped", "path", job.rel, "err", err)
			w.col.add(&w.col.unreadable, Problem{Path: job.rel, Err: unwrapPathError(err)})
			return File{}, err
		}
		if attempt >= s.opts.ChangeRetries {
			s.logger.Warn("file kept changing while read, left out of the backup", "path", job.rel, "attempts", attempt+1)
			w.col.add(&w.col.changed, Problem{Path: job.rel, Err: err})
			return File{}, err
		}
		s.logger.Debug("file changed while read, reading again", "path", job.rel, "attempt", attempt+1)
	}
}

// racy reports whether a stat is too recent to be trusted by the cache.
func racy(st fileStat) bool {
	window := racyWindow
	if st.ctimeNs%int64(time.Second) == 0 {
		// Nobody can set ctime, so whole seconds mean a file system with
		// coarse stamps (mtime may be whole seconds just because a tool
		// set it so).
		window = coarseRacyWindow
	}
	now := time.Now().UnixNano()
	return now-st.mtimeNs < int64(window) || now-st.ctimeNs < int64(window)
}

// Files of at least mmapMin bytes are hashed from memory mappings of
// mmapWindow bytes (a multiple of the tree hasher's block) with the
// AVX-512-capable tree hasher: no copy into a buffer, and each window is
// unmapped after use so the mapped file does not count against resident
// memory.
const (
	mmapMin    = 1 << 20
	mmapWindow = 16 << 20
)

// read hashes one file, checking with fstat before and after that the
// content read is the content of one unchanged file.
func (w *hasher) read(ctx context.Context, dir *beneath.Dir, name string, attempt int) (cacheEntry, uint32, error) {
	path := dir.Name() + "/" + name
	if testHookBeforeOpen != nil {
		testHookBeforeOpen(path)
	}
	// O_NONBLOCK: a FIFO swapped in must not hang the worker.
	f, err := dir.Open(name, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		if errors.Is(err, beneath.ErrSymlink) {
			return cacheEntry{}, 0, fmt.Errorf("%w: no longer a regular file (a symlink)", ErrChangedWhileReading)
		}
		return cacheEntry{}, 0, err
	}
	defer f.Close()
	var before syscall.Stat_t
	if err := syscall.Fstat(int(f.Fd()), &before); err != nil {
		return cacheEntry{}, 0, err
	}
	if before.Mode&syscall.S_IFMT != syscall.S_IFREG {
		return cacheEntry{}, 0, fmt.Errorf("%w: no longer a regular file", ErrChangedWhileReading)
	}
	st := statFromSys(&before)
	e := cacheEntry{stat: st}
	var n int64
	if st.size >= mmapMin && !w.s.readOnly && !w.s.embeds(st.size) {
		n, err = w.hashMapped(ctx, f, attempt, st.size, &e)
	} else {
		n, err = w.hashRead(ctx, f, path, attempt, st.size, &e)
	}
	if err != nil {
		return cacheEntry{}, 0, err
	}
	w.col.hashedBytes.Add(n)
	w.col.hashedFiles.Add(1)
	var after syscall.Stat_t
	if err := syscall.Fstat(int(f.Fd()), &after); err != nil {
		return cacheEntry{}, 0, err
	}
	if statFromSys(&after) != st || n != st.size {
		w.whole = nil
		return cacheEntry{}, 0, fmt.Errorf("%w (read %d bytes, size %d then %d)", ErrChangedWhileReading, n, st.size, after.Size)
	}
	return e, before.Mode & 0o7777, nil
}

// hashRead reads a file through the worker's buffer. A file that fits is
// read with one call of size+1 bytes: a short read of a regular file means
// its end, so no second call is needed to see EOF.
func (w *hasher) hashRead(ctx context.Context, f *os.File, path string, attempt int, size int64, e *cacheEntry) (int64, error) {
	embed := w.s.embeds(size)
	w.h.Reset()
	w.whole = nil
	var n int64
	for first := true; ; first = false {
		if err := ctx.Err(); err != nil {
			return 0, err
		}
		buf := w.buf
		if first && size < int64(len(buf)) {
			buf = buf[:size+1]
		}
		k, err := f.Read(buf)
		if k > 0 {
			if !w.s.readOnly {
				w.h.Write(buf[:k])
			}
			if embed && n+int64(k) <= size {
				e.content = append(e.content, buf[:k]...)
			}
			n += int64(k)
		}
		if first && int64(k) == size && (err == io.EOF || (err == nil && len(buf) == int(size)+1)) {
			w.whole = buf[:k] // the whole file in one read
			break
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			return 0, err
		}
		if testHookAfterRead != nil && first {
			testHookAfterRead(path, attempt)
		}
	}
	copy(e.digest[:], w.h.Sum(nil))
	if embed && e.content == nil {
		e.content = []byte{}
	}
	return n, nil
}

// hashMapped hashes a large file from read-only memory mappings. A file
// truncated while mapped raises SIGBUS; SetPanicOnFault turns that into a
// panic recovered here and reported as a change, never a crash.
func (w *hasher) hashMapped(ctx context.Context, f *os.File, attempt int, size int64, e *cacheEntry) (n int64, err error) {
	old := debug.SetPanicOnFault(true)
	defer debug.SetPanicOnFault(old)
	var mapped []byte
	defer func() {
		if r := recover(); r != nil {
			if mapped != nil {
				_ = unix.Munmap(mapped)
			}
			n, err = 0, fmt.Errorf("%w: fault while reading a mapping (truncated?)", ErrChangedWhileReading)
		}
	}()
	w.tree.reset()
	cut := lastBlockStart(size)
	for off := int64(0); off < size; off += mmapWindow {
		if err := ctx.Err(); err != nil {
			return 0, err
		}
		length := min(mmapWindow, size-off)
		mapped, err = unix.Mmap(int(f.Fd()), off, int(length), unix.PROT_READ, unix.MAP_SHARED)
		if err != nil {
			return 0, fmt.Errorf("map %d bytes at %d: %w", length, off, err)
		}
		_ = unix.Madvise(mapped, unix.MADV_SEQUENTIAL)
		if off+length <= cut {
			w.tree.writeBlocks(mapped)
		} else {
			w.tree.writeBlocks(mapped[:cut-off])
			e.digest = w.tree.finish(mapped[cut-off:])
		}
		if err := unix.Munmap(mapped); err != nil {
			return 0, err
		}
		mapped = nil
		n += length
		if testHookAfterRead != nil && off == 0 {
			testHookAfterRead(f.Name(), attempt)
		}
	}
	return n, nil
}
