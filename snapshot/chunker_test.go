package snapshot

import (
	"bytes"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/deltabackup/deltabackup/snapshot/digest"
)

// testChunking is a small chunking, so tests see many chunks in little
// data.
func testChunking(key byte) Chunking {
	return Chunking{Algorithm: ChunkerFastCDC, MinSize: 8 << 10, AvgSize: 16 << 10, MaxSize: 128 << 10, Threshold: 64 << 10,
		Key: bytes.Repeat([]byte{key}, 32)}
}

func randomData(seed uint64, n int) []byte {
	b := make([]byte, n)
	var s [32]byte
	s[0] = byte(seed)
	rand.NewChaCha8(s).Read(b)
	return b
}

// chunkSizes cuts data with c.
func chunkSizes(t *testing.T, c Chunking, data []byte) []int {
	t.Helper()
	k := newChunkerPool(c).Get().(*chunker)
	var sizes []int
	if err := k.split(bytes.NewReader(data), func(chunk []byte) error { sizes = append(sizes, len(chunk)); return nil }); err != nil {
		t.Fatal(err)
	}
	return sizes
}

// TestChunkBoundariesAreStable pins the cut points of one input: a new
// version of the chunker library that cut elsewhere would make every
// repository store its files again, so it must be noticed.
func TestChunkBoundariesAreStable(t *testing.T) {
	sizes := chunkSizes(t, testChunking(1), randomData(7, 1<<20))
	var total int
	for i, s := range sizes {
		total += s
		if s > 128<<10 || (s < 8<<10 && i < len(sizes)-1) {
			t.Fatalf("chunk %d of %d bytes, outside 8 KiB..128 KiB", i, s)
		}
	}
	if total != 1<<20 {
		t.Fatalf("chunks hold %d bytes of %d", total, 1<<20)
	}
	want := []int{16486, 18612, 17353, 17952, 16743, 8226}
	if !slices.Equal(sizes[:len(want)], want) {
		t.Fatalf("first cut points %v, want %v (the chunker cuts differently: repositories would stop deduplicating)", sizes[:len(want)], want)
	}
	if got := chunkSizes(t, testChunking(2), randomData(7, 1<<20)); slices.Equal(got, sizes) {
		t.Fatal("another key cuts at the same places: the gear table is not keyed")
	}
}

