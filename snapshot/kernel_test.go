package snapshot

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/zeebo/blake3"

	"github.com/deltabackup/deltabackup/snapshot/digest"
)

// TestLargeFileKernelsAgree hashes files around the mapping and block
// boundaries with each kernel, whatever this CPU has (guts falls back to
// portable code without AVX-512): both must give the BLAKE3 of the file.
func TestLargeFileKernelsAgree(t *testing.T) {
	src := t.TempDir()
	sizes := []int{mmapMin, mmapMin + 1, mmapMin + blockSize - 1, mmapWindow, mmapWindow + 1, 2*mmapWindow + 3*blockSize + 77}
	want := map[string]digest.Digest{}
	for i, n := range sizes {
		data := benchData(n)
		name := fmt.Sprintf("f%d", i)
		if err := os.WriteFile(filepath.Join(src, name), data, 0o644); err != nil {
			t.Fatal(err)
		}
		want[name] = digest.Digest(blake3.Sum256(data))
	}
	chooseKernel() // so that it does not overwrite the choices below
	defer func(old bool) { useAVX512Kernel = old }(useAVX512Kernel)
	for _, avx512 := range []bool{true, false} {
		useAVX512Kernel = avx512
		t.Run(HashKernel(), func(t *testing.T) {
			opts := DefaultOptions()
			opts.EmbedThreshold = -1
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
