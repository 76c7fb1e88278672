package snapshot

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/deltabackup/deltabackup/snapshot/digest"
)

// sampleTree holds one of every kind of entry.
func sampleTree() *Tree {
	id := digest.Of([]byte("content"))
	return &Tree{
		Self: &Node{Type: TypeDir, Mode: 0o755, User: "root", Group: "root", MtimeNs: 7, Below: Counts{Files: 3, Dirs: 1, Bytes: 9}},
		Nodes: []Node{
			{Name: "a-file", Type: TypeFile, Mode: 0o4755, UID: 1000, GID: 1000, User: "u", Group: "g", MtimeNs: -5, Size: 7, ID: id,
				Xattrs: []Xattr{{Name: "security.selinux", Value: []byte("ctx")}, {Name: "user.x", Value: []byte{}}}},
			{Name: "b-embedded", Type: TypeFile, Mode: 0o644, Size: 2, Embedded: []byte("hi"), LinkDev: 3, LinkIno: 99},
			{Name: "c-empty", Type: TypeFile, Mode: 0o600, Embedded: []byte{}},
			{Name: "d-sparse", Type: TypeFile, Size: 1 << 30, Sparse: true, Data: []Range{{4096, 100}, {1 << 20, 4096}}, ID: id},
			{Name: "e-hole", Type: TypeFile, Size: 1 << 20, Sparse: true, Data: []Range{}, Embedded: []byte{}},
			{Name: "f-chunked", Type: TypeFile, Size: MinChunkSize + 20, Chunks: []Chunk{{id, MinChunkSize}, {id, 20}}},
			{Name: "g-dir", Type: TypeDir, Mode: 0o2775, Subtree: id, Below: Counts{Files: 1}},
			{Name: "h-link", Type: TypeSymlink, Mode: 0o777, Target: "../x"},
			{Name: "i-fifo", Type: TypeFIFO, Mode: 0o600},
			{Name: "j-dev", Type: TypeBlockDevice, Rdev: 2049},
			{Name: "k-\xff-not-utf8", Type: TypeCharDevice, Rdev: 0},
		},
	}
}

func TestTreeRoundTrip(t *testing.T) {
	tr := sampleTree()
	data, err := tr.Encode()
	if err != nil {
		t.Fatal(err)
	}
	back, err := DecodeTree(data)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(tr, back); diff != "" {
		t.Fatalf("round trip (-want +got):\n%s", diff)
	}
	again, _ := back.Encode()
	if string(again) != string(data) {
		t.Fatal("encoding is not unique: the same tree encodes to other bytes")
	}
}

