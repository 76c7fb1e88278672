package hashstore

import (
	"context"
	"encoding/hex"
	"fmt"
	"strings"

	"github.com/deltabackup/deltabackup/snapshot"
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

// Stats reads every record, manifest and index, and lists the repository.
func (s *Store) Stats(ctx context.Context) (*RepoStats, error) {
	st := &RepoStats{PerBackup: []BackupUse{}}
	stored := map[string]int64{} // hexdigest → stored bytes
	err := s.backend.List(ctx, "", func(info Info) error {
		st.StoredBytes += info.Size
		switch {
		case strings.HasPrefix(info.Key, "objects/"):
			h := info.Key[strings.LastIndexByte(info.Key, '/')+1:]
			if snapshot.ValidHexdigest(h) && info.Key == ObjectKey(h) {
				st.LooseObjects++
				st.LooseBytes += info.Size
				stored[h] = info.Size
			}
		case strings.HasPrefix(info.Key, "packs/"):
			st.Packs++
			st.PackBytes += info.Size
		case strings.HasPrefix(info.Key, "index/"):
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
	st.PackedObjects = len(ix.entries)
	for id, loc := range ix.entries {
		h := hex.EncodeToString(id[:])
		if _, loose := stored[h]; !loose {
			stored[h] = int64(loc.length)
		}
	}
	ix.mu.RUnlock()

	records, err := s.Backups(ctx)
	if err != nil {
		return nil, err
	}
	st.Backups = len(records)
	users := map[string]int{}
	perBackup := make([]map[string]bool, len(records))
	contents := map[string]int64{}
	for i, rec := range records {
		m, chain, err := s.ManifestChain(ctx, rec)
		if err != nil {
			return nil, err
		}
		refs := map[string]bool{}
		for _, h := range chain {
			refs[h] = true
		}
		use := BackupUse{Name: rec.Name, Files: len(m.Files)}
		for _, f := range m.Files {
			use.TotalBytes += f.FileSize
			if !f.Embedded() {
				refs[f.Hexdigest] = true
				contents[f.Hexdigest] = f.FileSize
			}
		}
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
				st.PerBackup[i].UniqueBytes += stored[h]
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
