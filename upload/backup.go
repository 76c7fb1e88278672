package upload

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/deltabackup/deltabackup/hashstore"
	"github.com/deltabackup/deltabackup/snapshot"
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

// Backup snapshots the source described by snapOpts, uploads it to store
// and writes its backup record. Small files are stored as they are hashed,
// from the bytes just read, so each is read once; larger ones are read
// again and re-verified during the upload. When snapOpts.Cache is set, the
// stat cache is saved after the record is written, without the files found
// changed (or only kept in memory, with opts.KeepStatCacheInMemory).
func Backup(ctx context.Context, store *hashstore.Store, snapOpts snapshot.Options, opts Options) (*Summary, error) {
	lk, err := lock(ctx, store, opts)
	if err != nil {
		return nil, err
	}
	defer lk.Unlock()
	early := newEarlyUploader(ctx, store, opts.PackSize)
	snapOpts.OnContent = early.content
	s, err := snapshot.New(snapOpts)
	if err != nil {
		return nil, err
	}
	if opts.Source == "" {
		opts.Source = s.Src()
	}
	snap, err := s.Snapshot(ctx)
	if err != nil {
		early.packer.Abort()
		return nil, err
	}
	if err := early.packer.Flush(ctx); err != nil {
		return nil, err
	}
	if opts.BaseManifest == nil {
		opts.BaseManifest = snapOpts.Base
	}
	up, err := upload(ctx, store, lk, snap, opts, early)
	if err != nil {
		return nil, err
	}
	if err := store.SaveCache(); err != nil && opts.Logger != nil {
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
		if opts.Logger != nil {
			opts.Logger.Debug("saved stat cache", "recorded", recorded, "seconds", time.Since(start).Seconds())
		}
		if err != nil {
			// The backup is written; a cache that could not be saved only
			// costs re-reading next time.
			if opts.Logger != nil {
				opts.Logger.Warn("stat cache not saved; the next backup reads every file again", "err", err)
			}
		}
	}
	return &Summary{Snapshot: snap, Upload: up}, nil
}

// earlyUploader stores small contents during the snapshot, from the bytes
// the hashing worker has just read and verified, so a full backup reads
// each small file once. Contents the repository already holds are skipped.
type earlyUploader struct {
	store  *hashstore.Store
	packer *hashstore.Packer

	mu   sync.Mutex
	seen map[string]bool

	objects, storedBytes, contentBytes atomic.Int64
}

func newEarlyUploader(ctx context.Context, store *hashstore.Store, packSize int) *earlyUploader {
	return &earlyUploader{store: store, packer: store.NewPacker(ctx, packSize), seen: map[string]bool{}}
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
