package snapshot

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/zeebo/blake3"

	"github.com/deltabackup/deltabackup/snapshot/digest"
	"github.com/deltabackup/deltabackup/snapshot/internal/treehash"
)

// TestLargeFileKernelsAgree hashes files around the buffer, block and
// segment boundaries with each kernel, whatever this CPU has (the tree
// hasher falls back to guts' code without AVX-512): both must give the
// BLAKE3 of the file. Segments are hashed by two workers here.
func TestLargeFileKernelsAgree(t *testing.T) {
	defer func(old int64) { segmentedMin = old }(segmentedMin)
	segmentedMin = segmentSize
	src := t.TempDir()
	sizes := []int{treehash.BlockSize, readBufferSize + 1, readBufferSize + treehash.BlockSize - 1, segmentSize, segmentSize + 1,
		2 * segmentSize, 2*segmentSize + 1, 3*segmentSize + 3*treehash.BlockSize + 77}
	want := map[string]digest.Digest{}
	for i, n := range sizes {
		data := benchData(n)
		name := fmt.Sprintf("f%d", i)
		if err := os.WriteFile(filepath.Join(src, name), data, 0o644); err != nil {
			t.Fatal(err)
		}
		want[name] = digest.Digest(blake3.Sum256(data))
	}
	defer func(old bool) { useAVX512Kernel = old }(useAVX512Kernel)
	for _, avx512 := range []bool{true, false} {
		useAVX512Kernel = avx512
		t.Run(HashKernel(), func(t *testing.T) {
			opts := DefaultOptions()
			opts.EmbedThreshold = -1
			opts.Parallel = 2
			sink := newMemSink()
			res := snap(t, src, sink, opts)
			got := nodes(t, sink, res.Root)
			for name, id := range want {
				if n := got[name]; n == nil || n.ID != id {
					t.Errorf("%s (%d bytes): hashed to %v, BLAKE3 is %s", name, sizes[name[1]-'0'], n, id)
				}
			}
		})
	}
}
