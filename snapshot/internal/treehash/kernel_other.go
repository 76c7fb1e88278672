//go:build !amd64

package treehash

const haveKernel = false

// Fast reports whether the Hasher runs its AVX-512 kernel here: never on
// this architecture.
func Fast() bool { return false }

type chunkParams struct {
	key    [8]uint32
	flags  [16]uint32
	lo     [16]uint32
	hi     [16]uint32
	parent uint32
}

func compressChunks(out *uint32, stride uintptr, in *byte, groups int, p *chunkParams) {
	panic("treehash: no kernel")
}

func compressParents(out *uint32, outStride uintptr, in *uint32, inStride uintptr, groups int, p *chunkParams) {
	panic("treehash: no kernel")
}
