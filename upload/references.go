package upload

import (
	"context"
	"errors"
	"fmt"

	"github.com/deltabackup/deltabackup/hashstore"
	"github.com/deltabackup/deltabackup/snapshot"
	"github.com/deltabackup/deltabackup/snapshot/digest"
)

// Trees reads the tree objects of a repository (a snapshot.TreeReader).
type Trees struct{ Store *hashstore.Store }

// ReadTree implements snapshot.TreeReader: the object is verified against
// its id and may not claim more than a tree may hold.
func (t *Trees) ReadTree(ctx context.Context, id digest.Digest) ([]byte, error) {
	return t.Store.ReadMetadata(ctx, id, snapshot.MaxTreeSize)
}

// Referrer is the hashstore.Referrer of this repository format: it reads
// each backup's trees from the repository they are stored in, for gc,
// verify, copy and stats, which never decode trees themselves.
type Referrer struct{ Store *hashstore.Store }

// References implements hashstore.Referrer.
func (r Referrer) References(ctx context.Context, rec hashstore.BackupRecord, fn func(hashstore.Ref) error) error {
	err := snapshot.References(ctx, &Trees{Store: r.Store}, rec.Root, rec.MinDeltaFileSize, func(ref snapshot.Reference) error {
		err := fn(hashstore.Ref{ID: ref.ID, Metadata: ref.Tree, Path: ref.Path, Size: ref.Size, Bundled: ref.Tree || ref.Bundled})
		if errors.Is(err, hashstore.ErrSkip) {
			return snapshot.SkipDir
		}
		return err
	})
	if err != nil {
		return fmt.Errorf("backup %s: %w", rec.Name, err)
	}
	return nil
}
