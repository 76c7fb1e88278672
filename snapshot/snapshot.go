package snapshot

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/bmatcuk/doublestar/v4"
	"golang.org/x/sync/errgroup"
	"golang.org/x/sys/unix"

	"github.com/deltabackup/deltabackup/progress"
	"github.com/deltabackup/deltabackup/snapshot/beneath"
	"github.com/deltabackup/deltabackup/snapshot/digest"
)

// DefaultEmbedThreshold is rohmu's: files of at most 150 bytes are embedded
// in the manifest and get no object.
const DefaultEmbedThreshold = 150

// DefaultMinDeltaFileSize: contents smaller than this are bundled into
// packs. Chosen by measurement (see bench/): below it, the cost of one
// stored file and one request per object outweighs reading a range of a
// pack.
const DefaultMinDeltaFileSize = 512 << 10

// Options configure a Snapshotter. Start from DefaultOptions.
type Options struct {
	// Src is the directory to snapshot.
	Src string
	// Dst, when set, is a staging directory: each selected file is
	// hard-linked there (copied when linking fails) and read from there, so
	// that files a database deletes or replaces during the backup stay
	// readable. It must not be Src, lie inside it or contain it, and must
	// be new, empty, or one deltabackup staged into before (it carries a
	// marker file); only files staged by the previous run are removed.
	Dst string
	// Includes are doublestar globs over slash-separated paths relative to
	// Src; an entry is selected when it, or a directory above it, matches
	// one. Default ["**"].
	Includes []string
	// Excludes are doublestar globs; a matching directory is not entered.
	Excludes []string
	// Parallel is the number of hashing workers; default runtime.NumCPU().
	Parallel int
	// EmbedThreshold: files of at most this many bytes are embedded in the
	// manifest; negative embeds nothing.
	EmbedThreshold int64
	// MinDeltaFileSize: files smaller than this (and not embedded) are
	// marked should_be_bundled, to be packed with other small contents.
	MinDeltaFileSize int64
	// Node names the machine in the manifest.
	Node string
	// Cache skips reading files whose stat is unchanged; nil reads all.
	Cache *StatCache
	// ChangeRetries is how often a file that changes while it is read is
	// read again before it is reported as changed. Default 3.
	ChangeRetries int
	// Progress, when set, counts files and bytes as they are handled.
	Progress *progress.Progress
	// OnContent, when set, is called by the hashing workers with the whole
	// content of each non-embedded file that was read into memory in one
	// piece (files under 1 MiB), right after it was hashed and found
	// unchanged; content is valid only during the call. A backup uses it to
	// store small contents without reading their files a second time. An
	// error fails the snapshot.
	OnContent func(ctx context.Context, f File, content []byte) error
	// Logger receives warnings about unreadable and changing files.
	Logger *slog.Logger
	// Base and Dirty make an incremental snapshot: Base is the manifest of
	// the previous snapshot of Src with the same options, Dirty every path
	// (relative to Src, files or directories) that may have changed since.
	// Only dirty paths and the directories above them are examined; the
	// rest is taken from Base. The list must be complete: a path missing
	// from it keeps its old entry. "." makes the whole tree dirty.
	Base  *Manifest
	Dirty []string
}

