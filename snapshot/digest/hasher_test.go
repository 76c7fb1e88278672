package digest

import (
	"math/rand/v2"
	"testing"

	"github.com/zeebo/blake3"
)

// Streams ending before, at and after the 16 KiB where the Hasher turns
// to the tree kernel, written whole and in pieces, give their BLAKE3,
// and a Reset Hasher hashes the next stream as a new one; Of agrees.
func TestHasherMatchesBLAKE3(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	data := make([]byte, 3<<20)
	for i := range data {
		data[i] = byte(r.Uint32())
	}
	for _, h := range []*Hasher{NewHasher(), {small: blake3.New()}} {
		for _, n := range []int{0, 1, 1024, 16<<10 - 1, 16 << 10, 16<<10 + 1, 100000, 3 << 20} {
			want := Digest(blake3.Sum256(data[:n]))
			if got := Of(data[:n]); got != want {
				t.Fatalf("Of %d bytes: %s, want %s", n, got, want)
			}
			for _, piece := range []int{7, 4096, 16 << 10, 1 << 20} {
				h.Reset()
				for p := data[:n]; len(p) > 0; {
					k := min(piece, len(p))
					h.Write(p[:k])
					p = p[k:]
				}
				if got := h.Digest(); got != want {
					t.Fatalf("%d bytes in pieces of %d (tree %v): %s, want %s", n, piece, h.tree != nil, got, want)
				}
			}
		}
	}
}
