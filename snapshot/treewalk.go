package snapshot

import (
	"context"
	"errors"
	"fmt"

	"github.com/deltabackup/deltabackup/snapshot/digest"
)

// TreeReadError is a tree object that could not be read or is not a
// valid tree; Path is the directory it describes ("" for the root).
type TreeReadError struct {
	ID   digest.Digest
	Path string
	Err  error
}

func (e *TreeReadError) Error() string {
	where := "root tree"
	if e.Path != "" {
		where = fmt.Sprintf("tree of %q", e.Path)
	}
	return fmt.Sprintf("%s %s: %v", where, e.ID, e.Err)
}

func (e *TreeReadError) Unwrap() error { return e.Err }

// LoadTree reads and decodes the tree id, describing directory rel.
func LoadTree(ctx context.Context, r TreeReader, id digest.Digest, rel string) (*Tree, error) {
	data, err := r.ReadTree(ctx, id)
	if err != nil {
		return nil, &TreeReadError{ID: id, Path: rel, Err: err}
	}
	t, err := DecodeTree(data)
	if err != nil {
		return nil, &TreeReadError{ID: id, Path: rel, Err: err}
	}
	return t, nil
}

// SkipDir, returned by a Walk function for a directory, skips what lies
// below it.
//
//lint:ignore ST1012 named as io/fs.SkipDir, which callers know
var SkipDir = errors.New("skip this directory")

// ErrTreeCycle is a tree that names itself or a tree above it as a
// subtree: a hostile repository's, never one this program writes.
var ErrTreeCycle = errors.New("a tree references itself or a directory above it")

// Walk calls fn for every entry below the root tree root, depth first and
// in name order, with its slash-separated path relative to the root; the
// root's own node comes first, with path "" (a tree without one gets an
// unnamed directory node). Only the trees on the path being walked are in
// memory. An error from fn stops the walk and is returned, except SkipDir
// for a directory.
func Walk(ctx context.Context, r TreeReader, root digest.Digest, fn func(rel string, n *Node) error) error {
	t, err := LoadTree(ctx, r, root, "")
	if err != nil {
		return err
	}
	self := Node{Type: TypeDir, Subtree: root}
	if t.Self != nil {
		self = *t.Self
		self.Subtree = root
	}
	if err := fn("", &self); err != nil {
		if errors.Is(err, SkipDir) {
			return nil
		}
		return err
	}
	return walkTree(ctx, r, t, "", []digest.Digest{root}, fn)
}

// WalkFrom is Walk of the subtree at path sub (a directory) of root; the
// paths fn receives stay relative to root.
func WalkFrom(ctx context.Context, r TreeReader, root digest.Digest, sub string, fn func(rel string, n *Node) error) error {
	if sub == "" {
		return Walk(ctx, r, root, fn)
	}
	n, chain, err := Lookup(ctx, r, root, sub)
	if err != nil {
		return err
	}
	if err := fn(sub, n); err != nil {
		if errors.Is(err, SkipDir) {
			return nil
		}
		return err
	}
	if n.Type != TypeDir {
		return nil
	}
	t, err := LoadTree(ctx, r, n.Subtree, sub)
	if err != nil {
		return err
	}
	return walkTree(ctx, r, t, sub, append(chain, n.Subtree), fn)
}

func walkTree(ctx context.Context, r TreeReader, t *Tree, rel string, ancestors []digest.Digest, fn func(string, *Node) error) error {
	for i := range t.Nodes {
		if err := ctx.Err(); err != nil {
			return err
		}
		n := &t.Nodes[i]
		childRel := joinRel(rel, n.Name)
		err := fn(childRel, n)
		if errors.Is(err, SkipDir) {
			continue
		}
		if err != nil {
			return err
		}
		if n.Type != TypeDir {
			continue
		}
		for _, a := range ancestors {
			if a == n.Subtree {
				return &TreeReadError{ID: n.Subtree, Path: childRel, Err: fmt.Errorf("%w: %w", ErrInvalidTree, ErrTreeCycle)}
			}
		}
		sub, err := LoadTree(ctx, r, n.Subtree, childRel)
		if err != nil {
			return err
		}
		if err := walkTree(ctx, r, sub, childRel, append(ancestors, n.Subtree), fn); err != nil {
			return err
		}
	}
	return nil
}

// ErrNoSuchPath is a path a tree does not hold.
var ErrNoSuchPath = errors.New("no such file or directory in the backup")

