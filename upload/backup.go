package upload

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/deltabackup/deltabackup/hashstore"
	"github.com/deltabackup/deltabackup/snapshot"
	"github.com/deltabackup/deltabackup/snapshot/digest"
)

// Summary is the outcome of a whole backup.
type Summary struct {
	Snapshot *snapshot.Result
	Upload   *Result
}

// Incomplete reports whether some selected files are not in the backup
// because they could not be read or kept changing (the CLI's exit code 3).
func (s *Summary) Incomplete() bool {
	return len(s.Snapshot.Unreadable) > 0 || len(s.Snapshot.Changed) > 0 || len(s.Upload.Changed) > 0
}

// Changed lists files left out because they changed while being read or
// after they were hashed.
func (s *Summary) Changed() []snapshot.Problem {
	return append(append([]snapshot.Problem{}, s.Snapshot.Changed...), s.Upload.Changed...)
}

// Base returns what a later incremental backup of the same source builds
// on (Options.Base).
func (s *Summary) Base() *Base {
	return &Base{Record: s.Upload.Record, Manifest: s.Snapshot.Manifest}
}

// Backup snapshots the source described by snapOpts, uploads it to store
// and writes its backup record. Small files are stored as they are hashed,
// from the bytes just read, so each is read once; larger ones are read
// again and re-verified during the upload. With opts.Base, the snapshot
// starts from the base's manifest and examines only snapOpts.Dirty. When
// snapOpts.Cache is set, the stat cache is saved after the record is
// written, without the files found changed (or only kept in memory, with
// opts.KeepStatCacheInMemory).
func Backup(ctx context.Context, store *hashstore.Store, snapOpts snapshot.Options, opts Options) (*Summary, error) {
	opts = opts.withDefaults()
	lk, err := lock(ctx, store, opts)
	if err != nil {
		return nil, err
	}
	defer lk.Unlock()
	if opts.Base != nil {
		snapOpts.Base = opts.Base.Manifest
	}
	if rel, inside := repositoryInside(store, snapOpts.Src); inside {
		// Backing up the repository into itself would grow it every night.
		opts.Logger.Warn("the repository lies inside the source; leaving it out", "path", rel)
		snapOpts.Excludes = append(slices.Clip(snapOpts.Excludes), rel)
	}
	early := newEarlyUploader(store)
	snapOpts.OnContent = early.content
	s, err := snapshot.New(snapOpts)
	if err != nil {
		return nil, err
	}
	if opts.Source == "" {
		opts.Source = s.Src()
	}
	var snap *snapshot.Result
	err = store.WithPacker(ctx, opts.PackSize, func(ctx context.Context, packer *hashstore.Packer) error {
		early.packer = packer // before the snapshot calls early.content
		snap, err = s.Snapshot(ctx)
		return err
	})
	if err != nil {
		return nil, err
	}
	up, err := upload(ctx, store, lk, snap, opts, early)
	if err != nil {
		return nil, err
	}
	if err := store.SaveCache(); err != nil {
		opts.Logger.Warn("local repository cache not saved; the next backup asks storage again", "err", err)
	}
	if cache := snapOpts.Cache; cache != nil {
		for _, p := range up.Changed {
			cache.Forget(p.Path)
		}
		if opts.KeepStatCacheInMemory {
			cache.Keep()
			return &Summary{Snapshot: snap, Upload: up}, nil
		}
		start, recorded := time.Now(), cache.Len()
		err := cache.Save()
		opts.Logger.Debug("saved stat cache", "recorded", recorded, "seconds", time.Since(start).Seconds())
		if err != nil {
			// The backup is written; a cache that could not be saved only
			// costs re-reading next time.
			opts.Logger.Warn("stat cache not saved; the next backup reads every file again", "err", err)
		}
	}
	return &Summary{Snapshot: snap, Upload: up}, nil
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
	if err != nil || rel == ".." || strings.HasPrefix(rel, "../") {
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

// earlyUploader stores small contents during the snapshot, from the bytes
// the hashing worker has just read and verified, so a full backup reads
// each small file once. Contents the repository already holds are skipped.
type earlyUploader struct {
	store  *hashstore.Store
	packer *hashstore.Packer // valid while the snapshot runs

	mu   sync.Mutex
	seen map[digest.Digest]bool

	objects, storedBytes, contentBytes atomic.Int64
}

func newEarlyUploader(store *hashstore.Store) *earlyUploader {
	return &earlyUploader{store: store, seen: map[digest.Digest]bool{}}
}

func (u *earlyUploader) content(ctx context.Context, f snapshot.File, content []byte) error {
	u.mu.Lock()
	seen := u.seen[f.Hexdigest]
	u.seen[f.Hexdigest] = true
	u.mu.Unlock()
	if seen {
		return nil
	}
	// A bundled content lives in a pack if anywhere: the in-memory index
	// answers without a request. Others need a lookup.
	var has bool
	var err error
	if f.ShouldBeBundled {
		has, err = u.store.HasPacked(ctx, f.Hexdigest)
	} else {
		has, err = u.store.Has(ctx, f.Hexdigest)
	}
	if err != nil || has {
		return err
	}
	var put hashstore.PutResult
	if f.ShouldBeBundled {
		put, err = u.packer.AddHashed(ctx, f.Hexdigest, content) // hashed by the snapshot from these bytes
	} else {
		put, err = u.store.PutBytes(ctx, f.Hexdigest, content)
	}
	if err != nil {
		return fmt.Errorf("store %s (%s): %w", f.Hexdigest, f.RelativePath, err)
	}
	u.objects.Add(1)
	u.storedBytes.Add(put.StoredSize)
	u.contentBytes.Add(f.FileSize)
	return nil
}
