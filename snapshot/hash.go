package snapshot

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/zeebo/blake3"
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
	h   *blake3.Hasher
}

func newHasher(s *Snapshotter, col *collector) *hasher {
	return &hasher{s: s, col: col, buf: make([]byte, readBufferSize), h: blake3.New()}
}

func (w *hasher) handle(ctx context.Context, job fileJob) {
	f, problem := w.file(ctx, job)
	p := w.s.opts.Progress
	if problem != nil {
		if p != nil {
			p.AddFail(1)
		}
		return
	}
	w.col.mu.Lock()
	w.col.files = append(w.col.files, f)
	w.col.mu.Unlock()
	if p != nil {
		p.AddBytes(f.FileSize)
		p.AddSuccess(1)
	}
}

// file returns the manifest entry of one regular file, or records why it
// cannot have one.
func (w *hasher) file(ctx context.Context, job fileJob) (File, error) {
	s := w.s
	readPath := filepath.Join(s.src, filepath.FromSlash(job.rel))
	info := job.info
	if s.dst != "" {
		staged, err := stage(s.src, s.dst, job.rel, info)
		if err != nil {
			w.col.add(&w.col.unreadable, Problem{Path: job.rel, Err: fmt.Errorf("stage into %s: %w", s.dst, unwrapPathError(err))})
			return File{}, err
		}
		readPath, info = filepath.Join(s.dst, filepath.FromSlash(job.rel)), staged
	}
	st := statOf(info)
	if s.opts.Cache != nil {
		if e, ok := s.opts.Cache.lookup(job.rel, st); ok && (!s.embeds(st.size) || int64(len(e.content)) == st.size) {
			s.opts.Cache.record(job.rel, e)
			w.col.cachedFiles.Add(1)
			return s.newFile(job.rel, st, unixMode(info), e.digest, e.content), nil
		}
	}
	for attempt := 0; ; attempt++ {
		entry, mode, err := w.read(ctx, readPath, attempt)
		if err == nil {
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

// read hashes one file, checking with fstat before and after that the
// content read is the content of one unchanged file.
func (w *hasher) read(ctx context.Context, path string, attempt int) (cacheEntry, uint32, error) {
	if testHookBeforeOpen != nil {
		testHookBeforeOpen(path)
	}
	f, err := openNoFollow(path)
	if err != nil {
		if errors.Is(err, syscall.ELOOP) {
			return cacheEntry{}, 0, fmt.Errorf("%w: replaced by a symlink", ErrChangedWhileReading)
		}
		return cacheEntry{}, 0, err
	}
	defer f.Close()
	before, err := f.Stat()
	if err != nil {
		return cacheEntry{}, 0, err
	}
	if !before.Mode().IsRegular() {
		return cacheEntry{}, 0, fmt.Errorf("%w: no longer a regular file", ErrChangedWhileReading)
	}
	st := statOf(before)
	embed := w.s.embeds(st.size)
	var content []byte
	w.h.Reset()
	var n int64
	for {
		if err := ctx.Err(); err != nil {
			return cacheEntry{}, 0, err
		}
		k, err := f.Read(w.buf)
		if k > 0 {
			w.h.Write(w.buf[:k])
			if embed && n+int64(k) <= st.size {
				content = append(content, w.buf[:k]...)
			}
			n += int64(k)
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			return cacheEntry{}, 0, err
		}
		if testHookAfterRead != nil && n == int64(k) {
			testHookAfterRead(path, attempt)
		}
	}
	w.col.hashedBytes.Add(n)
	w.col.hashedFiles.Add(1)
	after, err := f.Stat()
	if err != nil {
		return cacheEntry{}, 0, err
	}
	if statOf(after) != st || n != st.size {
		return cacheEntry{}, 0, fmt.Errorf("%w (read %d bytes, size %d then %d)", ErrChangedWhileReading, n, st.size, after.Size())
	}
	e := cacheEntry{stat: st}
	copy(e.digest[:], w.h.Sum(nil))
	if embed {
		e.content = content
		if content == nil {
			e.content = []byte{}
		}
	}
	return e, unixMode(before), nil
}

// stage makes dst/rel the same file as src/rel: a hard link, or a copy
// when linking is impossible (another file system, no permission). It
// returns the lstat of the staged file.
func stage(src, dst, rel string, srcInfo os.FileInfo) (os.FileInfo, error) {
	from := filepath.Join(src, filepath.FromSlash(rel))
	to := filepath.Join(dst, filepath.FromSlash(rel))
	if existing, err := os.Lstat(to); err == nil {
		if sameFile(existing, srcInfo) {
			return existing, nil
		}
		if existing.Mode().IsRegular() && existing.Size() == srcInfo.Size() && existing.ModTime().Equal(srcInfo.ModTime()) && unixMode(existing) == unixMode(srcInfo) {
			return existing, nil // an up-to-date copy from an earlier run
		}
		if existing.IsDir() {
			if err := os.RemoveAll(to); err != nil {
				return nil, err
			}
		} else if err := os.Remove(to); err != nil {
			return nil, err
		}
	}
	if err := os.MkdirAll(filepath.Dir(to), 0o700); err != nil {
		return nil, err
	}
	if err := os.Link(from, to); err != nil {
		if err := copyFile(from, to, srcInfo); err != nil {
			return nil, err
		}
	}
	return os.Lstat(to)
}

func copyFile(from, to string, info os.FileInfo) error {
	in, err := openNoFollow(from)
	if err != nil {
		return err
	}
	defer in.Close()
	tmp := to + ".deltabackup-staging"
	out, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		os.Remove(tmp)
		return err
	}
	if err := out.Close(); err != nil {
		os.Remove(tmp)
		return err
	}
	if err := os.Chmod(tmp, os.FileMode(unixMode(info))&os.ModePerm); err != nil {
		os.Remove(tmp)
		return err
	}
	if err := os.Chtimes(tmp, info.ModTime(), info.ModTime()); err != nil {
		os.Remove(tmp)
		return err
	}
	return os.Rename(tmp, to)
}

// pruneStaging removes from the staging directory every file and directory
// that the manifest does not list, so it does not grow with deleted files.
func pruneStaging(ctx context.Context, dst string, m *Manifest) error {
	keep := make(map[string]bool, len(m.Files)+len(m.Dirs))
	for _, f := range m.Files {
		keep[f.RelativePath] = true
	}
	for _, d := range m.Dirs {
		keep[d.RelativePath] = true
	}
	err := filepath.WalkDir(dst, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if p == dst {
			return nil
		}
		rel, _ := filepath.Rel(dst, p)
		rel = filepath.ToSlash(rel)
		if keep[rel] {
			return nil
		}
		if err := os.RemoveAll(p); err != nil {
			return err
		}
		if d.IsDir() {
			return filepath.SkipDir
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("prune staging directory %s: %w", dst, err)
	}
	return nil
}