// TestChunkingStoresOnlyWhatChanged: a page rewritten in the middle of
// a chunked file and bytes inserted near its start each change one or two
// chunks; the others keep their ids.
func TestChunkingStoresOnlyWhatChanged(t *testing.T) {
	src := t.TempDir()
	data := randomData(3, 4<<20)
	write := func(b []byte) {
		if err := os.WriteFile(filepath.Join(src, "table"), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(data)
	opts := DefaultOptions()
	opts.Chunking = testChunking(1)
	sink := newMemSink()
	first := nodes(t, sink, snap(t, src, sink, opts).Root)["table"]
	if first.ID != (digest.Digest{}) || len(first.Chunks) < 100 {
		t.Fatalf("a 4 MiB file was not chunked: id %s, %d chunks", first.ID, len(first.Chunks))
	}
	for name, changed := range map[string][]byte{
		"page rewritten": slices.Concat(data[:2<<20], randomData(4, 8192), data[2<<20+8192:]),
		"bytes inserted": slices.Concat(data[:4096], []byte(strings.Repeat("x", 100)), data[4096:]),
	} {
		t.Run(name, func(t *testing.T) {
			write(changed)
			next := newMemSink()
			next.objects = sink.objects
			n := nodes(t, next, snap(t, src, next, opts).Root)["table"]
			old := map[digest.Digest]bool{}
			for _, c := range first.Chunks {
				old[c.ID] = true
			}
			var fresh int
			for _, c := range n.Chunks {
				if !old[c.ID] {
					fresh++
				}
			}
			if fresh == 0 || fresh > 3 {
				t.Fatalf("%d of %d chunks are new, want 1 to 3", fresh, len(n.Chunks))
			}
			var got bytes.Buffer
			for _, c := range n.Chunks {
				got.Write(next.objects[c.ID])
			}
			if !bytes.Equal(got.Bytes(), changed) {
				t.Fatal("the chunks do not hold the file")
			}
		})
	}
}

// TestFileChangingWhileChunked: a chunked file rewritten after its first
// chunk is read again; its node never mixes chunks of two versions.
func TestFileChangingWhileChunked(t *testing.T) {
	src := t.TempDir()
	v1, v2 := randomData(1, 2<<20), randomData(2, 2<<20)
	target := filepath.Join(src, "db")
	if err := os.WriteFile(target, v1, 0o644); err != nil {
		t.Fatal(err)
	}
	testHookAfterRead = func(path string, attempt int) {
		if path == "db" {
			testHookAfterRead = nil
			os.WriteFile(target, v2, 0o644)
		}
	}
	defer func() { testHookAfterRead = nil }()
	opts := DefaultOptions()
	opts.Chunking = testChunking(1)
	sink := newMemSink()
	res := snap(t, src, sink, opts)
	n := nodes(t, sink, res.Root)["db"]
	var got bytes.Buffer
	for _, c := range n.Chunks {
		got.Write(sink.objects[c.ID])
	}
	if len(res.Changed) != 0 || !bytes.Equal(got.Bytes(), v2) {
		t.Fatalf("changed %v; the node's chunks hold %d bytes that are not the settled file", res.Changed, got.Len())
	}
}

func TestChunkingChecksItsSettings(t *testing.T) {
	good := testChunking(1)
	for name, c := range map[string]Chunking{
		"unknown algorithm":   {Algorithm: "rabin", MinSize: good.MinSize, AvgSize: good.AvgSize, MaxSize: good.MaxSize, Threshold: good.Threshold, Key: good.Key},
		"average not a power": {Algorithm: ChunkerFastCDC, MinSize: 8 << 10, AvgSize: 20 << 10, MaxSize: 128 << 10, Threshold: 1 << 20, Key: good.Key},
		"huge maximum":        {Algorithm: ChunkerFastCDC, MinSize: 8 << 10, AvgSize: 16 << 10, MaxSize: 1 << 30, Threshold: 1 << 30, Key: good.Key},
		"tiny minimum":        {Algorithm: ChunkerFastCDC, MinSize: 64, AvgSize: 16 << 10, MaxSize: 128 << 10, Threshold: 1 << 20, Key: good.Key},
		"no key":              {Algorithm: ChunkerFastCDC, MinSize: 8 << 10, AvgSize: 16 << 10, MaxSize: 128 << 10, Threshold: 1 << 20},
	} {
		if err := c.Check(); err == nil {
			t.Errorf("%s: accepted", name)
		}
		if _, err := New(t.TempDir(), Options{Chunking: c}); err == nil {
			t.Errorf("%s: New accepted it", name)
		}
	}
	if err := good.Check(); err != nil {
		t.Fatal(err)
	}
}

// TestLargeFileChunkedByAllCores: the chunks of a file hashed by several
// goroutines are the ones one goroutine finds, in order, each stored.
func TestLargeFileChunkedByAllCores(t *testing.T) {
	src := t.TempDir()
	data := randomData(9, 8<<20)
	if err := os.WriteFile(filepath.Join(src, "big"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	opts := DefaultOptions()
	opts.Chunking = testChunking(1)
	one := newMemSink()
	want := nodes(t, one, snap(t, src, one, opts).Root)["big"].Chunks
	defer func(old int64) { parallelChunkMin = old }(parallelChunkMin)
	parallelChunkMin = 1 << 20
	all := newMemSink()
	got := nodes(t, all, snap(t, src, all, opts).Root)["big"].Chunks
	if !slices.Equal(got, want) {
		t.Fatalf("%d chunks hashed in parallel differ from the %d hashed in turn", len(got), len(want))
	}
	var joined bytes.Buffer
	for _, c := range got {
		joined.Write(all.objects[c.ID])
	}
	if !bytes.Equal(joined.Bytes(), data) {
		t.Fatal("the chunks stored in parallel do not hold the file")
	}
}
