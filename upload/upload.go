package upload

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
	"unicode"

	"github.com/deltabackup/deltabackup/hashstore"
	"github.com/deltabackup/deltabackup/snapshot"
	"github.com/deltabackup/deltabackup/snapshot/digest"
)

// Options configure a backup; zero values mean defaults.
type Options struct {
	// Name of the backup record; empty derives one from the start time
	// and the node.
	Name string
	// Node names the machine in the record (default: the host name).
	Node string
	// Source describes what was backed up, for the record (default: the
	// source directory).
	Source string
	// Tags are stored in the record, for selecting backups later.
	Tags []string
	// PackSize is the size at which a pack of small contents and trees is
	// stored; default hashstore.DefaultPackSize.
	PackSize int
	// Logger receives warnings about files and the repository.
	Logger *slog.Logger
	// CacheDir is where the directory cache lives (see snapshot.DirCache):
	// with it, a backup reads only the files whose status changed since
	// the last backup of the source into this repository. Empty: no cache,
	// every file is read.
	CacheDir string
	// Base and Dirty make the backup incremental: only the paths in Dirty
	// (and the directories above them) are examined, everything else is
	// taken from Base, an earlier backup of the same source whose record
	// is in the repository (see snapshot.Options.Dirty).
	Base  *Base
	Dirty []string
}

// Base is what an incremental backup builds on: an earlier backup of the
// same source (Summary.Base returns it).
type Base struct {
	Record hashstore.BackupRecord
}

func (opts Options) withDefaults() Options {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	return opts
}

// Summary is the outcome of a backup.
type Summary struct {
	Record   hashstore.BackupRecord
	Snapshot *snapshot.Result
	// UploadedObjects and UploadedBytes (as stored, after compression)
	// are the contents newly stored; UploadedContentBytes is their size
	// before encoding. Trees are counted apart.
	UploadedObjects      int64
	UploadedBytes        int64
	UploadedContentBytes int64
	TreesStored          int64
	TreeBytes            int64
	// Incremental is set when only the dirty paths were examined.
	Incremental bool
	// Revalidations counts the times the backup lost its lock (a gc may
	// have run) and looked everything up again.
	Revalidations int
}

// Incomplete reports whether some selected files are not in the backup
// because they could not be read or kept changing (the CLI's exit code 3).
func (s *Summary) Incomplete() bool {
	return len(s.Snapshot.Unreadable) > 0 || len(s.Snapshot.Changed) > 0
}

// Base returns what a later incremental backup of the same source builds
// on (Options.Base).
func (s *Summary) Base() *Base { return &Base{Record: s.Record} }

// maxRevalidations bounds how often a backup whose lock lapsed looks
// everything up again before it gives up.
const maxRevalidations = 3

