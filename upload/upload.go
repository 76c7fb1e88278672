package upload

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unicode"

	"golang.org/x/sync/errgroup"

	"github.com/deltabackup/deltabackup/hashstore"
	"github.com/deltabackup/deltabackup/progress"
	"github.com/deltabackup/deltabackup/snapshot"
	"github.com/deltabackup/deltabackup/snapshot/beneath"
	"github.com/deltabackup/deltabackup/snapshot/digest"
)

// DefaultParallel is the default number of concurrent uploads.
const DefaultParallel = 8

// Options configure an upload.
type Options struct {
	// Name of the backup record; empty derives one from the start time.
	Name string
	// Source describes what was backed up, for the record.
	Source string
	// Parallel bounds concurrent uploads; default DefaultParallel.
	Parallel int
	// PackSize is the size at which a pack of small contents is stored;
	// default hashstore.DefaultPackSize.
	PackSize int
	// Progress counts objects and bytes uploaded.
	Progress *progress.Progress
	// Logger receives warnings about files that changed after hashing.
	Logger *slog.Logger
	// Base makes the backup incremental: its snapshot starts from the
	// base's manifest (Backup sets snapshot.Options.Base; with Upload, the
	// snapshot must have been taken so), and while the base's record is
	// still in the repository, its contents are known to be stored — gc
	// keeps what records reference and cannot run while this backup holds
	// its lock — so they are not looked up again, and the manifest stored
	// may hold only what changed.
	Base *Base
	// MaxChainDepth bounds how many incremental manifests (holding only
	// what changed since the base backup's) follow each other before the
	// whole manifest is stored again; 0 means DefaultMaxChainDepth and a
	// negative value always stores the whole manifest.
	MaxChainDepth int
	// KeepStatCacheInMemory makes Backup keep the stat cache's new
	// generation for the next run in this process instead of saving it,
	// which costs time in proportion to the whole tree; the caller saves
	// it (StatCache.Save) when it sees fit, as watch does now and then.
	KeepStatCacheInMemory bool
	// LockWait is how long to wait for a gc holding the repository's
	// exclusive lock; a backup holds a shared lock while it runs, so gc
	// never deletes what it is about to reference.
	LockWait time.Duration
}