// Lookup finds the node at path p (slash-separated, relative to root; ""
// is the root itself) and returns it with the ids of the trees above it.
func Lookup(ctx context.Context, r TreeReader, root digest.Digest, p string) (*Node, []digest.Digest, error) {
	t, err := LoadTree(ctx, r, root, "")
	if err != nil {
		return nil, nil, err
	}
	chain := []digest.Digest{root}
	if p == "" {
		n := Node{Type: TypeDir, Subtree: root}
		if t.Self != nil {
			n = *t.Self
			n.Subtree = root
		}
		return &n, nil, nil
	}
	if err := ValidatePath(p); err != nil {
		return nil, nil, err
	}
	rel := ""
	parts := splitPath(p)
	for i, name := range parts {
		n := t.find(name)
		if n == nil {
			return nil, nil, fmt.Errorf("%q: %w", p, ErrNoSuchPath)
		}
		rel = joinRel(rel, name)
		if i == len(parts)-1 {
			return n, chain, nil
		}
		if n.Type != TypeDir {
			return nil, nil, fmt.Errorf("%q: %w (%q is a %s)", p, ErrNoSuchPath, rel, n.Type)
		}
		for _, a := range chain {
			if a == n.Subtree {
				return nil, nil, &TreeReadError{ID: n.Subtree, Path: rel, Err: fmt.Errorf("%w: %w", ErrInvalidTree, ErrTreeCycle)}
			}
		}
		if t, err = LoadTree(ctx, r, n.Subtree, rel); err != nil {
			return nil, nil, err
		}
		chain = append(chain, n.Subtree)
	}
	return nil, nil, fmt.Errorf("%q: %w", p, ErrNoSuchPath)
}

func splitPath(p string) []string {
	var parts []string
	start := 0
	for i := 0; i <= len(p); i++ {
		if i == len(p) || p[i] == '/' {
			parts = append(parts, p[start:i])
			start = i + 1
		}
	}
	return parts
}

// find returns the node called name (nodes are sorted), or nil.
func (t *Tree) find(name string) *Node {
	lo, hi := 0, len(t.Nodes)
	for lo < hi {
		mid := (lo + hi) / 2
		if t.Nodes[mid].Name < name {
			lo = mid + 1
		} else {
			hi = mid
		}
	}
	if lo < len(t.Nodes) && t.Nodes[lo].Name == name {
		return &t.Nodes[lo]
	}
	return nil
}

// Reference is one object a backup's root tree leads to.
type Reference struct {
	ID digest.Digest
	// Tree marks a tree object; the others hold file data.
	Tree bool
	// Path is the directory a tree describes, or the file that holds
	// the content.
	Path string
	// Size is the content's size (-1 for a tree, whose size only its
	// reader knows).
	Size int64
	// Bundled marks a content below the bundling threshold.
	Bundled bool
}

// References calls fn for every object the tree root leads to: each tree
// before it is read (so when References fails on a tree, the last
// reported tree is the one at fault), and each file's objects. fn may
// return SkipDir for a tree: what lies only below it is not reported
// (gc marking a tree it has seen). minDelta is the bundling threshold.
func References(ctx context.Context, r TreeReader, root digest.Digest, minDelta int64, fn func(Reference) error) error {
	if err := fn(Reference{ID: root, Tree: true, Size: -1}); err != nil {
		if errors.Is(err, SkipDir) {
			return nil
		}
		return err
	}
	t, err := LoadTree(ctx, r, root, "")
	if err != nil {
		return err
	}
	return references(ctx, r, t, "", []digest.Digest{root}, minDelta, fn)
}

func references(ctx context.Context, r TreeReader, t *Tree, rel string, ancestors []digest.Digest, minDelta int64, fn func(Reference) error) error {
	for i := range t.Nodes {
		if err := ctx.Err(); err != nil {
			return err
		}
		n := &t.Nodes[i]
		childRel := joinRel(rel, n.Name)
		switch n.Type {
		case TypeFile:
			if !n.ID.IsZero() {
				size := n.DataSize()
				if err := fn(Reference{ID: n.ID, Path: childRel, Size: size, Bundled: size < minDelta}); err != nil {
					return err
				}
			}
			for _, c := range n.Chunks {
				if err := fn(Reference{ID: c.ID, Path: childRel, Size: c.Size, Bundled: c.Size < minDelta}); err != nil {
					return err
				}
			}
		case TypeDir:
			for _, a := range ancestors {
				if a == n.Subtree {
					return &TreeReadError{ID: n.Subtree, Path: childRel, Err: fmt.Errorf("%w: %w", ErrInvalidTree, ErrTreeCycle)}
				}
			}
			err := fn(Reference{ID: n.Subtree, Tree: true, Path: childRel, Size: -1})
			if errors.Is(err, SkipDir) {
				continue
			}
			if err != nil {
				return err
			}
			sub, err := LoadTree(ctx, r, n.Subtree, childRel)
			if err != nil {
				return err
			}
			if err := references(ctx, r, sub, childRel, append(ancestors, n.Subtree), minDelta, fn); err != nil {
				return err
			}
		}
	}
	return nil
}
