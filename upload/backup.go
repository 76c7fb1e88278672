package upload

import (
	"context"

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
// and writes its backup record. When snapOpts.Cache is set, the stat cache
// is saved after the record is written, without the files found changed.
func Backup(ctx context.Context, store *hashstore.Store, snapOpts snapshot.Options, opts Options) (*Summary, error) {
	s, err := snapshot.New(snapOpts)
	if err != nil {
		return nil, err
	}
	if opts.Source == "" {
		opts.Source = s.Src()
	}
	snap, err := s.Snapshot(ctx)
	if err != nil {
		return nil, err
	}
	up, err := Upload(ctx, store, snap, opts)
	if err != nil {
		return nil, err
	}
	if cache := snapOpts.Cache; cache != nil {
		for _, p := range up.Changed {
			cache.Forget(p.Path)
		}
		if err := cache.Save(); err != nil {
			// The backup is written; a cache that could not be saved only
			// costs re-reading next time.
			if opts.Logger != nil {
				opts.Logger.Warn("stat cache not saved; the next backup reads every file again", "err", err)
			}
		}
	}
	return &Summary{Snapshot: snap, Upload: up}, nil
}
