package restore

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/zeebo/blake3"
	"golang.org/x/sync/errgroup"
	"golang.org/x/sys/unix"

	"github.com/deltabackup/deltabackup/hashstore"
	"github.com/deltabackup/deltabackup/progress"
	"github.com/deltabackup/deltabackup/snapshot"
	"github.com/deltabackup/deltabackup/snapshot/beneath"
	"github.com/deltabackup/deltabackup/snapshot/digest"
)

// DefaultParallel is the default number of concurrent downloads.
const DefaultParallel = 8

// Options configure a restore.
type Options struct {
	// Target is the directory to restore into; it is created if missing
	// and may hold a partial earlier restore.
	Target string
	// Parallel bounds concurrent file checks and embedded-file writes, and
	// is the default for PerSource.
	Parallel int
	// PerSource bounds concurrent downloads from each source; sources
	// download in parallel with each other.
	PerSource int
	// Progress counts files and bytes restored.
	Progress *progress.Progress
	// Logger receives per-file failures.
	Logger *slog.Logger
}

// FileError is a file that could not be restored.
type FileError struct {
	Path string
	ID   digest.Digest // the content it needs
	Err  error
}

func (e FileError) Error() string { return e.Path + ": " + e.Err.Error() }

// Unwrap returns why the file could not be restored.
func (e FileError) Unwrap() error { return e.Err }

// IncompleteError lists the files a restore could not write; every other
// file was restored.
type IncompleteError struct {
	Failed []FileError
}

func (e *IncompleteError) Error() string {
	return fmt.Sprintf("%d files could not be restored (first: %v)", len(e.Failed), e.Failed[0])
}

// Unwrap returns the failure of every file, so that errors.Is finds, say,
// a hashstore.ErrCorrupt among them.
func (e *IncompleteError) Unwrap() []error {
	errs := make([]error, len(e.Failed))
	for i, f := range e.Failed {
		errs[i] = f
	}
	return errs
}

// Result is what a restore did.
type Result struct {
	Plan              *Plan
	FilesWritten      int64
	FilesUpToDate     int64
	BytesDownloaded   int64
	ObjectsDownloaded int64
	// BytesPerSource is the content bytes actually fetched from each source
	// of Plan.Sources.
	BytesPerSource []int64
	Symlinks       int64
	Dirs           int64
	Failed         []FileError
}

// LoadManifest reads the record of a backup (a name, or "latest" of the
// node and source the filter selects) and its validated manifest.
func LoadManifest(ctx context.Context, store *hashstore.Store, name string, f hashstore.BackupFilter) (hashstore.BackupRecord, *snapshot.Manifest, error) {
	rec, err := store.Backup(ctx, name, f)
	if err != nil {
		return hashstore.BackupRecord{}, nil, err
	}
	m, err := snapshot.LoadManifest(ctx, store, rec.Root, nil)
	if err != nil {
		return rec, nil, fmt.Errorf("backup %s: %w", rec.Name, err)
	}
	return rec, m, nil
}

const tempPrefix = ".deltabackup-tmp-"

// restorer carries the state of one Restore call.
type restorer struct {
	root     *beneath.Dir
	m        *snapshot.Manifest
	opts     Options
	logger   *slog.Logger
	progress *progress.Progress
	res      *Result
	perSrc   []atomic.Int64

	mu     sync.Mutex
	failed []FileError

	// stop ends the whole restore when the target cannot take more (disk
	// full, quota, read-only): going on would only fail every other file.
	stop    context.CancelCauseFunc
	stopped atomic.Pointer[TargetFullError]

	// dirs caches one handle per directory, so an operation on a file is
	// one syscall on its base name instead of a walk over every component
	// of its path. Every handle is opened without following a symbolic
	// link in any component (beneath), so the cache only saves work: a
	// directory swapped for a link is refused whether or not it is cached.
	dirsMu sync.Mutex
	dirs   map[string]*beneath.Dir

	// start is when the restore began: temporary files of earlier runs
	// are older.
	start time.Time

	// fresh is set when the target was empty or missing: nothing in it can
	// be up to date, so nothing is examined.
	fresh bool
}

// maxOpenDirs bounds the cached directory handles; past it, one is
// dropped for each new one.
const maxOpenDirs = 4096