// withDefaults returns opts with every zero that means "the default"
// replaced by it, once, where a run starts.
func (opts Options) withDefaults() Options {
	if opts.Parallel <= 0 {
		opts.Parallel = DefaultParallel
	}
	if opts.MaxChainDepth == 0 {
		opts.MaxChainDepth = DefaultMaxChainDepth
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	return opts
}

// Base is what an incremental backup builds on: an earlier backup of the
// same source by this process (Summary.Base returns it).
type Base struct {
	Record hashstore.BackupRecord
	// Manifest is the whole manifest of Record.
	Manifest *snapshot.Manifest
	// ManifestID is where Manifest is stored when that is not Record.Root
	// (a checkpoint, StoreManifest), zero otherwise.
	ManifestID digest.Digest
}

// manifestID is the id incremental manifests name as their base.
func (b *Base) manifestID() digest.Digest {
	if !b.ManifestID.IsZero() {
		return b.ManifestID
	}
	return b.Record.Root
}

// lock takes the backup's shared lock.
// Under it, the store forgets what it knew of objects if a gc ran since
// (a Store may live across backups, as in watch).
func lock(ctx context.Context, store *hashstore.Store, opts Options) (*hashstore.Lock, error) {
	lk, err := store.Lock(ctx, hashstore.LockShared, hashstore.LockOptions{Purpose: "backup", Wait: opts.LockWait})
	if err != nil {
		return nil, err
	}
	store.Refresh(lk)
	return lk, nil
}

// Result is what one upload did.
type Result struct {
	Record hashstore.BackupRecord
	// UploadedObjects and UploadedBytes (as stored, after compression) are
	// the contents newly stored; UploadedContentBytes is their size before
	// encoding. The manifest object is counted separately.
	UploadedObjects      int64
	UploadedBytes        int64
	UploadedContentBytes int64
	PresentObjects       int64
	ManifestBytes        int64
	// Incremental is set when the manifest stored holds only what changed
	// since the base backup's (snapshot.Manifest.BaseManifest).
	Incremental bool
	// Changed files no longer had the content they were hashed with; they
	// are not in the backup.
	Changed []snapshot.Problem
}

// Upload stores snap in store and writes its backup record. The manifest
// of snap is updated in place: stored sizes are filled in and files that
// changed since they were hashed are removed.
func Upload(ctx context.Context, store *hashstore.Store, snap *snapshot.Result, opts Options) (*Result, error) {
	opts = opts.withDefaults()
	lk, err := lock(ctx, store, opts)
	if err != nil {
		return nil, err
	}
	defer lk.Unlock()
	return upload(ctx, store, lk, snap, opts, nil)
}

// maxRevalidations bounds how often a backup whose lock lapsed checks its
// contents again before it gives up.
const maxRevalidations = 3

// upload is Upload after some contents may already have been stored while
// the snapshot was taken (early); their counts join the result. lk is the
// backup's lock: before the record is written it must have been held
// without a gap, or else (a gc may have run and deleted what the backup
// relies on) the lock is taken again and every content is looked up and
// stored again where missing.
func upload(ctx context.Context, store *hashstore.Store, lk *hashstore.Lock, snap *snapshot.Result, opts Options, early *earlyUploader) (*Result, error) {
	logger := opts.Logger
	u := &uploader{store: store, snap: snap, opts: opts, logger: logger, res: &Result{}}
	if early != nil {
		// Stored during the snapshot: uploaded by this run, not present before.
		u.res.UploadedObjects = early.objects.Load()
		u.res.UploadedBytes = early.storedBytes.Load()
		u.res.UploadedContentBytes = early.contentBytes.Load()
	}
	baseKept := baseStillStored(ctx, store, opts, logger)
	incremental := baseKept && writeIncremental(snap, opts) && baseManifestStored(ctx, store, opts, logger)
	var root digest.Digest
	for round := 0; ; round++ {
		var err error
		root, err = u.store1(ctx, baseKept, incremental)
		if err != nil {
			return nil, err
		}
		err = lk.Check(ctx)
		if err == nil {
			break
		}
		if !errors.Is(err, hashstore.ErrLockLost) || round+1 >= maxRevalidations {
			return nil, fmt.Errorf("before writing the record: %w", err)
		}
		logger.Warn("the backup's lock was not held throughout; taking it again and checking every content", "err", err)
		if err := lk.Renew(ctx, opts.LockWait); err != nil {
			return nil, fmt.Errorf("take the lock again: %w", err)
		}
		store.ForgetObjects()
		// Nothing known before counts now: no base, no incremental manifest.
		baseKept, incremental = false, false
		u.res.PresentObjects = 0
	}
	if early != nil {
		u.res.PresentObjects -= early.objects.Load()
		u.res.PresentObjects = max(u.res.PresentObjects, 0)
	}
	m := snap.Manifest
	rec := hashstore.BackupRecord{
		Name:   opts.Name,
		Root:   root,
		Node:   m.Node,
		Source: opts.Source,
		Start:  m.Start,
		End:    time.Now().UTC(),
		Stats: hashstore.BackupStats{
			Files:           int64(len(m.Files)),
			TotalBytes:      m.TotalBytes(),
			Objects:         int64(len(m.Hashes)),
			HashedBytes:     snap.HashedBytes,
			UploadedObjects: u.res.UploadedObjects,
			UploadedBytes:   u.res.UploadedBytes,
			PresentObjects:  u.res.PresentObjects,
			Unreadable:      int64(len(snap.Unreadable) + len(snap.Changed) + len(u.res.Changed)),
		},
	}
	for _, f := range m.Files {
		if f.Embedded() {
			rec.Stats.EmbeddedFiles++
		}
	}
	if err := putRecord(ctx, store, &rec, opts.Name == ""); err != nil {
		return nil, err
	}
	u.res.Record = rec
	return u.res, nil
}

// uploader carries one upload's state across the rounds of store1.
type uploader struct {
	store  *hashstore.Store
	snap   *snapshot.Result
	opts   Options
	logger *slog.Logger
	res    *Result
}

// store1 stores every content of the snapshot the repository lacks, then
// the manifest (the incremental one when incremental is set), and returns
// the manifest's hexdigest. Contents of the base backup are taken for
// stored when baseKept. Files whose content could not be stored leave the
// manifest.
func (u *uploader) store1(ctx context.Context, baseKept, incremental bool) (digest.Digest, error) {
	store, snap, opts, logger, res := u.store, u.snap, u.opts, u.logger, u.res
	full := snap.Manifest
	// m is the manifest whose contents are looked up and stored and which
	// is written: the incremental one when it applies, else the whole one.
	m, delta := full, (*snapshot.Manifest)(nil)
	if incremental {
		m, delta = snap.Delta, snap.Delta
	}
	ids := make([]digest.Digest, len(m.Hashes))
	for i, h := range m.Hashes {
		ids[i] = h.Hexdigest
	}
	start := time.Now()
	stored, err := lookupContents(ctx, store, m, ids, opts, baseKept, logger) // aligned with m.Hashes
	if err != nil {
		return digest.Digest{}, fmt.Errorf("check which contents %s already holds: %w", store, err)
	}
	logger.Debug("looked up contents", "contents", len(ids), "seconds", time.Since(start).Seconds())
	missingIndex := make(map[digest.Digest]int) // id -> index in m.Hashes, for missing ones only
	presentCount := 0
	for i, info := range stored {
		if info.Found {
			presentCount++
		} else {
			missingIndex[m.Hashes[i].Hexdigest] = i
		}
	}
	res.PresentObjects = int64(presentCount)
	// Missing contents in path order: neighbouring files end up next to
	// each other in packs, and a restore reads them with one request. Each
	// lists the files that hold it, so another can stand in if the first
	// changed.
	candidates := make(map[digest.Digest][]int, len(missingIndex))
	var missing []snapshot.Hash
	var missingBytes int64
	bundled := make(map[digest.Digest]bool)
	for i, f := range m.Files {
		if _, miss := missingIndex[f.Hexdigest]; f.Embedded() || !miss {
			continue
		}
		if len(candidates[f.Hexdigest]) == 0 {
			missing = append(missing, snapshot.Hash{Hexdigest: f.Hexdigest, Size: f.FileSize})
			missingBytes += f.FileSize
			if f.ShouldBeBundled {
				bundled[f.Hexdigest] = true
			}
		}
		candidates[f.Hexdigest] = append(candidates[f.Hexdigest], i)
	}
	p := opts.Progress
	if p != nil {
		p.Start(int64(len(missing)))
		p.AddTotalBytes(missingBytes)
	}
	var (
		mu      sync.Mutex
		lost    = make(map[digest.Digest]bool)
		changed []snapshot.Problem
	)
	var uploadedObjects, uploadedBytes, contentBytes atomic.Int64
	var src *beneath.Dir
	if len(missing) > 0 {
		// Files are opened below the source without following a link in
		// any component, as the snapshot read them.
		if src, err = beneath.OpenRoot(snap.ReadRoot); err != nil {
			return digest.Digest{}, fmt.Errorf("open the source again: %w", err)
		}
		defer src.Close()
	}
	err = store.WithPacker(ctx, opts.PackSize, func(ctx context.Context, packer *hashstore.Packer) error {
		g, gctx := errgroup.WithContext(ctx)
		g.SetLimit(opts.Parallel)
		for _, h := range missing {
			g.Go(func() error {
				var pk *hashstore.Packer
				if bundled[h.Hexdigest] {
					pk = packer
				}
				put, problems, err := putFromAnyFile(gctx, store, pk, src, m, candidates[h.Hexdigest], h)
				if err != nil {
					if p != nil {
						p.UploadFailure(h.Hexdigest.String())
					}
					return err
				}
				mu.Lock()
				defer mu.Unlock()
				changed = append(changed, problems...)
				if put == nil {
					lost[h.Hexdigest] = true
					if p != nil {
						p.UploadMissing(h.Hexdigest.String())
					}
					return nil
				}
				stored[missingIndex[h.Hexdigest]] = hashstore.ObjectInfo{Found: true, StoredSize: put.StoredSize}
				uploadedObjects.Add(1)
				uploadedBytes.Add(put.StoredSize)
				contentBytes.Add(h.Size)
				if p != nil {
					p.UploadSuccess(h.Hexdigest.String(), h.Size)
				}
				return nil
			})
		}
		return g.Wait()
	})
	if err != nil {
		return digest.Digest{}, err
	}
	if p != nil {
		p.Done()
	}
	res.UploadedObjects += uploadedObjects.Load()
	res.UploadedBytes += uploadedBytes.Load()
	res.UploadedContentBytes += contentBytes.Load()

	// Files whose content could not be stored leave the manifest; the
	// others learn how many bytes their object occupies.
	kept := m.Files[:0]
	// Contents known present through the base backup have no stored size
	// here; files carried over keep theirs, and the few files examined in
	// this run that have such a content (a file that now holds another's)
	// are asked for after the loop.
	var unsized []int
	var lostPaths []string
	// Stored sizes learned in this run; after an incremental snapshot
	// these are few, and the others are already in the files.
	storedSizes := make(map[digest.Digest]int64)
	for i, info := range stored {
		if info.StoredSize > 0 {
			storedSizes[m.Hashes[i].Hexdigest] = info.StoredSize
		}
	}
	for _, f := range m.Files {
		switch {
		case f.Embedded():
		case lost[f.Hexdigest]:
			logger.Warn("file changed after it was hashed, left out of the backup", "path", f.RelativePath)
			changed = appendUnique(changed, f.RelativePath)
			lostPaths = append(lostPaths, f.RelativePath)
			continue
		default:
			switch size := storedSizes[f.Hexdigest]; {
			case size > 0:
				f.StoredFileSize = size
			case f.StoredFileSize == 0:
				unsized = append(unsized, len(kept))
			}
		}
		kept = append(kept, f)
	}
	m.Files = kept
	if err := fillStoredSizes(ctx, store, m.Files, unsized); err != nil {
		return digest.Digest{}, err
	}
	if len(lostPaths) > 0 {
		m.SetHashes()
	}
	for _, c := range changed {
		if !slices.ContainsFunc(res.Changed, func(p snapshot.Problem) bool { return p.Path == c.Path }) {
			res.Changed = append(res.Changed, c)
		}
	}
	full.ChainDepth = 0
	if delta != nil {
		completeIncremental(full, delta, opts, lostPaths)
	}

	start = time.Now()
	root, put, err := store.PutGenerated(ctx, m.WriteJSON)
	if err != nil {
		return digest.Digest{}, fmt.Errorf("store manifest: %w", err)
	}
	res.ManifestBytes = put.StoredSize
	res.Incremental = delta != nil
	logger.Debug("stored manifest", "bytes", put.StoredSize, "incremental", delta != nil, "entries", len(m.Files), "seconds", time.Since(start).Seconds())
	return root, nil
}

func appendUnique(ps []snapshot.Problem, path string) []snapshot.Problem {
	for _, p := range ps {
		if p.Path == path {
			return ps
		}
	}
	return append(ps, snapshot.Problem{Path: path, Err: errors.New("changed after it was hashed; not in this backup")})
}

// putRecord writes the record, deriving a free name from the start time
// and the node when none was given: nodes whose schedules fire in the same
// second get different names, and two backups of one node in one second
// get "-2", "-3". On storage that cannot create records only if absent,
// a derived name also gets a random suffix, so that it cannot collide.
func putRecord(ctx context.Context, store *hashstore.Store, rec *hashstore.BackupRecord, derive bool) error {
	if !derive {
		return store.PutBackup(ctx, *rec)
	}
	base := DerivedName(rec.Start, rec.Node)
	if !store.ExclusiveRecords() {
		var b [3]byte
		_, _ = rand.Read(b[:])
		base += "-" + hex.EncodeToString(b[:])
	}
	for i := 1; ; i++ {
		rec.Name = base
		if i > 1 {
			rec.Name = fmt.Sprintf("%s-%d", base, i)
		}
		err := store.PutBackup(ctx, *rec)
		if !errors.Is(err, hashstore.ErrBackupExists) || i >= 100 {
			return err
		}
	}
}

// DerivedName is the record name of a backup that was given none: its
// start time in UTC and the node, with characters a name cannot hold
// replaced ("2026-11-24T03-00-00Z-db-1").
func DerivedName(start time.Time, node string) string {
	name := start.UTC().Format("2006-01-02T15-04-05Z")
	if node == "" {
		return name
	}
	var b strings.Builder
	for _, r := range node {
		if r < 128 && (unicode.IsLetter(r) || unicode.IsDigit(r) || r == '.' || r == '_' || r == '-') {
			b.WriteRune(r)
		} else {
			b.WriteByte('-')
		}
	}
	clean := b.String()
	if len(clean) > 100 {
		clean = clean[:100]
	}
	return name + "-" + clean
}

// putFromAnyFile stores content h, read from the first file (of indexes)
// that still holds it. It returns nil and the files' problems when none
// does; an error means storage failed.
func putFromAnyFile(ctx context.Context, store *hashstore.Store, packer *hashstore.Packer, root *beneath.Dir, m *snapshot.Manifest, indexes []int, h snapshot.Hash) (*hashstore.PutResult, []snapshot.Problem, error) {
	var problems []snapshot.Problem
	for _, i := range indexes {
		rel := m.Files[i].RelativePath
		put, err := putFile(ctx, store, packer, root, rel, h)
		if err == nil {
			return put, nil, nil
		}
		if errors.Is(err, hashstore.ErrContentMismatch) || errors.Is(err, errUnavailable) {
			problems = append(problems, snapshot.Problem{Path: rel, Err: err})
			continue
		}
		return nil, nil, fmt.Errorf("upload %s (%s): %w", h.Hexdigest, rel, err)
	}
	return nil, problems, nil
}

// contentPool holds read buffers for small contents on their way into a
// pack.
var contentPool = sync.Pool{New: func() any { return new(bytes.Buffer) }}

// errUnavailable marks a source file that can no longer be opened.
var errUnavailable = errors.New("source file unavailable")

// putFile stores content h from the file at path: into the packer when
// one is given (small contents), otherwise as a loose object.
func putFile(ctx context.Context, store *hashstore.Store, packer *hashstore.Packer, root *beneath.Dir, rel string, h snapshot.Hash) (*hashstore.PutResult, error) {
	f, err := root.Open(rel, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", errUnavailable, err)
	}
	defer f.Close()
	if packer != nil {
		buf := contentPool.Get().(*bytes.Buffer)
		defer contentPool.Put(buf)
		buf.Reset()
		if _, err := buf.ReadFrom(io.LimitReader(fileReader{f}, h.Size+1)); err != nil {
			return nil, err
		}
		put, err := packer.Add(ctx, h.Hexdigest, buf.Bytes())
		if err != nil {
			return nil, err
		}
		return &put, nil
	}
	put, err := store.Put(ctx, h.Hexdigest, fileReader{f}, h.Size)
	if err != nil {
		return nil, err
	}
	return &put, nil
}

// fileReader marks read errors of a source file as errUnavailable, so that
// a file that cannot be read is told apart from storage that fails.
type fileReader struct{ f *os.File }

func (r fileReader) Read(p []byte) (int, error) {
	n, err := r.f.Read(p)
	if err != nil && !errors.Is(err, io.EOF) {
		err = fmt.Errorf("%w: %w", errUnavailable, err)
	}
	return n, err
}

// baseStillStored reports whether opts names a base backup whose record
// is still in the repository, so that its contents are known to be stored
// and its manifest can be the base of an incremental one: gc keeps what
// records reference and cannot run while this backup holds its lock.
func baseStillStored(ctx context.Context, store *hashstore.Store, opts Options, logger *slog.Logger) bool {
	if opts.Base == nil {
		return false
	}
	rec, err := store.Backup(ctx, opts.Base.Record.Name, hashstore.BackupFilter{})
	if err != nil || rec.Root != opts.Base.Record.Root {
		logger.Info("the base backup is gone; every content is looked up and the whole manifest stored", "backup", opts.Base.Record.Name, "err", err)
		return false
	}
	return true
}

// baseManifestStored reports whether the manifest an incremental one
// would name as its base is stored: the base record's, which the record
// keeps, or a checkpoint (Base.ManifestID), which nothing keeps
// from gc until this backup's record names it. The backup's shared lock
// keeps gc out from here on.
func baseManifestStored(ctx context.Context, store *hashstore.Store, opts Options, logger *slog.Logger) bool {
	if opts.Base.ManifestID.IsZero() {
		return true
	}
	has, err := store.Has(ctx, opts.Base.ManifestID)
	if err != nil || !has {
		logger.Info("the checkpoint manifest is gone; the whole manifest is stored", "manifest", opts.Base.ManifestID, "err", err)
		return false
	}
	return true
}

// StoreManifest stores m, a whole manifest, as an object and returns its
// id, for Base.ManifestID (m's ChainDepth becomes 0): a checkpoint that the next
// incremental manifests build on, so that their chain stays short without
// a backup having to store the whole manifest itself. A long-running
// process (watch) does this while idle. Nothing references the object
// until a backup's manifest does; gc may remove it before, and the backup
// then stores a whole manifest instead.
func StoreManifest(ctx context.Context, store *hashstore.Store, m *snapshot.Manifest, opts Options) (digest.Digest, int64, error) {
	if !m.BaseManifest.IsZero() {
		return digest.Digest{}, 0, errors.New("store manifest: not a whole manifest")
	}
	lk, err := lock(ctx, store, opts)
	if err != nil {
		return digest.Digest{}, 0, err
	}
	defer lk.Unlock()
	key, put, err := store.PutGenerated(ctx, m.WriteJSON)
	if err != nil {
		return digest.Digest{}, 0, fmt.Errorf("store manifest: %w", err)
	}
	m.ChainDepth = 0 // stored whole: the next incremental one is the first link
	return key, put.StoredSize, nil
}

// DefaultMaxChainDepth is how many incremental manifests may follow each
// other before a whole one is stored again.
const DefaultMaxChainDepth = 16

// writeIncremental decides whether the incremental manifest of snap is
// stored instead of the whole one: when the chain down to a whole
// manifest stays short (readers apply every link) and the change is small
// enough that it saves more than it costs a reader.
func writeIncremental(snap *snapshot.Result, opts Options) bool {
	d := snap.Delta
	if d == nil || opts.MaxChainDepth < 0 || opts.Base == nil || opts.Base.Manifest != snap.Base {
		return false
	}
	if b := opts.Base.Manifest; !b.Start.Equal(opts.Base.Record.Start) || int64(len(b.Files)) != opts.Base.Record.Stats.Files {
		// Not the manifest of that record: an incremental manifest on it
		// would describe another tree.
		return false
	}
	if opts.Base.Manifest.ChainDepth+1 > min(opts.MaxChainDepth, snapshot.MaxChainDepth) {
		return false
	}
	changes := len(d.Files) + len(d.Dirs) + len(d.EmptyDirs) + len(d.Symlinks)
	if r := d.Removed; r != nil {
		changes += len(r.Files) + len(r.Dirs) + len(r.EmptyDirs) + len(r.Symlinks)
	}
	m := snap.Manifest
	return changes < (len(m.Files)+len(m.Dirs)+len(m.EmptyDirs)+len(m.Symlinks))/2
}

// completeIncremental brings what the upload learned about the files of
// the incremental manifest delta (stored sizes, files lost because they
// changed) into the whole manifest, and names delta's base.
func completeIncremental(full, delta *snapshot.Manifest, opts Options, lost []string) {
	byPath := func(files []snapshot.File, p string) (int, bool) {
		i := sort.Search(len(files), func(i int) bool { return files[i].RelativePath >= p })
		return i, i < len(files) && files[i].RelativePath == p
	}
	for _, f := range delta.Files {
		if i, ok := byPath(full.Files, f.RelativePath); ok {
			full.Files[i].StoredFileSize = f.StoredFileSize
		}
	}
	if len(lost) > 0 {
		gone := make(map[string]bool, len(lost))
		for _, p := range lost {
			gone[p] = true
			if _, ok := byPath(opts.Base.Manifest.Files, p); ok {
				// Left out of this backup: the base's version must not show through.
				delta.Removed.Files = append(delta.Removed.Files, p)
			}
		}
		sort.Strings(delta.Removed.Files)
		kept := full.Files[:0]
		for _, f := range full.Files {
			if !gone[f.RelativePath] {
				kept = append(kept, f)
			}
		}
		full.Files = kept
		full.SetHashes()
	}
	delta.BaseManifest = opts.Base.manifestID()
	delta.ChainDepth = opts.Base.Manifest.ChainDepth + 1
	full.ChainDepth = delta.ChainDepth
}

// lookupContents finds which of m's contents the store holds, asking the
// store only about those not in a base backup whose record still exists.
func lookupContents(ctx context.Context, store *hashstore.Store, m *snapshot.Manifest, ids []digest.Digest, opts Options, baseKept bool, logger *slog.Logger) ([]hashstore.ObjectInfo, error) {
	if !baseKept {
		return store.LookupAll(ctx, ids)
	}
	base := opts.Base.Manifest
	infos := make([]hashstore.ObjectInfo, len(m.Hashes))
	var ask []digest.Digest
	var at []int
	for i, h := range m.Hashes {
		j := sort.Search(len(base.Hashes), func(j int) bool { return digest.Compare(base.Hashes[j].Hexdigest, h.Hexdigest) >= 0 })
		if j < len(base.Hashes) && base.Hashes[j].Hexdigest == h.Hexdigest {
			infos[i] = hashstore.ObjectInfo{Found: true}
			continue
		}
		ask = append(ask, h.Hexdigest)
		at = append(at, i)
	}
	found, err := store.LookupAll(ctx, ask)
	if err != nil {
		return nil, err
	}
	for k, i := range at {
		infos[i] = found[k]
	}
	logger.Debug("contents of the base backup not looked up again", "known", len(m.Hashes)-len(ask), "asked", len(ask))
	return infos, nil
}

// fillStoredSizes asks the store for the stored sizes of the files at
// the given indexes.
func fillStoredSizes(ctx context.Context, store *hashstore.Store, files []snapshot.File, at []int) error {
	if len(at) == 0 {
		return nil
	}
	ask := make([]digest.Digest, len(at))
	for k, i := range at {
		ask[k] = files[i].Hexdigest
	}
	found, err := store.LookupAll(ctx, ask)
	if err != nil {
		return fmt.Errorf("look up stored sizes: %w", err)
	}
	for k, i := range at {
		files[i].StoredFileSize = found[k].StoredSize
	}
	return nil
}