// TestHostileTreesAreRefused: every way a hand-made tree can lie is
// refused by the decoder, naming the entry.
func TestHostileTreesAreRefused(t *testing.T) {
	id := digest.Of([]byte("x"))
	file := func(name string) Node { return Node{Name: name, Type: TypeFile, Embedded: []byte{}} }
	cases := map[string]struct {
		nodes []Node
		entry string
		// inMemory: the encoding cannot even carry it; only Validate
		// (of a tree built in memory) sees it.
		inMemory bool
	}{
		"dot-dot":             {[]Node{file("..")}, "..", false},
		"dot":                 {[]Node{file(".")}, ".", false},
		"slash":               {[]Node{file("a/b")}, "a/b", false},
		"empty name":          {[]Node{file("")}, "", false},
		"NUL":                 {[]Node{file("a\x00b")}, "a\x00b", false},
		"too long":            {[]Node{file(strings.Repeat("n", 256))}, strings.Repeat("n", 256), false},
		"duplicate":           {[]Node{file("a"), file("a")}, "a", false},
		"unsorted":            {[]Node{file("b"), file("a")}, "a", false},
		"unknown type":        {[]Node{{Name: "t", Type: 9}}, "t", false},
		"mode bits":           {[]Node{{Name: "m", Type: TypeFile, Mode: 0o10777, Embedded: []byte{}}}, "m", false},
		"dir without tree":    {[]Node{{Name: "d", Type: TypeDir}}, "d", false},
		"file with a tree":    {[]Node{{Name: "f", Type: TypeFile, Embedded: []byte{}, Subtree: id}}, "f", true},
		"two contents":        {[]Node{{Name: "f", Type: TypeFile, Size: 1, Embedded: []byte("x"), ID: id}}, "f", true},
		"no content":          {[]Node{{Name: "f", Type: TypeFile, Size: 1}}, "f", false},
		"embedded vs size":    {[]Node{{Name: "f", Type: TypeFile, Size: 5, Embedded: []byte("x")}}, "f", false},
		"absurd size":         {[]Node{{Name: "f", Type: TypeFile, Size: 1 << 60, ID: id}}, "f", false},
		"range past the end":  {[]Node{{Name: "f", Type: TypeFile, Size: 10, Sparse: true, Data: []Range{{5, 10}}, ID: id}}, "f", false},
		"overlapping ranges":  {[]Node{{Name: "f", Type: TypeFile, Size: 100, Sparse: true, Data: []Range{{0, 10}, {5, 10}}, ID: id}}, "f", false},
		"chunks vs size":      {[]Node{{Name: "f", Type: TypeFile, Size: 10, Chunks: []Chunk{{id, 5}}}}, "f", false},
		"chunks past the end": {[]Node{{Name: "f", Type: TypeFile, Size: 8 << 10, Chunks: []Chunk{{id, 8 << 10}, {id, 1}}}}, "f", false},
		"chunk too large":     {[]Node{{Name: "f", Type: TypeFile, Size: MaxChunkSize + 1, Chunks: []Chunk{{id, MaxChunkSize + 1}}}}, "f", false},
		"chunks absurdly many": {[]Node{{Name: "f", Type: TypeFile, Size: 1 << 20,
			Chunks: slices.Repeat([]Chunk{{id, 1}}, 1<<20)}}, "f", false},
		"link without inode":  {[]Node{{Name: "f", Type: TypeFile, Embedded: []byte{}, LinkDev: 1}}, "f", true},
		"empty symlink":       {[]Node{{Name: "l", Type: TypeSymlink}}, "l", false},
		"symlink with NUL":    {[]Node{{Name: "l", Type: TypeSymlink, Target: "a\x00"}}, "l", false},
		"xattr namespace":     {[]Node{{Name: "f", Type: TypeFile, Embedded: []byte{}, Xattrs: []Xattr{{Name: "system.evil"}}}}, "f", false},
		"xattr not sorted":    {[]Node{{Name: "f", Type: TypeFile, Embedded: []byte{}, Xattrs: []Xattr{{Name: "user.b"}, {Name: "user.a"}}}}, "f", false},
		"xattr too big":       {[]Node{{Name: "f", Type: TypeFile, Embedded: []byte{}, Xattrs: []Xattr{{Name: "user.b", Value: make([]byte, 65<<10)}}}}, "f", false},
		"device on a file":    {[]Node{{Name: "f", Type: TypeFile, Embedded: []byte{}, Rdev: 5}}, "f", true},
		"negative count":      {[]Node{{Name: "d", Type: TypeDir, Subtree: id, Below: Counts{Files: -1}}}, "d", false},
		"owner name with NUL": {[]Node{{Name: "f", Type: TypeFile, Embedded: []byte{}, User: "a\x00"}}, "f", false},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			if (&Tree{Nodes: c.nodes}).Validate() == nil {
				t.Error("Validate accepts it")
			}
			if c.inMemory {
				return
			}
			data := encodeUnchecked(&Tree{Nodes: c.nodes})
			_, err := DecodeTree(data)
			var te *TreeError
			if !errors.As(err, &te) || !errors.Is(err, ErrInvalidTree) {
				t.Fatalf("accepted or wrong error: %v", err)
			}
			if te.Entry != c.entry {
				t.Errorf("error names entry %q, want %q: %v", te.Entry, c.entry, err)
			}
		})
	}
	for name, data := range map[string][]byte{
		"no magic":       []byte("XXXX\x00\x00"),
		"truncated":      encodeUnchecked(sampleTree())[:40],
		"trailing bytes": append(encodeUnchecked(sampleTree()), 0),
		"huge count":     append([]byte(treeMagic+"\x00"), 0xff, 0xff, 0xff, 0xff, 0x0f),
		"unknown flag":   []byte(treeMagic + "\x04\x00"),
	} {
		if _, err := DecodeTree(data); !errors.Is(err, ErrInvalidTree) {
			t.Errorf("%s: %v", name, err)
		}
	}
}