// Backup snapshots the directory src with snapOpts into store and writes
// the backup record last, once every object it references is stored.
// Contents and trees are stored as the snapshot finds them; a file that
// changes while it is read is read again or left out and listed, never
// stored under a wrong id. snapOpts' Sink, Cache, Base, Trees and Dirty
// are set by Backup from opts.
func Backup(ctx context.Context, store *hashstore.Store, src string, snapOpts snapshot.Options, opts Options) (*Summary, error) {
	opts = opts.withDefaults()
	logger := opts.Logger
	var err error
	if snapOpts.Logger == nil {
		snapOpts.Logger = logger
	}
	// The repository's chunking, checked before anything is written: a
	// config claiming absurd chunk sizes is refused here.
	if snapOpts.Chunking, err = RepositoryChunking(store); err != nil {
		return nil, err
	}
	lk, err := lock(ctx, store, opts)
	if err != nil {
		return nil, err
	}
	defer lk.Unlock()
	if rel, inside := repositoryInside(store, src); inside {
		// Backing up the repository into itself would grow it every night.
		logger.Warn("the repository lies inside the source; leaving it out", "path", rel)
		snapOpts.Excludes = append(slices.Clip(snapOpts.Excludes), rel)
	}
	trees := &Trees{Store: store}
	incremental := opts.Base != nil && baseStillStored(ctx, store, opts.Base, logger)
	if incremental {
		snapOpts.Base, snapOpts.Trees, snapOpts.Dirty = opts.Base.Record.Root, trees, opts.Dirty
	}
	s, err := snapshot.New(src, snapOpts)
	if err != nil {
		return nil, err
	}
	node := opts.Node
	if node == "" {
		node = hostname()
	}
	source := opts.Source
	if source == "" {
		source = s.Src()
	}
	parent := ""
	if incremental {
		parent = opts.Base.Record.Name
	} else if rec, err := store.Backup(ctx, hashstore.LatestBackup, hashstore.BackupFilter{Node: node, Source: source}); err == nil {
		parent = rec.Name
	}
	var cache *snapshot.DirCache
	if opts.CacheDir != "" && !incremental {
		cache, err = snapshot.OpenDirCache(snapshot.DirCachePath(opts.CacheDir, store.Config().ID, s.Src()))
		if err != nil {
			logger.Warn("directory cache unusable; every file is read", "err", err)
		}
		defer cache.Close()
	}
	sum := &Summary{Incremental: incremental}
	var res *snapshot.Result
	var generation string
	for round := 0; ; round++ {
		generation = lk.GCMarker()
		if cache != nil {
			// What the cache names is known stored only if no gc ran since
			// the backup it describes.
			cache.Trusted = round == 0 && cache.Generation() != "" && cache.Generation() == generation
		}
		sink := newSink(store, nil)
		roundOpts := snapOpts
		roundOpts.Sink, roundOpts.Cache = sink, cache
		snap, err := snapshot.New(src, roundOpts)
		if err != nil {
			return nil, err
		}
		// Trees go into packs of their own, as restic keeps tree blobs
		// apart: damage to a pack of file data leaves every tree
		// readable, and a reader of trees reads no file data.
		err = store.WithPacker(ctx, opts.PackSize, func(ctx context.Context, trees *hashstore.Packer) error {
			return store.WithPacker(ctx, opts.PackSize, func(ctx context.Context, data *hashstore.Packer) error {
				sink.packer, sink.trees = data, trees
				sink.start(ctx)
				var err error
				res, err = snap.Snapshot(ctx)
				if ferr := sink.finish(); err == nil {
					err = ferr
				}
				return err
			})
		})
		if err != nil {
			return nil, err
		}
		sum.UploadedObjects += sink.uploadedObjects.Load()
		sum.UploadedBytes += sink.uploadedBytes.Load()
		sum.UploadedContentBytes += sink.uploadedContentBytes.Load()
		sum.TreesStored += sink.treesStored.Load()
		sum.TreeBytes += sink.treeBytes.Load()
		err = lk.Check(ctx)
		if err == nil && incremental && lk.GCMarker() != generation && !baseStillStored(ctx, store, opts.Base, logger) {
			// gc ran beside this backup and the base is gone: what this
			// backup reused from it was unreferenced when gc looked, so
			// the source is scanned whole again.
			if round+1 >= maxRevalidations {
				return nil, errors.New("the base backup was removed while this backup ran")
			}
			incremental, sum.Incremental = false, false
			snapOpts.Base, snapOpts.Trees, snapOpts.Dirty = digest.Digest{}, nil, nil
			store.ForgetObjects()
			sum.Revalidations++
			continue
		}
		if err == nil {
			break
		}
		if !errors.Is(err, hashstore.ErrLockLost) || round+1 >= maxRevalidations {
			return nil, fmt.Errorf("before writing the record: %w", err)
		}
		logger.Warn("the backup's lock was not held throughout; taking it again and checking every object", "err", err)
		if err := lk.Renew(ctx, 0); err != nil {
			return nil, fmt.Errorf("take the lock again: %w", err)
		}
		store.ForgetObjects()
		sum.Revalidations++
		if incremental && !baseStillStored(ctx, store, opts.Base, logger) {
			return nil, errors.New("the base backup was removed while this backup ran")
		}
	}
	sum.Snapshot = res
	st := res.Stats
	rec := hashstore.BackupRecord{
		Name:             opts.Name,
		Root:             res.Root,
		Node:             node,
		Source:           source,
		Start:            res.Start,
		End:              time.Now().UTC(),
		Parent:           parent,
		Tags:             opts.Tags,
		Includes:         snapOpts.Includes,
		Excludes:         snapOpts.Excludes,
		MinDeltaFileSize: snapOpts.MinDeltaFileSize,
		Stats: hashstore.BackupStats{
			Files:           st.Files,
			Dirs:            st.Dirs,
			Symlinks:        st.Symlinks,
			Specials:        st.Specials,
			TotalBytes:      st.Bytes,
			DataBytes:       st.DataBytes,
			EmbeddedFiles:   st.Embedded,
			HashedFiles:     st.HashedFiles,
			HashedBytes:     st.HashedBytes,
			TreesWritten:    sum.TreesStored,
			UploadedObjects: sum.UploadedObjects,
			UploadedBytes:   sum.UploadedBytes + sum.TreeBytes,
			Unreadable:      int64(len(res.Unreadable)),
			Changed:         int64(len(res.Changed)),
			Skipped:         int64(len(res.Skipped)),
		},
	}
	if err := putRecord(ctx, store, &rec, opts.Name == ""); err != nil {
		return nil, err
	}
	sum.Record = rec
	if err := store.SaveCache(); err != nil {
		logger.Warn("local repository cache not saved; the next backup asks storage again", "err", err)
	}
	if cache != nil {
		if err := cache.Commit(generation); err != nil {
			logger.Warn("directory cache not saved; the next backup reads every file again", "err", err)
		}
	}
	return sum, nil
}

