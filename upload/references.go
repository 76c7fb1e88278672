package upload

import (
	"context"
	"fmt"

	"github.com/deltabackup/deltabackup/hashstore"
	"github.com/deltabackup/deltabackup/snapshot"
)

// Referrer is the hashstore.Referrer of this repository format: it reads
// each backup's manifests from the repository they are stored in, for gc,
// verify, copy and stats, which never decode manifests themselves.
type Referrer struct{ Store *hashstore.Store }

// References implements hashstore.Referrer.
func (r Referrer) References(ctx context.Context, rec hashstore.BackupRecord, fn func(hashstore.Ref) error) error {
	err := snapshot.References(ctx, r.Store, rec.Root, func(ref snapshot.Reference) error {
		return fn(hashstore.Ref{ID: ref.ID, Metadata: ref.Metadata, Path: ref.Path, Size: ref.Size, Bundled: ref.Bundled})
	})
	if err != nil {
		return fmt.Errorf("backup %s: %w", rec.Name, err)
	}
	return nil
}
