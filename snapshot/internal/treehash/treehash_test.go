package treehash

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/zeebo/blake3"
	"lukechampine.com/blake3/guts"
)

// forEachKernel runs test with the AVX-512 kernel (where the CPU has
// it) and with guts' code, which the Hasher runs elsewhere.
func forEachKernel(t *testing.T, test func(t *testing.T)) {
	defer func(old bool) { haveKernel = old }(haveKernel)
	for _, kernel := range []bool{haveKernel, false} {
		haveKernel = kernel
		name := "portable"
		if kernel {
			name = "avx512"
		}
		t.Run(name, test)
	}
}

func input(n int, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, 7))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// Every length class: empty, within one block, block boundaries, batch
// boundaries, and long inputs whose trees are not balanced.
func TestSumMatchesBLAKE3(t *testing.T) {
	forEachKernel(t, func(t *testing.T) {
		sizes := []int{0, 1, 1023, 1024, 1025, BlockSize - 1, BlockSize, BlockSize + 1, 2 * BlockSize, 3*BlockSize + 5,
			batchChunks*ChunkSize - 1, batchChunks * ChunkSize, batchChunks*ChunkSize + 1, 17 * BlockSize,
			5*batchChunks*ChunkSize + 3*BlockSize + 100, 4 << 20, 7<<20 + 12345}
		h := New()
		for i, n := range sizes {
			data := input(n, uint64(i))
			want := blake3.Sum256(data)
			if got := h.Sum256(data); got != want {
				t.Fatalf("%d bytes: %x, want %x", n, got, want)
			}
		}
	})
}

// Write in pieces of every awkward size gives what Sum256 gives.
func TestWriteInPieces(t *testing.T) {
	forEachKernel(t, func(t *testing.T) {
		data := input(3*batchChunks*ChunkSize+BlockSize+77, 9)
		want := blake3.Sum256(data)
		h := New()
		for _, piece := range []int{1, 1000, BlockSize - 1, BlockSize, BlockSize + 1, 1 << 20, len(data)} {
			h.Reset()
			for p := data; len(p) > 0; {
				k := min(piece, len(p))
				h.Write(p[:k])
				p = p[k:]
			}
			if got := h.Sum(nil); !bytes.Equal(got, want[:]) {
				t.Fatalf("pieces of %d: %x, want %x", piece, got, want)
			}
		}
		h.Reset()
		if got, want := h.Sum(nil), blake3.Sum256(nil); !bytes.Equal(got, want[:]) {
			t.Fatalf("empty: %x, want %x", got, want)
		}
	})
}

// A long input hashed as subtrees by separate hashers and pushed in
// order gives its BLAKE3.
func TestSubtreesPushed(t *testing.T) {
	forEachKernel(t, func(t *testing.T) {
		const run = 64 * ChunkSize
		data := input(5*run+3*BlockSize+9, 11)
		h := New()
		for i := range 5 {
			part := New()
			part.ResetAt(uint64(i * run / ChunkSize))
			part.WriteBlocks(data[i*run : (i+1)*run])
			h.Push(part.Subtree(), run/ChunkSize)
		}
		h.Write(data[5*run:])
		want := blake3.Sum256(data)
		if got := h.Sum(nil); !bytes.Equal(got, want[:]) {
			t.Fatalf("%x, want %x", got, want)
		}
	})
}

// Chunk counters above 2^32 carry into the high words, within a batch
// and from one group of 16 to the next (with the kernel, or guts' code
// on CPUs without AVX-512).
func TestCountersCarry(t *testing.T) {
	forEachKernel(t, func(t *testing.T) {
		data := input(batchChunks*ChunkSize, 3)
		for _, counter := range []uint64{1<<32 - 256, 1<<32 - 16, 1<<32 - 8, 5 << 32} {
			h := New()
			got := h.batch(data, counter)
			want := reference(data, counter)
			if got != want {
				t.Fatalf("counter %#x: %x, want %x", counter, got, want)
			}
		}
	})
}

// reference is the chaining value of a power-of-two run of chunks by
// guts' portable code, chunk by chunk.
func reference(data []byte, counter uint64) [8]uint32 {
	var cvs [][8]uint32
	for i := 0; i < len(data); i += ChunkSize {
		cvs = append(cvs, guts.ChainingValue(guts.CompressChunk(data[i:i+ChunkSize], &guts.IV, counter+uint64(i/ChunkSize), 0)))
	}
	for len(cvs) > 1 {
		var next [][8]uint32
		for i := 0; i < len(cvs); i += 2 {
			next = append(next, guts.ChainingValue(guts.ParentNode(cvs[i], cvs[i+1], &guts.IV, 0)))
		}
		cvs = next
	}
	return cvs[0]
}

func TestPortableBatchMatchesKernel(t *testing.T) {
	data := input(batchChunks*ChunkSize, 4)
	h := New()
	if got, want := h.batchPortable(data, 512), reference(data, 512); got != want {
		t.Fatalf("portable %x, want %x", got, want)
	}
}

func FuzzSum(f *testing.F) {
	f.Add([]byte("abc"))
	f.Fuzz(func(t *testing.T, seed []byte) {
		data := bytes.Repeat(seed, 1+40000/(len(seed)+1))
		if got, want := New().Sum256(data), blake3.Sum256(data); got != want {
			t.Fatalf("%x, want %x", got, want)
		}
	})
}

func benchmark(b *testing.B, size int) {
	data := input(size, 1)
	h := New()
	b.SetBytes(int64(size))
	for b.Loop() {
		h.Sum256(data)
	}
}

func BenchmarkSum256KiB(b *testing.B) { benchmark(b, 256<<10) }
func BenchmarkSum16MiB(b *testing.B)  { benchmark(b, 16<<20) }
func BenchmarkSum256MiB(b *testing.B) { benchmark(b, 256<<20) }

func BenchmarkZeebo16MiB(b *testing.B) {
	data := input(16<<20, 1)
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		blake3.Sum256(data)
	}
}

func BenchmarkGuts16MiB(b *testing.B) {
	data := input(16<<20, 1)
	b.SetBytes(int64(len(data)))
	var stack []subtree
	for b.Loop() {
		stack = stack[:0]
		for p := data; len(p) > 0; p = p[BlockSize:] {
			guts.CompressBuffer((*[BlockSize]byte)(p[:BlockSize]), BlockSize, &guts.IV, 0, 0)
		}
	}
}

func BenchmarkChunkSizes(b *testing.B) {
	for _, size := range []int{16 << 10, 32 << 10, 64 << 10, 100 << 10, 128 << 10, 200 << 10, 1 << 20} {
		data := input(size, 1)
		b.Run(fmt.Sprintf("treehash-%dK", size>>10), func(b *testing.B) {
			h := New()
			b.SetBytes(int64(size))
			for b.Loop() {
				h.Sum256(data)
			}
		})
		b.Run(fmt.Sprintf("zeebo-%dK", size>>10), func(b *testing.B) {
			h := blake3.New()
			b.SetBytes(int64(size))
			for b.Loop() {
				h.Reset()
				h.Write(data)
				h.Sum(nil)
			}
		})
	}
}
