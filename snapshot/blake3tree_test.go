package snapshot

import (
	"math/rand/v2"
	"testing"

	"github.com/zeebo/blake3"
)

func treeSum(data []byte) [32]byte {
	var t treeHasher
	cut := lastBlockStart(int64(len(data)))
	t.writeBlocks(data[:cut])
	return t.finish(data[cut:])
}

func TestTreeHasherMatchesBLAKE3(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	data := make([]byte, 3<<20+12345)
	for i := range data {
		data[i] = byte(r.Uint32())
	}
	sizes := []int{0, 1, 63, 64, 65, 1023, 1024, 1025, 2048, 2049, 15 * 1024, 16383, 16384, 16385,
		32767, 32768, 32769, 49152, 65536, 65537, 16 * 16384, 17*16384 + 1, 1 << 20, 1<<20 + 1, 3<<20 + 12345}
	for range 40 {
		sizes = append(sizes, r.IntN(len(data)))
	}
	var reused treeHasher
	for _, n := range sizes {
		want := blake3.Sum256(data[:n])
		if got := treeSum(data[:n]); got != want {
			t.Fatalf("size %d: tree hasher %x, BLAKE3 %x", n, got, want)
		}
		// A reset hasher gives the same answer in pieces.
		reused.reset()
		cut := lastBlockStart(int64(n))
		for off := int64(0); off < cut; off += 5 * blockSize {
			reused.writeBlocks(data[off:min(off+5*blockSize, cut)])
		}
		if got := reused.finish(data[cut:n]); got != want {
			t.Fatalf("size %d in pieces: %x, want %x", n, got, want)
		}
	}
}