// encodeUnchecked encodes a tree without validating it, as a hostile
// writer would.
func encodeUnchecked(t *Tree) []byte {
	b := []byte(treeMagic)
	if t.Self != nil {
		b = append(b, treeFlagRoot)
		b = appendNode(b, t.Self, true)
	} else {
		b = append(b, 0)
	}
	b = appendUvarint(b, uint64(len(t.Nodes)))
	for i := range t.Nodes {
		b = appendNode(b, &t.Nodes[i], false)
	}
	return b
}

func appendUvarint(b []byte, v uint64) []byte {
	for v >= 0x80 {
		b = append(b, byte(v)|0x80)
		v >>= 7
	}
	return append(b, byte(v))
}

// TestTreeCyclesAreRefused: a repository whose trees name themselves or
// an ancestor (only a hand-made one can) ends the walk with an error
// instead of looping.
func TestTreeCyclesAreRefused(t *testing.T) {
	ctx := context.Background()
	sink := newMemSink()
	// A reader that serves a tree whose subtree is the root: the id does
	// not match the bytes, as it could not otherwise.
	root := digest.Of([]byte("root"))
	data := encodeUnchecked(&Tree{Nodes: []Node{{Name: "loop", Type: TypeDir, Subtree: root}}})
	sink.trees[root] = data
	r := rawReader{sink}
	err := Walk(ctx, r, root, func(string, *Node) error { return nil })
	if !errors.Is(err, ErrTreeCycle) {
		t.Fatalf("walk of a cycle: %v", err)
	}
	if err := References(ctx, r, root, 0, func(Reference) error { return nil }); !errors.Is(err, ErrTreeCycle) {
		t.Fatalf("references of a cycle: %v", err)
	}
	if _, _, err := Lookup(ctx, r, root, "loop/loop/x"); !errors.Is(err, ErrTreeCycle) {
		t.Fatalf("lookup through a cycle: %v", err)
	}
}

// rawReader serves trees without checking their ids.
type rawReader struct{ s *memSink }

func (r rawReader) ReadTree(ctx context.Context, id digest.Digest) ([]byte, error) {
	return r.s.trees[id], nil
}

func TestCompareTrees(t *testing.T) {
	src := t.TempDir()
	writeTree(t, src, map[string]string{"same/a": "a", "same/b": strings.Repeat("b", 300), "chg": "old", "gone/x": "x", "mode": "m"})
	sink := newMemSink()
	a := snap(t, src, sink, DefaultOptions()).Root
	writeTree(t, src, map[string]string{"chg": "new!", "new/y": "y"})
	removeAll(t, src, "gone")
	chmod(t, src, "mode", 0o600)
	b := snap(t, src, sink, DefaultOptions()).Root
	var got []string
	st, err := Compare(context.Background(), sink, a, b, func(c Change) error {
		got = append(got, c.Kind+" "+c.Path+" "+strings.Join(c.What, ","))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"changed chg content", "removed gone ", "removed gone/x ", "changed mode mode", "added new ", "added new/y "}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("changes (-want +got):\n%s", diff)
	}
	if st.Added != 2 || st.Removed != 2 || st.Changed != 2 {
		t.Errorf("stats %+v", st)
	}
	if st, _ := Compare(context.Background(), sink, a, a, func(Change) error { t.Fatal("a change between equal trees"); return nil }); st != (DiffStats{}) {
		t.Errorf("equal trees: %+v", st)
	}
}