// at returns the directory handle and name to operate on the entry rel;
// the caller closes the handle (a reference) when done. A directory that
// cannot be opened (gone, or a symbolic link now) gives the target root
// and the whole path, and the operation itself reports the problem.
func (r *restorer) at(rel string) (*beneath.Dir, string) {
	dir, name := path.Split(rel)
	if dir == "" {
		r.root.Acquire()
		return r.root, name
	}
	r.dirsMu.Lock()
	defer r.dirsMu.Unlock()
	if d, ok := r.dirs[dir]; ok {
		d.Acquire()
		return d, name
	}
	d, err := r.root.OpenDir(path.Clean(dir))
	if err != nil {
		r.root.Acquire()
		return r.root, rel
	}
	if len(r.dirs) >= maxOpenDirs {
		for k, old := range r.dirs {
			old.Close() // in-flight users hold their own references
			delete(r.dirs, k)
			break
		}
	}
	r.dirs[dir] = d
	d.Acquire()
	return d, name
}

func (r *restorer) closeDirs() {
	r.dirsMu.Lock()
	defer r.dirsMu.Unlock()
	for _, d := range r.dirs {
		d.Close()
	}
	r.dirs = nil
}

// Restore writes manifest m into opts.Target from sources. It restores
// every file it can; if some fail, it returns the Result and an
// *IncompleteError naming them.
func Restore(ctx context.Context, m *snapshot.Manifest, sources []Source, opts Options) (*Result, error) {
	if err := m.Validate(); err != nil {
		return nil, fmt.Errorf("refusing to restore: %w", err)
	}
	if opts.Parallel <= 0 {
		opts.Parallel = DefaultParallel
	}
	if opts.PerSource <= 0 {
		opts.PerSource = opts.Parallel
	}
	if opts.Target == "" {
		return nil, errors.New("restore: no target directory given")
	}
	fresh := isEmptyOrMissing(opts.Target)
	if err := os.MkdirAll(opts.Target, 0o755); err != nil {
		return nil, fmt.Errorf("restore target: %w", err)
	}
	root, err := beneath.OpenRoot(opts.Target)
	if err != nil {
		return nil, fmt.Errorf("restore target: %w", err)
	}
	defer root.Close()
	ctx, stop := context.WithCancelCause(ctx)
	defer stop(nil)
	r := &restorer{root: root, m: m, opts: opts, logger: opts.Logger, progress: opts.Progress, res: &Result{},
		dirs: map[string]*beneath.Dir{}, fresh: fresh, stop: stop, start: time.Now()}
	defer r.closeDirs()
	if r.logger == nil {
		r.logger = slog.New(slog.DiscardHandler)
	}
	if r.progress != nil {
		r.progress.Start(int64(len(m.Files)))
		r.progress.AddTotalBytes(m.TotalBytes())
	}
	if err := r.makeDirs(ctx); err != nil {
		return nil, err
	}
	groups, embedded, err := r.examine(ctx)
	if err != nil {
		return nil, err
	}
	needed := make([]snapshot.Hash, 0, len(groups))
	for _, g := range groups {
		needed = append(needed, snapshot.Hash{Hexdigest: g.id, Size: g.size})
	}
	plan, err := MakePlan(ctx, sources, needed)
	if err != nil {
		return nil, err
	}
	r.res.Plan = plan
	for i, err := range plan.SourceErrors {
		if err != nil {
			r.logger.Warn("source left out of the restore", "err", err)
			continue
		}
		r.logger.Info("restore plan", "source", sources[i].String(), "objects", plan.Objects[i], "bytes", plan.Bytes[i])
	}
	r.perSrc = make([]atomic.Int64, len(sources))
	for _, h := range plan.Unavailable {
		where := make([]string, len(sources))
		for i, s := range sources {
			where[i] = s.String()
		}
		for _, rel := range groups[h.Hexdigest].paths {
			r.fail(rel, h.Hexdigest, fmt.Errorf("object %s is in none of the sources (%s)", h.Hexdigest, strings.Join(where, ", ")))
		}
		delete(groups, h.Hexdigest)
	}
	if err := r.writeFiles(ctx, plan, groups, embedded); err != nil {
		if full := r.stopped.Load(); full != nil {
			return nil, full
		}
		return nil, err
	}
	if err := r.makeSymlinks(ctx); err != nil {
		return nil, err
	}
	if full := r.stopped.Load(); full != nil {
		return nil, full
	}
	if err := r.setDirMetadata(); err != nil {
		return nil, err
	}
	// Durable before success is reported, with one syncfs instead of an
	// fsync per file.
	if err := syncFilesystem(root); err != nil {
		return nil, fmt.Errorf("restore target: sync: %w", err)
	}
	r.res.BytesPerSource = make([]int64, len(sources))
	for i := range r.perSrc {
		r.res.BytesPerSource[i] = r.perSrc[i].Load()
	}
	if r.progress != nil {
		r.progress.Done()
	}
	sort.Slice(r.failed, func(i, j int) bool { return r.failed[i].Path < r.failed[j].Path })
	r.res.Failed = r.failed
	if len(r.failed) > 0 {
		return r.res, &IncompleteError{Failed: r.failed}
	}
	return r.res, nil
}

