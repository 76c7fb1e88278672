package snapshot

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/bmatcuk/doublestar/v4"
	"golang.org/x/sys/unix"

	"github.com/deltabackup/deltabackup/progress"
	"github.com/deltabackup/deltabackup/snapshot/beneath"
	"github.com/deltabackup/deltabackup/snapshot/digest"
)

// DefaultEmbedThreshold is rohmu's: files of at most 150 bytes are embedded
// in their directory's tree and get no object.
const DefaultEmbedThreshold = 150

// DefaultMinDeltaFileSize: contents smaller than this are bundled into
// packs. Chosen by measurement (see bench/): below it, the cost of one
// stored file and one request per object outweighs reading a range of a
// pack.
const DefaultMinDeltaFileSize = 512 << 10

// HashAlgorithm names the content hash of every id.
const HashAlgorithm = "blake3"

// Options configure a Snapshotter. Start from DefaultOptions.
type Options struct {
	// Dst, when set, is a staging directory: each selected file is
	// hard-linked there (copied when linking fails) and read from there, so
	// that files a database deletes or replaces during the backup stay
	// readable. It must not be the source, lie inside it or contain it,
	// and must be new, empty, or one deltabackup staged into before (it
	// carries a marker file); only files staged by the previous run are
	// removed.
	Dst string
	// Includes are doublestar globs over slash-separated paths relative to
	// the source; an entry is selected when it, or a directory above it,
	// matches one. Default ["**"].
	Includes []string
	// Excludes are doublestar globs; a matching directory is not entered.
	Excludes []string
	// ExcludeIfPresent names files whose presence in a directory excludes
	// the directory's other entries (the directory and the marker are
	// kept). CACHEDIR.TAG is one only with ExcludeCaches, which also checks
	// its signature.
	ExcludeIfPresent []string
	// ExcludeCaches leaves out the contents of directories holding a
	// valid CACHEDIR.TAG (https://bford.info/cachedir/).
	ExcludeCaches bool
	// ExcludeLargerThan leaves out regular files larger than this many
	// bytes (0: no limit); they are listed in Result.Skipped.
	ExcludeLargerThan int64
	// OneFileSystem does not descend into directories on another file
	// system than the source (mount points are kept, empty).
	OneFileSystem bool
	// Parallel is the number of goroutines walking and hashing; default
	// DefaultParallel().
	Parallel int
	// EmbedThreshold: files of at most this many bytes are embedded in
	// their directory's tree; negative embeds nothing.
	EmbedThreshold int64
	// MinDeltaFileSize: contents smaller than this (and not embedded) are
	// marked to be bundled into packs.
	MinDeltaFileSize int64
	// Chunking cuts files with much data into content-defined chunks,
	// each stored as a content of its own; zero keeps every file whole.
	Chunking Chunking
	// Cache holds what the last backup of this source found, so that
	// unchanged files are not read and unchanged directories not encoded
	// again; nil reads everything.
	Cache *DirCache
	// ChangeRetries is how often a file that changes while it is read is
	// read again before it is reported as changed. Default 3.
	ChangeRetries int
	// Progress, when set, counts files and bytes as they are handled.
	Progress *progress.Progress
	// Logger receives warnings about unreadable and changing files.
	Logger *slog.Logger
	// Base, Trees and Dirty make an incremental snapshot: Base is the root
	// tree of the previous snapshot of the source with the same options,
	// Trees reads its trees, and Dirty lists every path (relative to the
	// source, files or directories) that may have changed since. Only
	// dirty paths and the directories above them are examined; everything
	// else is taken from Base by id. The list must be complete: a path
	// missing from it keeps its old entry. "." makes the whole tree dirty.
	Base  digest.Digest
	Trees TreeReader
	Dirty []string
	// OnFile, when set, is called for every regular file of the snapshot
	// (hashed, or taken from the cache or Base) with its path and node.
	// A serving peer uses it to learn which file holds which content.
	OnFile func(rel string, n *Node)
	// Sink stores contents and trees as they are found; nil stores
	// nothing (the snapshot still computes every id).
	Sink Sink
}

// DefaultParallel is twice the number of CPUs: a walker waits in the
// kernel for every stat, open and directory read, and another can use its
// CPU meanwhile (a no-change backup of 200,000 small files on 2 CPUs took
// 0.37 s with 2 walkers and 0.33 s with 4).
func DefaultParallel() int { return 2 * runtime.NumCPU() }

// DefaultOptions returns the defaults.
func DefaultOptions() Options {
	return Options{
		Includes:         []string{"**"},
		Parallel:         DefaultParallel(),
		EmbedThreshold:   DefaultEmbedThreshold,
		MinDeltaFileSize: DefaultMinDeltaFileSize,
		ChangeRetries:    3,
	}
}

