package restore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

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
	// Path restores only this file or directory of the backup
	// (slash-separated, relative to its root): the target becomes it.
	Path string
	// Includes and Excludes are doublestar globs over paths relative to
	// the restored root: with Includes, only entries that match one, or
	// lie below a directory that does, are restored; Excludes leave out
	// what matches and everything below it.
	Includes []string
	Excludes []string
	// Delete removes from the target what the backup does not hold, in
	// the directories it restores (never outside the target, never what
	// Includes and Excludes leave out).
	Delete bool
	// NumericOwner restores owners by number only; by default a recorded
	// user or group name that exists on this machine gives its number
	// here. Owners are restored when running as root.
	NumericOwner bool
	// Parallel bounds concurrent file checks and small-file writes, and
	// is the default for PerSource.
	Parallel int
	// PerSource bounds concurrent downloads from each source; sources
	// download in parallel with each other.
	PerSource int
	// Progress counts files and bytes restored.
	Progress *progress.Progress
	// Logger receives per-file failures and warnings.
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

// IncompleteError lists the entries a restore could not write; every
// other entry was restored.
type IncompleteError struct {
	Failed []FileError
}

func (e *IncompleteError) Error() string {
	return fmt.Sprintf("%d entries could not be restored (first: %v)", len(e.Failed), e.Failed[0])
}

// Unwrap returns the failure of every entry, so that errors.Is finds,
// say, a hashstore.ErrCorrupt among them.
func (e *IncompleteError) Unwrap() []error {
	errs := make([]error, len(e.Failed))
	for i, f := range e.Failed {
		errs[i] = f
	}
	return errs
}

// Warning is metadata a restore could not put back (an owner without
// root, an extended attribute the file system refuses, a device node
// without root); the entry itself was restored.
type Warning struct {
	Path string `json:"path"`
	What string `json:"what"`
	Err  string `json:"error"`
}

// Result is what a restore did.
type Result struct {
	// Plan sums up the plans of the restore's batches: bytes and objects
	// per source.
	Plan              *Plan
	FilesWritten      int64
	FilesUpToDate     int64
	BytesDownloaded   int64
	ObjectsDownloaded int64
	// BytesPerSource is the content bytes actually fetched from each
	// source.
	BytesPerSource []int64
	Symlinks       int64
	Dirs           int64
	Specials       int64
	Links          int64
	Deleted        int64
	Failed         []FileError
	Warnings       []Warning
}

// LoadBackup reads the record of a backup: a name, or "latest" of the
// node and source the filter selects.
func LoadBackup(ctx context.Context, store *hashstore.Store, name string, f hashstore.BackupFilter) (hashstore.BackupRecord, error) {
	return store.Backup(ctx, name, f)
}

const tempPrefix = ".deltabackup-tmp-"

// geteuid is os.Geteuid, replaced by tests that play another user.
var geteuid = os.Geteuid