func isEmptyOrMissing(dir string) bool {
	f, err := os.Open(dir)
	if err != nil {
		return errors.Is(err, fs.ErrNotExist)
	}
	defer f.Close()
	names, err := f.Readdirnames(1)
	return len(names) == 0 && errors.Is(err, io.EOF)
}

func (r *restorer) fail(rel string, id digest.Digest, err error) {
	if r.targetFull(rel, err) {
		return
	}
	r.logger.Warn("file not restored", "path", rel, "err", err)
	r.mu.Lock()
	r.failed = append(r.failed, FileError{Path: rel, ID: id, Err: err})
	r.mu.Unlock()
	if r.progress != nil {
		r.progress.AddFail(1)
	}
}

func (r *restorer) done(size int64) {
	if r.progress != nil {
		r.progress.AddBytes(size)
		r.progress.AddSuccess(1)
	}
}

// makeDirs creates every directory the manifest needs, parents first, and
// makes sure each is a real directory, not a symlink left in the target.
func (r *restorer) makeDirs(ctx context.Context) error {
	dirs := map[string]bool{}
	addParents := func(p string) {
		for d := path.Dir(p); d != "."; d = path.Dir(d) {
			if dirs[d] {
				break
			}
			dirs[d] = true
		}
	}
	for _, f := range r.m.Files {
		addParents(f.RelativePath)
	}
	for _, s := range r.m.Symlinks {
		addParents(s.RelativePath)
	}
	for _, d := range r.m.EmptyDirs {
		dirs[d] = true
		addParents(d)
	}
	for _, d := range r.m.Dirs {
		dirs[d.RelativePath] = true
		addParents(d.RelativePath)
	}
	sorted := make([]string, 0, len(dirs))
	for d := range dirs {
		sorted = append(sorted, d)
	}
	sort.Strings(sorted) // a parent sorts before its children
	for _, d := range sorted {
		if err := ctx.Err(); err != nil {
			return err
		}
		st, err := r.root.Lstat(d)
		switch {
		case errors.Is(err, fs.ErrNotExist):
		case err != nil:
			return fmt.Errorf("restore directory %s: %w", d, err)
		case st.Mode&unix.S_IFMT == unix.S_IFDIR:
			// A partial earlier restore: make sure we can write into it, and
			// drop temporary files an interrupted run left behind.
			if st.Mode&0o700 != 0o700 {
				if err := r.root.Chmod(d, st.Mode&0o7777|0o700); err != nil {
					return fmt.Errorf("restore directory %s: %w", d, err)
				}
			}
			r.removeTemps(d)
			continue
		default:
			// A file or symlink where the backup has a directory: the backup
			// wins, and nothing is ever written through a symlink.
			if err := r.root.Remove(d); err != nil {
				return fmt.Errorf("restore directory %s: replace a %s: %w", d, describeType(st.Mode), err)
			}
		}
		if err := r.root.Mkdir(d, 0o700); err != nil {
			return fmt.Errorf("restore directory %s: %w", d, err)
		}
		r.res.Dirs++
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
	}
	return "special file"
}

// group is one content and the paths that need it written.
type group struct {
	id    digest.Digest
	size  int64
	paths []string
	files []snapshot.File
}