// Sink stores what a snapshot produces. Its methods are called from
// several goroutines at once.
type Sink interface {
	// StoreContent makes sure the content c is stored. It returns an
	// error wrapping ErrChangedWhileReading when the bytes it read again
	// are not the content (the file changed): the snapshot then reads the
	// file again or reports it. Any other error stops the snapshot.
	StoreContent(ctx context.Context, c *Content) error
	// StoreTree stores the encoding of a tree under its id unless the
	// repository holds it.
	StoreTree(ctx context.Context, id digest.Digest, data []byte) error
	// Missing returns which of ids the repository does not hold; the
	// snapshot asks it about what it takes from the cache when the cache
	// is not trusted (DirCache.Trusted).
	Missing(ctx context.Context, ids []digest.Digest) ([]digest.Digest, error)
}

// Content is one file's content on its way to a Sink.
type Content struct {
	ID   digest.Digest
	Size int64
	// Bundled is true below MinDeltaFileSize: the content goes into a pack.
	Bundled bool
	// Data is the whole content when it was read into memory in one
	// piece; it is valid only during StoreContent. Otherwise Open reads
	// it again from the same open file.
	Data []byte
	Open func() io.Reader
	// Path names the file, for messages.
	Path string
}

// TreeReader reads tree objects by id (a repository).
type TreeReader interface {
	ReadTree(ctx context.Context, id digest.Digest) ([]byte, error)
}

// Problem is a path the snapshot could not take, and why.
type Problem struct {
	Path string
	Err  error
}

func (p Problem) Error() string { return p.Path + ": " + p.Err.Error() }

// Unwrap returns why the path could not be taken.
func (p Problem) Unwrap() error { return p.Err }

// MarshalJSON encodes a Problem as {"path": ..., "error": ...}.
func (p Problem) MarshalJSON() ([]byte, error) {
	return json.Marshal(struct {
		Path  string `json:"path"`
		Error string `json:"error"`
	}{p.Path, p.Err.Error()})
}

// ErrChangedWhileReading describes a file that kept changing while it was
// read; it is left out of the snapshot.
var ErrChangedWhileReading = errors.New("file changed while it was read")

// Stats count what a snapshot holds and what it cost.
type Stats struct {
	// Counts sum up the tree (the source directory itself not counted).
	Counts
	// HashedFiles and HashedBytes were read this run; CachedFiles were
	// taken from the cache or the base unread.
	HashedFiles int64 `json:"hashed_files"`
	HashedBytes int64 `json:"hashed_bytes"`
	CachedFiles int64 `json:"cached_files"`
	// TreesWritten were encoded this run; TreesReused were taken by id.
	TreesWritten int64 `json:"trees_written"`
	TreesReused  int64 `json:"trees_reused"`
}

// Result is a finished snapshot.
type Result struct {
	// Root is the id of the root tree: the root hash.
	Root  digest.Digest
	Start time.Time
	End   time.Time
	Stats Stats
	// ReadRoot is the directory file contents were read from: the
	// staging directory when staging, otherwise the source.
	ReadRoot string
	// Unreadable files and directories were skipped; the backup goes on.
	Unreadable []Problem
	// Changed files kept changing while read and are not in the snapshot.
	Changed []Problem
	// Skipped entries were left out on purpose: sockets, and files over
	// ExcludeLargerThan.
	Skipped []Problem
}

// Snapshotter takes snapshots of one source directory.
type Snapshotter struct {
	opts     Options
	src, dst string
	logger   *slog.Logger
	owners   *owners
	// readOnly reads files without hashing them, for Measure.
	readOnly bool
	// chunkers holds *chunker values when opts.Chunking is on.
	chunkers *sync.Pool
}

// New checks opts and returns a Snapshotter of the directory src.
func New(src string, opts Options) (*Snapshotter, error) {
	if src == "" {
		return nil, errors.New("snapshot: no source directory given")
	}
	abs, err := filepath.Abs(src)
	if err != nil {
		return nil, fmt.Errorf("snapshot source %s: %w", src, err)
	}
	fi, err := os.Stat(abs)
	if err != nil {
		return nil, fmt.Errorf("snapshot source: %w", err)
	}
	if !fi.IsDir() {
		return nil, fmt.Errorf("snapshot source %s is not a directory", abs)
	}
	if len(opts.Includes) == 0 {
		opts.Includes = []string{"**"}
	}
	for _, g := range slices.Concat(opts.Includes, opts.Excludes) {
		if !doublestar.ValidatePattern(g) {
			return nil, fmt.Errorf("invalid glob %q", g)
		}
	}
	for _, name := range opts.ExcludeIfPresent {
		if ValidateName(name) != nil {
			return nil, fmt.Errorf("exclude-if-present %q is not a file name", name)
		}
	}
	if opts.Parallel <= 0 {
		opts.Parallel = DefaultParallel()
	}
	if opts.ChangeRetries < 0 {
		opts.ChangeRetries = 0
	}
	if !opts.Base.IsZero() {
		if opts.Dst != "" {
			return nil, errors.New("an incremental snapshot (Base) cannot use a staging directory (Dst)")
		}
		if opts.Trees == nil {
			return nil, errors.New("an incremental snapshot (Base) needs Trees to read the base from")
		}
	}
	if err := opts.Chunking.Check(); err != nil {
		return nil, fmt.Errorf("snapshot: %w", err)
	}
	s := &Snapshotter{opts: opts, src: abs, logger: opts.Logger, owners: newOwners(), chunkers: newChunkerPool(opts.Chunking)}
	if s.logger == nil {
		s.logger = slog.New(slog.DiscardHandler)
	}
	if opts.Dst != "" {
		dst, err := filepath.Abs(opts.Dst)
		if err != nil {
			return nil, fmt.Errorf("staging directory %s: %w", opts.Dst, err)
		}
		if err := checkStageDir(abs, dst); err != nil {
			return nil, err
		}
		s.dst = dst
	}
	return s, nil
}

