package hashstore

import (
	"context"
	"fmt"
	"strings"

	"github.com/deltabackup/deltabackup/snapshot/digest"
)

// RepoStats describes a repository's size and sharing.
type RepoStats struct {
	Backups       int   `json:"backups"`
	StoredBytes   int64 `json:"stored_bytes"` // every key: objects, packs, indexes, records
	LooseObjects  int   `json:"loose_objects"`
	LooseBytes    int64 `json:"loose_bytes"`
	Packs         int   `json:"packs"`
	PackBytes     int64 `json:"pack_bytes"`
	PackedObjects int   `json:"packed_objects"`
	IndexFiles    int   `json:"index_files"`
	// LogicalBytes sums the sizes of every file of every backup;
	// ContentBytes sums the distinct contents they reference; DedupRatio
	// is LogicalBytes over the bytes stored for objects and packs.
	LogicalBytes int64       `json:"logical_bytes"`
	ContentBytes int64       `json:"content_bytes"`
	DedupRatio   float64     `json:"dedup_ratio"`
	PerBackup    []BackupUse `json:"per_backup"`
}

// BackupUse is one backup's share of a repository.
type BackupUse struct {
	Name       string `json:"name"`
	Files      int    `json:"files"`
	TotalBytes int64  `json:"total_bytes"`
	// UniqueBytes is what its objects referenced by no other backup
	// occupy in storage: what forgetting it alone would free after gc.
	UniqueBytes int64 `json:"unique_bytes"`
}

// Stats lists the repository, reads every record and index, and asks
// referrer what each backup references.
func (s *Store) Stats(ctx context.Context, referrer Referrer) (*RepoStats, error) {
	if referrer == nil {
		return nil, ErrNoReferrer
	}
	st := &RepoStats{PerBackup: []BackupUse{}}
	loose := map[digest.Digest]int64{}  // loose name (sealer.looseName) → stored bytes
	packed := map[digest.Digest]int64{} // content id → stored bytes in its pack
	err := s.backend.List(ctx, "", func(info Info) error {
		st.StoredBytes += info.Size
		switch {
		case strings.HasPrefix(info.Key, objectsPrefix):
			if name, ok := parseObjectKey(info.Key); ok {
				st.LooseObjects++
				st.LooseBytes += info.Size
				loose[name] = info.Size
			}
		case strings.HasPrefix(info.Key, packsPrefix):
			st.Packs++
			st.PackBytes += info.Size
		case strings.HasPrefix(info.Key, indexPrefix):
			st.IndexFiles++
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list repository: %w", err)
	}
	ix, err := s.loadIndex(ctx)
	if err != nil {
		return nil, err
	}
	ix.mu.RLock()
	err = ix.entries.all(func(id digest.Digest, loc packLocation) {
		st.PackedObjects++
		packed[id] = int64(loc.length)
	})
	if err == nil {
		// Packs a pending deletion of gc names are stored until swept.
		err = ix.doomedEntries.all(func(id digest.Digest, loc packLocation) {
			if _, ok := packed[id]; !ok {
				st.PackedObjects++
				packed[id] = int64(loc.length)
			}
		})
	}
	ix.mu.RUnlock()
	if err != nil {
		return nil, err
	}

	records, err := s.Backups(ctx)
	if err != nil {
		return nil, err
	}
	st.Backups = len(records)
	users := map[digest.Digest]int{}
	perBackup := make([]map[digest.Digest]bool, len(records))
	contents := map[digest.Digest]int64{}
	for i, rec := range records {
		refs := map[digest.Digest]bool{}
		err := referrer.References(ctx, rec, func(r Ref) error {
			refs[r.ID] = true
			if !r.Metadata {
				contents[r.ID] = r.Size
			}
			return nil
		})
		if err != nil {
			return nil, err
		}
		use := BackupUse{Name: rec.Name, Files: int(rec.Stats.Files), TotalBytes: rec.Stats.TotalBytes}
		for h := range refs {
			users[h]++
		}
		perBackup[i] = refs
		st.LogicalBytes += use.TotalBytes
		st.PerBackup = append(st.PerBackup, use)
	}
	for i, refs := range perBackup {
		for h := range refs {
			if users[h] == 1 {
				st.PerBackup[i].UniqueBytes += storedSize(s.seal, loose, packed, h)
			}
		}
	}
	for _, size := range contents {
		st.ContentBytes += size
	}
	if data := st.LooseBytes + st.PackBytes; data > 0 {
		st.DedupRatio = float64(st.LogicalBytes) / float64(data)
	}
	return st, nil
}

// storedSize is what the object id takes in storage: its loose copy if it
// has one (named by keyed hash, computed only when there are loose
// objects), else its packed one.
func storedSize(seal *sealer, loose, packed map[digest.Digest]int64, id digest.Digest) int64 {
	if len(loose) > 0 {
		if size, ok := loose[seal.looseName(id)]; ok {
			return size
		}
	}
	return packed[id]
}
