package restore

import (
	"context"
	"fmt"
	"path"
	"slices"
	"strings"

	"github.com/bmatcuk/doublestar/v4"

	"github.com/deltabackup/deltabackup/snapshot"
	"github.com/deltabackup/deltabackup/snapshot/digest"
)

// filter decides which paths (relative to the restored root) a restore
// writes.
type filter struct {
	includes, excludes []string
}

func newFilter(includes, excludes []string) (*filter, error) {
	for _, g := range slices.Concat(includes, excludes) {
		if !doublestar.ValidatePattern(g) {
			return nil, fmt.Errorf("invalid glob %q", g)
		}
	}
	return &filter{includes: includes, excludes: excludes}, nil
}

func matchAny(globs []string, rel string) bool {
	for _, g := range globs {
		if ok, _ := doublestar.Match(g, rel); ok {
			return true
		}
	}
	return false
}

// excluded reports whether rel (and all below it) is left out.
func (f *filter) excluded(rel string) bool { return rel != "" && matchAny(f.excludes, rel) }

// selects reports whether rel is restored, given whether the directory
// above it was: without includes everything is; with them, what matches
// one and everything below it ("" is the restored root, which no include
// names).
func (f *filter) selects(rel string, parentSelected bool) bool {
	return parentSelected || len(f.includes) == 0 || (rel != "" && matchAny(f.includes, rel))
}

// linkGroup is one inode of the backed-up file system.
type linkGroup struct{ dev, ino uint64 }

// linkSig is what every name of a hard-link group must agree on.
type linkSig struct {
	size     int64
	id       digest.Digest
	embedded digest.Digest
	chunks   int
	sparse   bool
	path     string
}

// validate reads every tree the restore will use, checks what a tree
// cannot check alone (hard-link groups agree, extended attributes this
// user may set) and returns what will be restored, for progress. Nothing
// is written before it succeeds.
func (r *restorer) validate(ctx context.Context, root digest.Digest) (snapshot.Counts, error) {
	var counts snapshot.Counts
	groups := map[linkGroup]linkSig{}
	selected := map[string]bool{"": r.filter.selects("", false)} // directories selected, by restored path
	err := r.walkBackup(ctx, root, func(rel string, n *snapshot.Node) error {
		if r.filter.excluded(rel) {
			return snapshot.SkipDir
		}
		parent := parentOf(rel)
		sel := r.filter.selects(rel, selected[parent])
		if rel == "" {
			sel = selected[""]
		}
		if n.Type == snapshot.TypeDir {
			selected[rel] = sel
		}
		if !r.asRoot {
			for _, x := range n.Xattrs {
				if !strings.HasPrefix(x.Name, "user.") && !strings.HasPrefix(x.Name, "system.posix_acl_") {
					return fmt.Errorf("entry %q has the extended attribute %q: as a user other than root only user.* attributes and ACLs can be restored: %w", rel, x.Name, errPrivilegedXattr)
				}
			}
		}
		if n.Type != snapshot.TypeFile || !sel {
			return nil
		}
		counts.Files++
		counts.Bytes += n.Size
		if n.Hardlinked() {
			sig := linkSig{size: n.Size, id: n.ID, chunks: len(n.Chunks), sparse: n.Sparse, path: rel}
			if n.IsEmbedded() {
				sig.embedded = digest.Of(n.Embedded)
			}
			g := linkGroup{n.LinkDev, n.LinkIno}
			if first, ok := groups[g]; ok {
				if first.size != sig.size || first.id != sig.id || first.embedded != sig.embedded || first.chunks != sig.chunks || first.sparse != sig.sparse {
					return fmt.Errorf("entry %q: %w: it is a hard link of %q, but their contents differ", rel, snapshot.ErrInvalidTree, first.path)
				}
			} else {
				groups[g] = sig
			}
		}
		return nil
	})
	return counts, err
}

// errPrivilegedXattr is a backup holding extended attributes only root
// may set, restored by another user.
var errPrivilegedXattr = fmt.Errorf("extended attributes need root")

// ErrPrivilegedXattr is wrapped by the error of a restore, by a user
// other than root, of a backup holding trusted.* or security.*
// attributes.
var ErrPrivilegedXattr = errPrivilegedXattr

func parentOf(rel string) string {
	if i := strings.LastIndexByte(rel, '/'); i >= 0 {
		return rel[:i]
	}
	return ""
}

// walkBackup calls fn for the restored root (path "") and every entry
// below it, depth first, with paths relative to the restored root.
func (r *restorer) walkBackup(ctx context.Context, root digest.Digest, fn func(rel string, n *snapshot.Node) error) error {
	sub := r.opts.Path
	prefix := ""
	if sub != "" {
		prefix = sub + "/"
	}
	return snapshot.WalkFrom(ctx, r.trees, root, sub, func(rel string, n *snapshot.Node) error {
		switch {
		case rel == sub && n.Type != snapshot.TypeDir:
			rel = path.Base(sub) // a single file restored into the target
		case rel == sub:
			rel = ""
		case strings.HasPrefix(rel, prefix):
			rel = rel[len(prefix):]
		}
		return fn(rel, n)
	})
}
