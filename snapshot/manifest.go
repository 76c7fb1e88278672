package snapshot

import (
	"context"
	"encoding/base64"

	"github.com/deltabackup/deltabackup/snapshot/digest"
)

// File is a regular file in the terms of rohmu's delta backups: what a
// program built around rohmu's snapshot model expects for each file.
type File struct {
	RelativePath    string        `json:"relative_path"`
	FileSize        int64         `json:"file_size"`
	MtimeNs         int64         `json:"mtime_ns"`
	Mode            uint32        `json:"mode"`
	Hexdigest       digest.Digest `json:"hexdigest"`
	ContentB64      string        `json:"content_b64,omitempty"`
	ShouldBeBundled bool          `json:"should_be_bundled"`
	// Chunks hold a chunked file's data; Hexdigest is then empty.
	Chunks []Hash `json:"chunks,omitempty"`
}

// Hash is rohmu's SnapshotHash: one content that must exist in storage
// for the backup to restore, and its size, so a restore can balance
// sources by bytes.
type Hash struct {
	Hexdigest digest.Digest `json:"hexdigest"`
	Size      int64         `json:"size"`
}

// Files calls fn for every regular file below root in rohmu's terms,
// streamed from the trees (only one directory path is in memory).
// minDelta is the bundling threshold the backup was taken with.
func Files(ctx context.Context, r TreeReader, root digest.Digest, minDelta int64, fn func(File) error) error {
	return Walk(ctx, r, root, func(rel string, n *Node) error {
		if n.Type != TypeFile {
			return nil
		}
		f := File{RelativePath: rel, FileSize: n.Size, MtimeNs: n.MtimeNs, Mode: n.Mode, Hexdigest: n.ID}
		switch {
		case n.IsEmbedded():
			f.ContentB64 = base64.StdEncoding.EncodeToString(n.Embedded)
		case len(n.Chunks) > 0:
			for _, c := range n.Chunks {
				f.Chunks = append(f.Chunks, Hash{Hexdigest: c.ID, Size: c.Size})
			}
		default:
			f.ShouldBeBundled = n.DataSize() < minDelta
		}
		return fn(f)
	})
}

// Hashes calls fn once for every distinct content below root (rohmu's
// list of SnapshotHash). It remembers the ids it has reported, 32 bytes
// each, and no more of the tree than one directory path.
func Hashes(ctx context.Context, r TreeReader, root digest.Digest, fn func(Hash) error) error {
	seen := map[digest.Digest]struct{}{}
	return References(ctx, r, root, 0, func(ref Reference) error {
		if ref.Tree {
			return nil
		}
		if _, ok := seen[ref.ID]; ok {
			return nil
		}
		seen[ref.ID] = struct{}{}
		return fn(Hash{Hexdigest: ref.ID, Size: ref.Size})
	})
}
