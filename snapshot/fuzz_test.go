package snapshot

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
)

// FuzzDecodeTree: no input crashes the decoder or allocates beyond what
// it holds, and whatever decodes encodes back to the same bytes (a tree's
// encoding is unique, so its id is).
func FuzzDecodeTree(f *testing.F) {
	seed, _ := sampleTree().Encode()
	f.Add(seed)
	empty, _ := (&Tree{}).Encode()
	f.Add(empty)
	f.Add([]byte(treeMagic + "\x01"))
	f.Fuzz(func(t *testing.T, data []byte) {
		tr, err := DecodeTree(data)
		if err != nil {
			return
		}
		again, err := tr.Encode()
		if err != nil {
			t.Fatalf("a decoded tree does not encode: %v", err)
		}
		if !bytes.Equal(again, data) {
			t.Fatalf("decoded and encoded again, %d bytes became %d", len(data), len(again))
		}
	})
}

// FuzzDirCache: a damaged directory cache is refused or read, never a
// crash, and a record read from it carries a tree matching its id.
func FuzzDirCache(f *testing.F) {
	dir := f.TempDir()
	p := filepath.Join(dir, "c")
	c, _ := OpenDirCache(p)
	c.begin("fp")
	enc, _ := sampleTree().Encode()
	c.put(&dirRecord{path: "a/b", tree: digestOf(enc), encoded: enc, extras: []entryExtra{{1, 2}}}, nil)
	c.put(&dirRecord{path: ""}, nil)
	c.Commit("gen")
	seed, _ := os.ReadFile(p)
	f.Add(seed)
	f.Fuzz(func(t *testing.T, data []byte) {
		p := filepath.Join(t.TempDir(), "c")
		os.WriteFile(p, data, 0o600)
		c, err := OpenDirCache(p)
		if err != nil {
			return
		}
		defer c.Close()
		for rel := range c.index {
			rec, err := c.lookup(rel)
			if err == nil && rec != nil && digestOf(rec.encoded) != rec.tree {
				t.Fatal("a record's tree does not match its id")
			}
		}
	})
}
