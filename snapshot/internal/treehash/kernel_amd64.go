package treehash

import "golang.org/x/sys/cpu"

//go:generate go run gen.go

// haveKernel: the AVX-512 kernels can run here.
var haveKernel = cpu.X86.HasAVX512F

// Fast reports whether the Hasher runs its AVX-512 kernel here, where it
// is about twice as fast as github.com/zeebo/blake3 from 16 KiB on (on
// the AMD EPYC of bench/results); elsewhere zeebo's is the faster one.
func Fast() bool { return haveKernel }

// chunkParams is what the kernels read besides the data; gen.go has the
// field offsets.
type chunkParams struct {
	key    [8]uint32  // offset 0
	flags  [16]uint32 // offset 32: the flags of a chunk's block b
	lo     [16]uint32 // offset 96: the chunk counter of each lane, low words
	hi     [16]uint32 // offset 160: and high words
	parent uint32     // offset 224: the flags of a parent node
}

// compressChunks hashes groups*16 chunks at in (contiguous, 1 KiB each)
// with counters from p.lo/p.hi (advanced by 16 per group) and writes
// their chaining values transposed: word w of the chunk i at
// out[w*stride/4+i].
//
//go:noescape
func compressChunks(out *uint32, stride uintptr, in *byte, groups int, p *chunkParams)

// compressParents computes groups*16 parent nodes of the groups*32
// chaining values at in (transposed, as compressChunks writes them) into
// out (the same layout); out may be in.
//
//go:noescape
func compressParents(out *uint32, outStride uintptr, in *uint32, inStride uintptr, groups int, p *chunkParams)