// DefaultOptions returns the defaults for snapshotting src.
func DefaultOptions(src string) Options {
	return Options{
		Src:              src,
		Includes:         []string{"**"},
		Parallel:         runtime.NumCPU(),
		EmbedThreshold:   DefaultEmbedThreshold,
		MinDeltaFileSize: DefaultMinDeltaFileSize,
		ChangeRetries:    3,
	}
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
// read; it is left out of the manifest.
var ErrChangedWhileReading = errors.New("file changed while it was read")

// Result is a finished snapshot.
type Result struct {
	Manifest *Manifest
	// ReadRoot is the directory file contents are read from for upload:
	// Dst when staging, otherwise Src.
	ReadRoot string
	// HashedFiles and HashedBytes count what was actually read this run;
	// CachedFiles were skipped thanks to the stat cache.
	HashedFiles int64
	HashedBytes int64
	CachedFiles int64
	// Unreadable files and directories were skipped; the backup goes on.
	Unreadable []Problem
	// Changed files kept changing while read and are not in the manifest.
	Changed []Problem
	// Special files (sockets, devices, FIFOs) are skipped.
	Special []Problem
	// Delta is set for an incremental snapshot (Options.Base with a dirty
	// list): the incremental manifest of what changed since Base, whose
	// BaseManifest the caller fills in with the hexdigest Base is stored
	// under. Manifest is the whole manifest either way.
	Delta *Manifest
	// Base is the manifest Delta is relative to (Options.Base).
	Base *Manifest
}

// Snapshotter takes snapshots of one source directory.
type Snapshotter struct {
	opts     Options
	src, dst string
	logger   *slog.Logger
	// stage is the staging directory of the snapshot under way (Dst).
	stage *stager
	// readOnly reads files without hashing them, for Measure.
	readOnly bool
}

// New checks opts and returns a Snapshotter.
func New(opts Options) (*Snapshotter, error) {
	if opts.Src == "" {
		return nil, errors.New("snapshot: no source directory given")
	}
	src, err := filepath.Abs(opts.Src)
	if err != nil {
		return nil, fmt.Errorf("snapshot source %s: %w", opts.Src, err)
	}
	fi, err := os.Stat(src)
	if err != nil {
		return nil, fmt.Errorf("snapshot source: %w", err)
	}
	if !fi.IsDir() {
		return nil, fmt.Errorf("snapshot source %s is not a directory", src)
	}
	if len(opts.Includes) == 0 {
		opts.Includes = []string{"**"}
	}
	for _, g := range append(append([]string{}, opts.Includes...), opts.Excludes...) {
		if !doublestar.ValidatePattern(g) {
			return nil, fmt.Errorf("invalid glob %q", g)
		}
	}
	if opts.Parallel <= 0 {
		opts.Parallel = runtime.NumCPU()
	}
	if opts.ChangeRetries < 0 {
		opts.ChangeRetries = 0
	}
	if opts.Base != nil && opts.Dst != "" {
		return nil, errors.New("an incremental snapshot (Base) cannot use a staging directory (Dst)")
	}
	s := &Snapshotter{opts: opts, src: src, logger: opts.Logger}
	if s.logger == nil {
		s.logger = slog.New(slog.DiscardHandler)
	}
	if opts.Dst != "" {
		dst, err := filepath.Abs(opts.Dst)
		if err != nil {
			return nil, fmt.Errorf("staging directory %s: %w", opts.Dst, err)
		}
		if err := checkStageDir(src, dst); err != nil {
			return nil, err
		}
		s.dst = dst
	}
	return s, nil
}

// Src returns the absolute source directory.
func (s *Snapshotter) Src() string { return s.src }

// fileJob is a regular file found by the walk, for a hashing worker: its
// path, and its name in the directory handle dir (a reference the worker
// releases).
type fileJob struct {
	rel  string
	dir  *beneath.Dir
	name string
}

// collector gathers what workers and the walker find.
type collector struct {
	mu          sync.Mutex
	unreadable  []Problem
	changed     []Problem
	special     []Problem
	hashedFiles atomic.Int64
	hashedBytes atomic.Int64
	cachedFiles atomic.Int64
}

func (c *collector) add(list *[]Problem, p Problem) {
	c.mu.Lock()
	*list = append(*list, p)
	c.mu.Unlock()
}

// Snapshot walks the source, hashes what changed and returns the manifest.
// Unreadable, changing and special files are reported in the Result, not
// as errors; an error means the snapshot as a whole failed.
func (s *Snapshotter) Snapshot(ctx context.Context) (*Result, error) {
	m := &Manifest{
		Version:          ManifestVersion,
		HashAlgorithm:    HashAlgorithm,
		RootGlobs:        s.opts.Includes,
		ExcludeGlobs:     s.opts.Excludes,
		Start:            time.Now().UTC(),
		Node:             s.opts.Node,
		MinDeltaFileSize: s.opts.MinDeltaFileSize,
	}
	root, err := beneath.OpenRoot(s.src)
	if err != nil {
		return nil, fmt.Errorf("snapshot source: %w", err)
	}
	defer root.Close()
	var st unix.Stat_t
	if err := unix.Fstat(root.Fd(), &st); err == nil {
		m.Root = &Dir{RelativePath: ".", Mode: st.Mode & 0o7777, MtimeNs: st.Mtim.Nano()}
	}
	if s.dst != "" {
		if s.stage, err = openStage(s.src, s.dst); err != nil {
			return nil, err
		}
		defer func() {
			if s.stage != nil {
				s.stage.dir.Close()
				s.stage = nil
			}
		}()
	}
	if m.ExcludeGlobs == nil {
		m.ExcludeGlobs = []string{}
	}
	col := &collector{}
	jobs := make(chan fileJob, 4096)
	g, gctx := errgroup.WithContext(ctx)
	w := &walker{s: s, jobs: jobs, col: col, manifest: m}
	walk := w.walk
	if s.opts.Base != nil {
		d, err := newDirtySet(s.opts.Dirty)
		if err != nil {
			return nil, err
		}
		if !d.all {
			w.dirty = d
			walk = func(ctx context.Context, rel string, dir *beneath.Dir, included bool) error {
				_, err := w.walkDirty(ctx, rel, dir, included)
				return err
			}
		}
	}
	if s.opts.Cache != nil {
		s.opts.Cache.begin(w.dirty != nil)
	}
	g.Go(func() error {
		defer close(jobs)
		err := walk(gctx, "", root, false)
		if errors.Is(err, errEmptyDir) {
			err = nil
		}
		return err
	})
	workers := make([]*hasher, s.opts.Parallel)
	for i := range workers {
		h := newHasher(s, col)
		workers[i] = h
		g.Go(func() error {
			for job := range jobs {
				if err := gctx.Err(); err != nil {
					job.dir.Close()
					drain(jobs)
					return err
				}
				err := h.handle(gctx, job)
				job.dir.Close()
				if err != nil {
					drain(jobs)
					return err
				}
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, fmt.Errorf("snapshot %s: %w", s.src, err)
	}
	// Each list is sorted on its own, then merged: at a million files,
	// sorting the whole manifest would move every entry several times.
	var lists [][]File
	for _, h := range workers {
		slices.SortFunc(h.files, byPath)
		lists = append(lists, h.files)
		h.files = nil
	}
	m.Files = mergeSorted(lists)
	s.logger.Debug("snapshot walked and hashed", "files", len(m.Files), "seconds", time.Since(m.Start).Seconds())
	slices.SortFunc(m.Dirs, func(a, b Dir) int { return strings.Compare(a.RelativePath, b.RelativePath) })
	sort.Strings(m.EmptyDirs)
	slices.SortFunc(m.Symlinks, func(a, b Symlink) int { return strings.Compare(a.RelativePath, b.RelativePath) })
	var delta *Manifest
	if w.dirty != nil {
		var carried int
		delta, carried = finishIncremental(m, s.opts.Base, w.kept)
		w.kept = nil
		col.cachedFiles.Add(int64(carried))
		if c := s.opts.Cache; c != nil && len(delta.Removed.Files) > 0 {
			c.Forget(delta.Removed.Files...)
		}
		if pr := s.opts.Progress; pr != nil && carried > 0 {
			pr.AddTotal(int64(carried))
			pr.AddSuccess(int64(carried))
		}
		s.logger.Debug("incremental snapshot merged with its base", "carried", carried, "changed_files", len(delta.Files), "seconds", time.Since(m.Start).Seconds())
	} else {
		m.SetHashes()
	}
	m.End = time.Now().UTC()
	if delta != nil {
		delta.End = m.End
	}
	res := &Result{
		Manifest:    m,
		ReadRoot:    s.src,
		HashedFiles: col.hashedFiles.Load(),
		HashedBytes: col.hashedBytes.Load(),
		CachedFiles: col.cachedFiles.Load(),
		Unreadable:  sortProblems(col.unreadable),
		Changed:     sortProblems(col.changed),
		Special:     sortProblems(col.special),
		Delta:       delta,
	}
	if delta != nil {
		res.Base = s.opts.Base
	}
	if s.stage != nil {
		res.ReadRoot = s.dst
		err := s.stage.finish(ctx)
		s.stage = nil
		if err != nil {
			return nil, err
		}
	}
	if p := s.opts.Progress; p != nil {
		p.Done()
	}
	// No Validate here: the walk checks every name and symlink target
	// (entries the format cannot carry are reported, not stored), and the
	// rest (sorted, unique, nothing below a file) holds by construction.
	// Restores validate whatever they decode.
	return res, nil
}

// drain releases the directory references of jobs no worker will take.
func drain(jobs <-chan fileJob) {
	for job := range jobs {
		job.dir.Close()
	}
}

func sortProblems(ps []Problem) []Problem {
	sort.Slice(ps, func(i, j int) bool { return ps[i].Path < ps[j].Path })
	return ps
}

// newFile builds the manifest entry of a file whose content is known.
func (s *Snapshotter) newFile(rel string, st fileStat, mode uint32, sum digest.Digest, content []byte) File {
	f := File{RelativePath: rel, FileSize: st.size, MtimeNs: st.mtimeNs, Mode: mode}
	if s.embeds(st.size) {
		f.ContentB64 = base64.StdEncoding.EncodeToString(content)
		return f
	}
	f.Hexdigest = sum
	f.ShouldBeBundled = st.size < s.opts.MinDeltaFileSize
	return f
}

func (s *Snapshotter) embeds(size int64) bool { return size <= s.opts.EmbedThreshold }

func byPath(a, b File) int { return strings.Compare(a.RelativePath, b.RelativePath) }

// mergeSorted merges lists sorted by path into one.
func mergeSorted(lists [][]File) []File {
	n := 0
	for _, l := range lists {
		n += len(l)
	}
	out := make([]File, 0, n)
	for {
		best := -1
		for i, l := range lists {
			if len(l) > 0 && (best < 0 || l[0].RelativePath < lists[best][0].RelativePath) {
				best = i
			}
		}
		if best < 0 {
			return out
		}
		// Take the whole run of the best list that sorts before every
		// other list's head.
		l := lists[best]
		k := 1
		for k < len(l) {
			ok := true
			for i, o := range lists {
				if i != best && len(o) > 0 && o[0].RelativePath < l[k].RelativePath {
					ok = false
					break
				}
			}
			if !ok {
				break
			}
			k++
		}
		out = append(out, l[:k]...)
		lists[best] = l[k:]
	}
}