// Src returns the absolute source directory.
func (s *Snapshotter) Src() string { return s.src }

// Fingerprint describes the options that decide what a tree holds; a
// cache written under other options is not used.
func (s *Snapshotter) Fingerprint() string {
	o := s.opts
	c := o.Chunking
	return fmt.Sprintf("v2 src=%q inc=%q exc=%q eip=%q caches=%t larger=%d onefs=%t embed=%d bundle=%d chunks=%s/%d/%d/%d/%d",
		s.src, o.Includes, o.Excludes, o.ExcludeIfPresent, o.ExcludeCaches, o.ExcludeLargerThan, o.OneFileSystem, o.EmbedThreshold, o.MinDeltaFileSize,
		c.Algorithm, c.MinSize, c.AvgSize, c.MaxSize, c.Threshold)
}

// collector gathers what the walk finds.
type collector struct {
	mu         sync.Mutex
	unreadable []Problem
	changed    []Problem
	skipped    []Problem

	hashedFiles, hashedBytes, cachedFiles atomic.Int64
	treesWritten, treesReused             atomic.Int64
}

func (c *collector) add(list *[]Problem, p Problem) {
	c.mu.Lock()
	*list = append(*list, p)
	c.mu.Unlock()
}

func (c *collector) stats(below Counts) Stats {
	return Stats{
		Counts:      below,
		HashedFiles: c.hashedFiles.Load(), HashedBytes: c.hashedBytes.Load(), CachedFiles: c.cachedFiles.Load(),
		TreesWritten: c.treesWritten.Load(), TreesReused: c.treesReused.Load(),
	}
}

// Snapshot walks the source, hashes what changed, hands contents and trees
// to the Sink and returns the root tree's id. Unreadable, changing and
// skipped entries are reported in the Result, not as errors; an error
// means the snapshot as a whole failed.
func (s *Snapshotter) Snapshot(ctx context.Context) (*Result, error) {
	start := time.Now().UTC()
	root, err := beneath.OpenRoot(s.src)
	if err != nil {
		return nil, fmt.Errorf("snapshot source: %w", err)
	}
	defer root.Close()
	var rootStat unix.Stat_t
	if err := unix.Fstat(root.Fd(), &rootStat); err != nil {
		return nil, fmt.Errorf("snapshot source: %w", err)
	}
	w := newWalker(s, &collector{})
	if s.dst != "" {
		if w.stage, err = openStage(s.src, s.dst); err != nil {
			return nil, err
		}
		defer func() {
			if w.stage != nil {
				w.stage.dir.Close()
			}
		}()
	}
	var top dirResult
	if !s.opts.Base.IsZero() && !dirtyAll(s.opts.Dirty) {
		d, err := newDirtySet(s.opts.Dirty)
		if err != nil {
			return nil, err
		}
		top, err = w.rootIncremental(ctx, root, &rootStat, d)
		if err != nil {
			return nil, fmt.Errorf("snapshot %s: %w", s.src, err)
		}
	} else {
		top, err = w.root(ctx, root, &rootStat)
		if err != nil {
			return nil, fmt.Errorf("snapshot %s: %w", s.src, err)
		}
	}
	col := w.col
	res := &Result{
		Root:       top.id,
		Start:      start,
		End:        time.Now().UTC(),
		Stats:      col.stats(top.below),
		ReadRoot:   s.src,
		Unreadable: sortProblems(col.unreadable),
		Changed:    sortProblems(col.changed),
		Skipped:    sortProblems(col.skipped),
	}
	if w.stage != nil {
		res.ReadRoot = s.dst
		err := w.stage.finish(ctx)
		w.stage = nil
		if err != nil {
			return nil, err
		}
	}
	if p := s.opts.Progress; p != nil {
		p.Done()
	}
	s.logger.Debug("snapshot walked", "files", res.Stats.Files, "hashed", res.Stats.HashedFiles,
		"trees_written", res.Stats.TreesWritten, "trees_reused", res.Stats.TreesReused, "seconds", res.End.Sub(start).Seconds())
	return res, nil
}

func sortProblems(ps []Problem) []Problem {
	slices.SortFunc(ps, func(a, b Problem) int { return strings.Compare(a.Path, b.Path) })
	return ps
}

func dirtyAll(paths []string) bool {
	for _, p := range paths {
		p = strings.Trim(filepath.ToSlash(p), "/")
		if p == "" || p == "." {
			return true
		}
	}
	return false
}