// restorer carries the state of one Restore call.
type restorer struct {
	root     *beneath.Dir
	trees    snapshot.TreeReader
	sources  []Source
	opts     Options
	logger   *slog.Logger
	progress *progress.Progress
	res      *Result
	perSrc   []atomic.Int64
	owners   *ownerMap
	asRoot   bool
	filter   *filter
	// target is the directory restored into; totalBytes is what the
	// restored files hold, for messages.
	target     string
	totalBytes int64

	mu       sync.Mutex
	failed   []FileError
	warnings []Warning

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
	// resumable holds the paths of partial chunked files (resumeName)
	// that this restore continues.
	resumable sync.Map
	// assembling holds the chunked files still being put together
	// (*assembly keys): an interrupted restore leaves them to be resumed,
	// a full target has them removed.
	assembling sync.Map

	// links maps each hard-link group to its first name restored.
	linksMu sync.Mutex
	links   map[linkGroup]*linkState
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

// Restore writes the backup whose root tree is root (its trees read from
// trees) into opts.Target, fetching contents from sources. Every tree is
// read and validated before anything is written: a hostile repository is
// refused, naming the entry. The restore then writes what it can; if
// some entries fail, it returns the Result and an *IncompleteError naming
// them. Memory holds one directory path and one batch of files at a time.
func Restore(ctx context.Context, trees snapshot.TreeReader, root digest.Digest, target string, sources []Source, opts Options) (*Result, error) {
	if opts.Parallel <= 0 {
		opts.Parallel = DefaultParallel
	}
	if opts.PerSource <= 0 {
		opts.PerSource = opts.Parallel
	}
	if target == "" {
		return nil, errors.New("restore: no target directory given")
	}
	if len(sources) == 0 {
		return nil, errors.New("restore needs at least one source")
	}
	if opts.Path != "" {
		if err := snapshot.ValidatePath(opts.Path); err != nil {
			return nil, fmt.Errorf("restore path: %w", err)
		}
	}
	f, err := newFilter(opts.Includes, opts.Excludes)
	if err != nil {
		return nil, err
	}
	r := &restorer{trees: trees, sources: sources, opts: opts, logger: opts.Logger, progress: opts.Progress, res: &Result{},
		dirs: map[string]*beneath.Dir{}, start: time.Now(), asRoot: geteuid() == 0, filter: f,
		owners: newOwnerMap(opts.NumericOwner), links: map[linkGroup]*linkState{}}
	if r.logger == nil {
		r.logger = slog.New(slog.DiscardHandler)
	}
	// The whole tree is read once and checked before the target is
	// touched.
	counts, err := r.validate(ctx, root)
	if err != nil {
		return nil, fmt.Errorf("refusing to restore: %w", err)
	}
	r.totalBytes = counts.Bytes
	if r.progress != nil {
		r.progress.Start(counts.Files)
		r.progress.AddTotalBytes(counts.Bytes)
	}
	r.fresh = isEmptyOrMissing(target)
	if err := os.MkdirAll(target, 0o700); err != nil {
		return nil, fmt.Errorf("restore target: %w", err)
	}
	dir, err := beneath.OpenRoot(target)
	if err != nil {
		return nil, fmt.Errorf("restore target: %w", err)
	}
	defer dir.Close()
	r.root = dir
	r.target = target
	defer r.closeDirs()
	ctx, stop := context.WithCancelCause(ctx)
	defer stop(nil)
	r.stop = stop
	r.perSrc = make([]atomic.Int64, len(sources))
	r.res.Plan = &Plan{Sources: sources, Bytes: make([]int64, len(sources)), Objects: make([]int, len(sources)), SourceErrors: make([]error, len(sources))}
	if err := r.walk(ctx, root); err != nil {
		if full := r.stopped.Load(); full != nil {
			r.abandonChunked()
			return nil, full
		}
		return nil, err
	}
	if full := r.stopped.Load(); full != nil {
		r.abandonChunked()
		return nil, full
	}
	// Durable before success is reported, with one syncfs instead of an
	// fsync per file.
	if err := syncFilesystem(dir); err != nil {
		return nil, fmt.Errorf("restore target: sync: %w", err)
	}
	r.res.BytesPerSource = make([]int64, len(sources))
	for i := range r.perSrc {
		r.res.BytesPerSource[i] = r.perSrc[i].Load()
	}
	if r.progress != nil {
		r.progress.Done()
	}
	slices.SortFunc(r.failed, func(a, b FileError) int { return strings.Compare(a.Path, b.Path) })
	slices.SortFunc(r.warnings, func(a, b Warning) int { return strings.Compare(a.Path, b.Path) })
	r.res.Failed, r.res.Warnings = r.failed, r.warnings
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
	r.logger.Warn("not restored", "path", rel, "err", err)
	r.mu.Lock()
	r.failed = append(r.failed, FileError{Path: rel, ID: id, Err: err})
	r.mu.Unlock()
	if r.progress != nil {
		r.progress.AddFail(1)
	}
}

func (r *restorer) warn(rel, what string, err error) {
	r.logger.Warn(what+" not restored", "path", rel, "err", err)
	r.mu.Lock()
	r.warnings = append(r.warnings, Warning{Path: rel, What: what, Err: err.Error()})
	r.mu.Unlock()
}

func (r *restorer) done(size int64) {
	if r.progress != nil {
		r.progress.AddBytes(size)
		r.progress.AddSuccess(1)
	}
}

// written counts one file written.
func (r *restorer) written(size int64) {
	atomic.AddInt64(&r.res.FilesWritten, 1)
	r.done(size)
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
	full := &TargetFullError{Target: r.target, Path: rel, Err: errno, Need: r.totalBytes}
	if r.stopped.CompareAndSwap(nil, full) {
		r.logger.Error("restore stopped: the target cannot take more", "path", rel, "err", errno)
		r.stop(full)
	}
	return true
}
