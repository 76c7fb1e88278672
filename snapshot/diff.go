package snapshot

import (
	"bytes"
	"context"
	"slices"

	"github.com/deltabackup/deltabackup/snapshot/digest"
)

// Change is one path that differs between two trees.
type Change struct {
	Path string `json:"path"`
	// Kind is "added", "removed" or "changed".
	Kind string   `json:"kind"`
	Type NodeType `json:"-"`
	// What differs for a changed path: "type", "content", "target",
	// "mode", "owner", "xattrs", "device", "links".
	What    []string `json:"what,omitempty"`
	OldSize int64    `json:"old_size"`
	NewSize int64    `json:"new_size"`
}

// DiffStats sum up a comparison.
type DiffStats struct {
	Added        int64 `json:"added"`
	Removed      int64 `json:"removed"`
	Changed      int64 `json:"changed"`
	AddedBytes   int64 `json:"added_bytes"`   // sizes of added files
	RemovedBytes int64 `json:"removed_bytes"` // sizes of removed files
	// ChangedBytes is the size of the files whose content changed, in the
	// new tree.
	ChangedBytes int64 `json:"changed_bytes"`
}

// Compare calls fn for every path that differs from the tree old to the
// tree new, in path order: entries added and removed (a directory and
// everything in it), and entries changed. A subtree with the same id in
// both is skipped unread. Modification times alone are not changes.
func Compare(ctx context.Context, r TreeReader, old, new digest.Digest, fn func(Change) error) (DiffStats, error) {
	var st DiffStats
	if old == new {
		return st, nil
	}
	a, err := LoadTree(ctx, r, old, "")
	if err != nil {
		return st, err
	}
	b, err := LoadTree(ctx, r, new, "")
	if err != nil {
		return st, err
	}
	c := &comparer{r: r, fn: fn, st: &st}
	return st, c.trees(ctx, "", a, b)
}

type comparer struct {
	r  TreeReader
	fn func(Change) error
	st *DiffStats
}

func (c *comparer) trees(ctx context.Context, rel string, a, b *Tree) error {
	i, j := 0, 0
	for i < len(a.Nodes) || j < len(b.Nodes) {
		if err := ctx.Err(); err != nil {
			return err
		}
		switch {
		case j >= len(b.Nodes) || (i < len(a.Nodes) && a.Nodes[i].Name < b.Nodes[j].Name):
			if err := c.whole(ctx, joinRel(rel, a.Nodes[i].Name), &a.Nodes[i], "removed"); err != nil {
				return err
			}
			i++
		case i >= len(a.Nodes) || b.Nodes[j].Name < a.Nodes[i].Name:
			if err := c.whole(ctx, joinRel(rel, b.Nodes[j].Name), &b.Nodes[j], "added"); err != nil {
				return err
			}
			j++
		default:
			if err := c.pair(ctx, joinRel(rel, a.Nodes[i].Name), &a.Nodes[i], &b.Nodes[j]); err != nil {
				return err
			}
			i++
			j++
		}
	}
	return nil
}

// whole reports n and everything below it as added or removed.
func (c *comparer) whole(ctx context.Context, rel string, n *Node, kind string) error {
	ch := Change{Path: rel, Kind: kind, Type: n.Type}
	if kind == "added" {
		ch.NewSize = n.Size
		c.st.Added++
		c.st.AddedBytes += n.Size
	} else {
		ch.OldSize = n.Size
		c.st.Removed++
		c.st.RemovedBytes += n.Size
	}
	if err := c.fn(ch); err != nil {
		return err
	}
	if n.Type != TypeDir {
		return nil
	}
	t, err := LoadTree(ctx, c.r, n.Subtree, rel)
	if err != nil {
		return err
	}
	for i := range t.Nodes {
		if err := c.whole(ctx, joinRel(rel, t.Nodes[i].Name), &t.Nodes[i], kind); err != nil {
			return err
		}
	}
	return nil
}

func (c *comparer) pair(ctx context.Context, rel string, a, b *Node) error {
	if a.Type != b.Type {
		if err := c.whole(ctx, rel, a, "removed"); err != nil {
			return err
		}
		return c.whole(ctx, rel, b, "added")
	}
	var what []string
	if a.Mode != b.Mode {
		what = append(what, "mode")
	}
	if a.UID != b.UID || a.GID != b.GID || a.User != b.User || a.Group != b.Group {
		what = append(what, "owner")
	}
	if !slices.EqualFunc(a.Xattrs, b.Xattrs, func(x, y Xattr) bool { return x.Name == y.Name && bytes.Equal(x.Value, y.Value) }) {
		what = append(what, "xattrs")
	}
	switch a.Type {
	case TypeFile:
		if !sameContent(a, b) {
			what = append([]string{"content"}, what...)
			c.st.ChangedBytes += b.Size
		}
		if a.Hardlinked() != b.Hardlinked() {
			what = append(what, "links")
		}
	case TypeSymlink:
		if a.Target != b.Target {
			what = append([]string{"target"}, what...)
		}
	case TypeCharDevice, TypeBlockDevice:
		if a.Rdev != b.Rdev {
			what = append(what, "device")
		}
	}
	if len(what) > 0 {
		c.st.Changed++
		if err := c.fn(Change{Path: rel, Kind: "changed", Type: a.Type, What: what, OldSize: a.Size, NewSize: b.Size}); err != nil {
			return err
		}
	}
	if a.Type != TypeDir || a.Subtree == b.Subtree {
		return nil
	}
	ta, err := LoadTree(ctx, c.r, a.Subtree, rel)
	if err != nil {
		return err
	}
	tb, err := LoadTree(ctx, c.r, b.Subtree, rel)
	if err != nil {
		return err
	}
	return c.trees(ctx, rel, ta, tb)
}

// sameContent reports whether two file nodes hold the same data.
func sameContent(a, b *Node) bool {
	return a.Size == b.Size && a.ID == b.ID && bytes.Equal(a.Embedded, b.Embedded) && a.IsEmbedded() == b.IsEmbedded() &&
		slices.Equal(a.Chunks, b.Chunks) && a.Sparse == b.Sparse && slices.Equal(a.Data, b.Data)
}
