package snapshot

import (
	"sort"

	"github.com/deltabackup/deltabackup/snapshot/digest"
)

// Change is one path that differs between two manifests.
type Change struct {
	Path string `json:"path"`
	// What differs for a changed path: "content", "mode", "type"
	// (file, symlink or empty dir), "target" (symlink).
	What    []string `json:"what,omitempty"`
	OldSize int64    `json:"old_size"`
	NewSize int64    `json:"new_size"`
}

// Diff is what changed from one manifest to another.
type Diff struct {
	Added        []Change `json:"added"`
	Removed      []Change `json:"removed"`
	Changed      []Change `json:"changed"`
	AddedBytes   int64    `json:"added_bytes"`   // sizes of added files
	RemovedBytes int64    `json:"removed_bytes"` // sizes of removed files
	// NewContentBytes is the size of the contents the new manifest has and
	// the old one has not: what a backup of it would upload.
	NewContentBytes int64 `json:"new_content_bytes"`
}

type entry struct {
	kind    string // "file", "symlink", "dir"
	size    int64
	content string // hexdigest, embedded content or symlink target
	mode    uint32
}

func entries(m *Manifest) map[string]entry {
	out := make(map[string]entry, len(m.Files)+len(m.Symlinks)+len(m.EmptyDirs))
	for _, f := range m.Files {
		c := f.Hexdigest.String()
		if f.Embedded() {
			c = "embedded:" + f.ContentB64
		}
		out[f.RelativePath] = entry{kind: "file", size: f.FileSize, content: c, mode: f.Mode}
	}
	for _, s := range m.Symlinks {
		out[s.RelativePath] = entry{kind: "symlink", content: s.Target}
	}
	for _, d := range m.EmptyDirs {
		out[d] = entry{kind: "dir"}
	}
	return out
}

// Compare returns what changed from old to new: added, removed and changed
// files, symlinks and empty directories, sorted by path. Modification
// times alone are not changes.
func Compare(old, new *Manifest) Diff {
	a, b := entries(old), entries(new)
	d := Diff{Added: []Change{}, Removed: []Change{}, Changed: []Change{}}
	for p, e := range b {
		o, ok := a[p]
		switch {
		case !ok:
			d.Added = append(d.Added, Change{Path: p, NewSize: e.size})
			d.AddedBytes += e.size
		case o != e:
			c := Change{Path: p, OldSize: o.size, NewSize: e.size}
			if o.kind != e.kind {
				c.What = append(c.What, "type")
			} else {
				if o.content != e.content {
					c.What = append(c.What, map[string]string{"file": "content", "symlink": "target"}[e.kind])
				}
				if o.mode != e.mode {
					c.What = append(c.What, "mode")
				}
			}
			d.Changed = append(d.Changed, c)
		}
	}
	for p, e := range a {
		if _, ok := b[p]; !ok {
			d.Removed = append(d.Removed, Change{Path: p, OldSize: e.size})
			d.RemovedBytes += e.size
		}
	}
	had := make(map[digest.Digest]bool, len(old.Hashes))
	for _, h := range old.Hashes {
		had[h.Hexdigest] = true
	}
	for _, h := range new.Hashes {
		if !had[h.Hexdigest] {
			d.NewContentBytes += h.Size
		}
	}
	for _, l := range [][]Change{d.Added, d.Removed, d.Changed} {
		sort.Slice(l, func(i, j int) bool { return l[i].Path < l[j].Path })
	}
	return d
}
