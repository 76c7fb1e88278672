package treetest

import (
	"context"
	"testing"

	"github.com/deltabackup/deltabackup/snapshot"
	"github.com/deltabackup/deltabackup/snapshot/digest"
)

// FileNodes walks the tree at root into a map of its regular files'
// nodes by path.
func FileNodes(t testing.TB, trees snapshot.TreeReader, root digest.Digest) map[string]*snapshot.Node {
	t.Helper()
	out := map[string]*snapshot.Node{}
	err := snapshot.Walk(context.Background(), trees, root, func(rel string, n *snapshot.Node) error {
		if n.Type == snapshot.TypeFile {
			c := *n
			out[rel] = &c
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}