// examine decides which files must be written: a file already in the
// target with the right size and content is only given its metadata.
func (r *restorer) examine(ctx context.Context) (map[digest.Digest]*group, []snapshot.File, error) {
	needs := make([]bool, len(r.m.Files))
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(r.opts.Parallel)
	for i, f := range r.m.Files {
		if r.fresh {
			needs[i] = true // an empty target holds nothing to check
			continue
		}
		g.Go(func() error {
			if err := gctx.Err(); err != nil {
				return err
			}
			ok, err := r.upToDate(f)
			switch {
			case err != nil:
				r.fail(f.RelativePath, f.Hexdigest, err)
			case ok:
				atomic.AddInt64(&r.res.FilesUpToDate, 1)
				r.done(f.FileSize)
			default:
				needs[i] = true
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, nil, err
	}
	groups := map[digest.Digest]*group{}
	var embedded []snapshot.File
	for i, f := range r.m.Files {
		switch {
		case !needs[i]:
		case f.Embedded():
			embedded = append(embedded, f)
		default:
			gr := groups[f.Hexdigest]
			if gr == nil {
				gr = &group{id: f.Hexdigest, size: f.FileSize}
				groups[f.Hexdigest] = gr
			}
			gr.paths = append(gr.paths, f.RelativePath)
			gr.files = append(gr.files, f)
		}
	}
	return groups, embedded, nil
}

// upToDate reports whether the target already holds f's content. When it
// does, the file gets f's mode and mtime through the handle opened here,
// and an error means they could not be set. A file with several links is
// never up to date: changing it in place would change the other names
// too, which may lie outside the target.
func (r *restorer) upToDate(f snapshot.File) (bool, error) {
	dir, name := r.at(f.RelativePath)
	defer dir.Close()
	file, err := dir.Open(name, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return false, nil
	}
	defer file.Close()
	var st unix.Stat_t
	if err := unix.Fstat(int(file.Fd()), &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFREG ||
		st.Size != f.FileSize || st.Nlink != 1 {
		return false, nil
	}
	if f.Embedded() {
		want, _ := f.Content()
		have, err := io.ReadAll(io.LimitReader(file, f.FileSize+1))
		if err != nil || !bytes.Equal(have, want) {
			return false, nil
		}
	} else {
		h := hashstore.GetHasher()
		defer hashstore.PutHasher(h)
		buf := bufferPool.Get().(*[]byte)
		defer bufferPool.Put(buf)
		// Hide the file's WriteTo, which would ignore buf and allocate its own.
		if _, err := io.CopyBuffer(h, struct{ io.Reader }{file}, *buf); err != nil {
			return false, nil
		}
		if digest.Digest(h.Sum(nil)) != f.Hexdigest {
			return false, nil
		}
	}
	if st.Mode&0o7777 != restoredMode(f.Mode) {
		if err := file.Chmod(fileMode(restoredMode(f.Mode))); err != nil {
			return false, err
		}
	}
	if st.Mtim.Nano() != f.MtimeNs {
		if err := beneath.SetTimes(file, f.MtimeNs); err != nil {
			return false, err
		}
	}
	return true, nil
}

var bufferPool = sync.Pool{New: func() any { b := make([]byte, 1<<20); return &b }}

// Small objects from a BatchSource are fetched in batches of at most
// batchObjects objects and batchBytes bytes, each object at most
// batchObjectMax bytes.
const (
	batchObjects   = 512
	batchBytes     = 16 << 20
	batchObjectMax = 1 << 20
)

// written counts one file written.
func (r *restorer) written(size int64) {
	atomic.AddInt64(&r.res.FilesWritten, 1)
	r.done(size)
}

// finishGroup writes a downloaded content, in temporary file tmp, to every
// path of gr: copies for all but the first, which gets tmp itself.
func (r *restorer) finishGroup(gr *group, tmp *tempFile) {
	atomic.AddInt64(&r.res.ObjectsDownloaded, 1)
	atomic.AddInt64(&r.res.BytesDownloaded, gr.size)
	for i := 1; i < len(gr.files); i++ {
		f := gr.files[i]
		copied, err := r.copyLocal(tmp, gr.size, f.RelativePath)
		if err == nil {
			err = r.commit(copied, f)
		}
		if err != nil {
			r.fail(f.RelativePath, gr.id, err)
			continue
		}
		r.written(f.FileSize)
	}
	if err := r.commit(tmp, gr.files[0]); err != nil {
		r.fail(gr.files[0].RelativePath, gr.id, err)
		return
	}
	r.written(gr.size)
}

func (r *restorer) tempName(rel string) string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return path.Join(path.Dir(rel), tempPrefix+hex.EncodeToString(b[:]))
}

// tempFile is a file being written under a temporary name in the
// directory of its final path, still open.
type tempFile struct {
	f    *os.File
	dir  *beneath.Dir // a reference, released by commit or abort
	name string
	rel  string // the entry it will become
	// size is what the manifest says the file will hold; blocks are
	// reserved (allocated) a step ahead of what was written, never more,
	// since the size is a claim until the bytes arrive and verify.
	size, written, allocated int64
}

// createTemp creates a temporary file next to the entry rel.
func (r *restorer) createTemp(rel string) (*tempFile, error) {
	dir, name := r.at(r.tempName(rel))
	f, err := dir.Open(name, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		dir.Close()
		return nil, &TargetError{Path: rel, Err: err}
	}
	return &tempFile{f: f, dir: dir, name: name, rel: rel}, nil
}

// writeHook, for tests on machines that cannot mount a small file system,
// fails writes into the target as a full disk would.
var writeHook func(p []byte) error

// Write tags write errors as the target's, not the source's.
func (t *tempFile) Write(p []byte) (int, error) {
	if writeHook != nil {
		if err := writeHook(p); err != nil {
			return 0, &TargetError{Path: t.rel, Err: err}
		}
	}
	if end := t.written + int64(len(p)); t.size >= preallocateMin && end > t.allocated {
		next := min(t.size, end+preallocateStep)
		preallocate(t.f, t.allocated, next-t.allocated)
		t.allocated = next
	}
	n, err := t.f.Write(p)
	t.written += int64(n)
	if err != nil {
		err = &TargetError{Path: t.rel, Err: err}
	}
	return n, err
}

func (t *tempFile) abort() {
	t.f.Close()
	_ = t.dir.Remove(t.name)
	t.dir.Close()
}

func (r *restorer) writeEmbedded(f snapshot.File, content []byte) error {
	t, err := r.createTemp(f.RelativePath)
	if err != nil {
		return err
	}
	if _, err := t.Write(content); err != nil {
		t.abort()
		return err
	}
	return r.commit(t, f)
}

// fetchInto writes the content read from rd into a temporary file next to
// the first path of gr, checking size and BLAKE3 before it is kept: restore
// verifies every byte whatever the source promises. A reader that checks
// the content itself (hashstore.Verifying, from a repository or a peer
// client) fails instead of ending when it is wrong, so the bytes are not
// hashed twice.
func (r *restorer) fetchInto(ctx context.Context, rd io.Reader, gr *group) (*tempFile, error) {
	t, err := r.createTemp(gr.paths[0])
	if err != nil {
		return nil, err
	}
	t.size = gr.size
	var h *blake3.Hasher
	var w io.Writer = t
	if !hashstore.IsVerifying(rd, gr.id, gr.size) {
		h = hashstore.GetHasher()
		defer hashstore.PutHasher(h)
		w = io.MultiWriter(t, h)
	}
	buf := bufferPool.Get().(*[]byte)
	defer bufferPool.Put(buf)
	n, err := io.CopyBuffer(w, io.LimitReader(hashstore.ContextReader(ctx, rd), gr.size+1), *buf)
	if err == nil && n != gr.size {
		err = &hashstore.CorruptObjectError{ID: gr.id, Reason: fmt.Sprintf("source sent %d bytes or more, want %d", n, gr.size)}
	}
	if err == nil && h != nil {
		if got := digest.Digest(h.Sum(nil)); got != gr.id {
			err = &hashstore.CorruptObjectError{ID: gr.id, Reason: "content hashes to " + got.String()}
		}
	}
	if err != nil {
		t.abort()
		return nil, err
	}
	return t, nil
}

// copyLocal copies the first size bytes of from into a new temporary file
// next to rel: a content needed by several paths is downloaded once.
func (r *restorer) copyLocal(from *tempFile, size int64, rel string) (*tempFile, error) {
	t, err := r.createTemp(rel)
	if err != nil {
		return nil, err
	}
	if _, err := io.Copy(t, io.NewSectionReader(from.f, 0, size)); err != nil {
		t.abort()
		return nil, err
	}
	return t, nil
}

// commit gives a finished temporary file its mode and mtime through its
// descriptor, closes it and renames it over the final path.
func (r *restorer) commit(t *tempFile, f snapshot.File) error {
	defer t.dir.Close()
	err := t.f.Chmod(fileMode(restoredMode(f.Mode)))
	if err == nil {
		err = beneath.SetTimes(t.f, f.MtimeNs)
	}
	if cerr := t.f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = t.dir.Rename(t.name, path.Base(f.RelativePath))
	}
	if err != nil {
		_ = t.dir.Remove(t.name)
		if errors.Is(err, syscall.EISDIR) || errors.Is(err, syscall.ENOTEMPTY) || errors.Is(err, syscall.EEXIST) {
			return errors.New("target has a directory where the backup has a file; move it away and restore again")
		}
	}
	return err
}

// restoredMode is the mode a restored file gets: the recorded permission
// bits and sticky bit, without setuid and setgid. Those are restored only
// together with the file's owner, and this manifest format records no
// owner: a user's setuid file restored by root would be a setuid root
// program.
func restoredMode(mode uint32) uint32 { return mode & 0o1777 }

// fileMode converts Unix permission bits, with setuid, setgid and sticky,
// to an os.FileMode.
func fileMode(unix uint32) os.FileMode {
	m := os.FileMode(unix & 0o777)
	if unix&0o4000 != 0 {
		m |= os.ModeSetuid
	}
	if unix&0o2000 != 0 {
		m |= os.ModeSetgid
	}
	if unix&0o1000 != 0 {
		m |= os.ModeSticky
	}
	return m
}

// makeSymlinks runs after all files are written, so no file is ever
// written through a link the restore itself created.
func (r *restorer) makeSymlinks(ctx context.Context) error {
	for _, s := range r.m.Symlinks {
		if err := ctx.Err(); err != nil {
			return err
		}
		if st, err := r.root.Lstat(s.RelativePath); err == nil {
			if st.Mode&unix.S_IFMT == unix.S_IFLNK {
				if target, err := r.root.Readlink(s.RelativePath); err == nil && target == s.Target {
					r.res.Symlinks++
					continue
				}
			}
			if st.Mode&unix.S_IFMT == unix.S_IFDIR {
				r.fail(s.RelativePath, digest.Digest{}, errors.New("target has a directory where the backup has a symlink; move it away and restore again"))
				continue
			}
			if err := r.root.Remove(s.RelativePath); err != nil {
				r.fail(s.RelativePath, digest.Digest{}, err)
				continue
			}
		}
		if err := r.root.Symlink(s.Target, s.RelativePath); err != nil {
			r.fail(s.RelativePath, digest.Digest{}, err)
			continue
		}
		r.res.Symlinks++
	}
	return nil
}

// setDirMetadata runs last and deepest first: writing into a directory
// changes its mtime, and a read-only mode would stop the writes.
// Directories keep setgid (it decides the group of new files, not who
// runs a program).
func (r *restorer) setDirMetadata() error {
	dirs := append([]snapshot.Dir(nil), r.m.Dirs...)
	sort.Slice(dirs, func(i, j int) bool { return dirs[i].RelativePath > dirs[j].RelativePath })
	if r.m.Root != nil {
		dirs = append(dirs, *r.m.Root) // "." sorts last: the target itself
	}
	for _, d := range dirs {
		err := r.root.Chmod(d.RelativePath, d.Mode)
		if err == nil {
			err = r.root.Chtimes(d.RelativePath, d.MtimeNs)
		}
		if err != nil {
			r.fail(d.RelativePath, digest.Digest{}, fmt.Errorf("directory metadata: %w", err))
		}
	}
	if full := r.stopped.Load(); full != nil {
		return full
	}
	return nil
}

// TargetError is a failure to write into the restore target, as opposed
// to a failure of a source: it never counts against a source.
type TargetError struct {
	Path string
	Err  error
}

func (e *TargetError) Error() string { return "restore target: " + e.Path + ": " + e.Err.Error() }
func (e *TargetError) Unwrap() error { return e.Err }

// TargetFullError ends a restore whose target cannot take more: a full
// disk, an exhausted quota or a read-only file system.
type TargetFullError struct {
	Target string
	Path   string // the file being written when it happened
	Err    error
	Need   int64 // bytes of the backup's files
}

func (e *TargetFullError) Error() string {
	return fmt.Sprintf("restore target %s: %v (writing %s); the backup's files need %s: make room and run the same restore again, files already restored are kept and not fetched again",
		e.Target, e.Err, e.Path, progress.FormatBytes(e.Need))
}

func (e *TargetFullError) Unwrap() error { return e.Err }

// targetFull stops the restore if err says the target cannot take more,
// and reports whether it did.
func (r *restorer) targetFull(rel string, err error) bool {
	var errno syscall.Errno
	if !errors.As(err, &errno) || (errno != syscall.ENOSPC && errno != syscall.EDQUOT && errno != syscall.EROFS) {
		return false
	}
	full := &TargetFullError{Target: r.opts.Target, Path: rel, Err: errno, Need: r.m.TotalBytes()}
	if r.stopped.CompareAndSwap(nil, full) {
		r.logger.Error("restore stopped: the target cannot take more", "path", rel, "err", errno)
		r.stop(full)
	}
	return true
}