func hostname() string {
	h, _ := os.Hostname()
	return h
}

// lock takes the backup's shared lock. Under it, the store forgets what
// it knew of objects if a gc ran since (a Store may live across backups,
// as in watch).
func lock(ctx context.Context, store *hashstore.Store, opts Options) (*hashstore.Lock, error) {
	lk, err := store.Lock(ctx, hashstore.LockShared, hashstore.LockOptions{Purpose: "backup"})
	if err != nil {
		return nil, err
	}
	store.Refresh(lk)
	return lk, nil
}

// baseStillStored reports whether the base backup's record is still in
// the repository, so that everything it references is stored: a gc
// sweep keeps what records reference, reading them after the backups its
// mark waits for (this one, if it ran then) have ended.
func baseStillStored(ctx context.Context, store *hashstore.Store, base *Base, logger *slog.Logger) bool {
	rec, err := store.Backup(ctx, base.Record.Name, hashstore.BackupFilter{})
	if err != nil || rec.Root != base.Record.Root {
		logger.Info("the base backup is gone; scanning the whole source", "base", base.Record.Name, "err", err)
		return false
	}
	return true
}

// putRecord writes rec; without a name it derives one and, where names
// can collide, tries the next.
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

// repositoryInside reports whether store is a directory inside src, and
// its path relative to src as a glob that matches only it.
func repositoryInside(store *hashstore.Store, src string) (string, bool) {
	local, ok := hashstore.As[hashstore.Rooted](store.Backend())
	if !ok {
		return "", false
	}
	root, err := filepath.Abs(local.Root())
	if err != nil {
		return "", false
	}
	src, err = filepath.Abs(src)
	if err != nil {
		return "", false
	}
	rel, err := filepath.Rel(src, root)
	if err != nil || rel == "." || rel == ".." || strings.HasPrefix(rel, "../") {
		return "", false
	}
	return escapeGlob(filepath.ToSlash(rel)), true
}

// escapeGlob quotes glob metacharacters so a literal path matches only
// itself.
func escapeGlob(p string) string {
	var b strings.Builder
	for _, r := range p {
		if strings.ContainsRune(`*?[]{}\`, r) {
			b.WriteByte('\\')
		}
		b.WriteRune(r)
	}
	return b.String()
}

// RepositoryChunking returns the chunking the repository's config asks
// for, as the snapshot takes it, or why it cannot be used.
func RepositoryChunking(store *hashstore.Store) (snapshot.Chunking, error) {
	c, key, err := store.Chunking()
	if err != nil {
		return snapshot.Chunking{}, fmt.Errorf("%s: %w", store, err)
	}
	sc := SnapshotChunking(c, key)
	if err := sc.Check(); err != nil {
		return snapshot.Chunking{}, fmt.Errorf("%s: config: %w", store, err)
	}
	return sc, nil
}

// SnapshotChunking is a repository's chunking c, with its gear key, as
// the snapshot takes it.
func SnapshotChunking(c hashstore.ChunkingConfig, key []byte) snapshot.Chunking {
	return snapshot.Chunking{Algorithm: c.Algorithm, MinSize: c.MinSize, AvgSize: c.AvgSize, MaxSize: c.MaxSize, Threshold: c.Threshold, Key: key}
}
