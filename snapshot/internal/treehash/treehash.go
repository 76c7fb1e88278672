package treehash

import (
	"lukechampine.com/blake3/guts"
)

const (
	// ChunkSize is BLAKE3's chunk: the tree's leaves.
	ChunkSize = guts.ChunkSize
	// BlockSize is the least the Hasher takes at a time (16 chunks); every
	// write but the last is a whole number of blocks.
	BlockSize = guts.MaxSIMD * ChunkSize
	// batchChunks: the kernel hashes up to this many chunks, and merges
	// them, per call.
	batchChunks = 256
)

// Hasher computes BLAKE3-256 of an input of known length in the calling
// goroutine only. That matters to its callers: large files are hashed
// from memory mappings, and a fault on a mapping (the file was truncated)
// can be recovered only in the goroutine that touched it.
//
// The tree follows the BLAKE3 specification: the input is cut into 1 KiB
// chunks, complete left subtrees of 2^k chunks are merged as soon as two
// of equal size are on the stack, and the last block is held back so the
// root node can be compressed with the ROOT flag.
type Hasher struct {
	stack []subtree
	// base is the chunk counter where the input starts: 0, except while
	// hashing a Subtree.
	base   uint64
	params chunkParams
	cvs    [8][batchChunks]uint32 // transposed chaining values of a batch
	// tail holds what Write was given past the last whole block it could
	// hash: the last block of an input is compressed as the root.
	tail  [BlockSize]byte
	tailN int
}

type subtree struct {
	cv     [8]uint32
	chunks uint64
}

// New returns a Hasher of unkeyed BLAKE3.
func New() *Hasher {
	h := &Hasher{}
	h.params.key = guts.IV
	h.params.flags[0] = guts.FlagChunkStart
	h.params.flags[15] = guts.FlagChunkEnd
	h.params.parent = guts.FlagParent
	return h
}

// Reset starts a new input.
func (h *Hasher) Reset() {
	h.stack = h.stack[:0]
	h.base = 0
	h.tailN = 0
}

// ResetAt starts hashing a run of the input that begins at chunk
// (a multiple of the run's length in chunks, which is a power of two of
// at least 16): a Subtree another goroutine merges with Push.
func (h *Hasher) ResetAt(chunk uint64) {
	h.Reset()
	h.base = chunk
}

// Subtree returns the chaining value of the run given to WriteBlocks
// since ResetAt.
// It panics unless the run was a whole subtree (a power of two of
// chunks, from an aligned start).
func (h *Hasher) Subtree() [8]uint32 {
	if len(h.stack) != 1 || h.tailN != 0 {
		panic("treehash: the run written is not one subtree")
	}
	return h.stack[0].cv
}

// Push adds the chaining value of a subtree of chunks chunks that
// follows what was written, as hashing it here would have.
func (h *Hasher) Push(cv [8]uint32, chunks uint64) {
	if h.tailN != 0 || chunks&(chunks-1) != 0 || h.chunksDone()%chunks != 0 {
		panic("treehash: subtree pushed out of place")
	}
	h.push(cv, chunks)
}

// Write adds p to the input, for inputs that come in pieces (reads of a
// file). Whole blocks are hashed straight from p; at most one block is
// copied and held back. It never fails.
func (h *Hasher) Write(p []byte) (int, error) {
	n := len(p)
	if h.tailN > 0 {
		k := copy(h.tail[h.tailN:], p)
		h.tailN += k
		p = p[k:]
		if len(p) == 0 {
			return n, nil
		}
		h.WriteBlocks(h.tail[:])
		h.tailN = 0
	}
	if len(p) == 0 {
		return n, nil
	}
	cut := LastBlockStart(int64(len(p)))
	h.WriteBlocks(p[:cut])
	h.tailN = copy(h.tail[:], p[cut:])
	return n, nil
}

// Sum appends the digest of what Write was given to b. The Hasher must
// be Reset before it hashes anything else.
func (h *Hasher) Sum(b []byte) []byte {
	digest := h.Finish(h.tail[:h.tailN])
	return append(b, digest[:]...)
}

// chunksDone is the number of chunks already consumed.
func (h *Hasher) chunksDone() uint64 {
	n := h.base
	for _, s := range h.stack {
		n += s.chunks
	}
	return n
}

// WriteBlocks hashes p, a whole number of blocks none of which is the
// last block of the input.
func (h *Hasher) WriteBlocks(p []byte) {
	counter := h.chunksDone()
	for len(p) >= BlockSize {
		// The largest power-of-two run the input holds that starts where
		// a subtree of its size may start.
		n := uint64(len(p) / ChunkSize)
		batch := uint64(batchChunks)
		for batch > n || counter%batch != 0 {
			batch /= 2
		}
		if batch < guts.MaxSIMD {
			panic("treehash: write not aligned to a block")
		}
		h.push(h.batch(p[:batch*ChunkSize], counter), batch)
		p = p[batch*ChunkSize:]
		counter += batch
	}
	if len(p) != 0 {
		panic("treehash: write of a partial block")
	}
}

// batch returns the chaining value of the subtree of len(p)/ChunkSize
// chunks (a power of two from 16 to batchChunks) starting at counter.
func (h *Hasher) batch(p []byte, counter uint64) [8]uint32 {
	n := len(p) / ChunkSize
	if !haveKernel {
		return h.batchPortable(p, counter)
	}
	for j := range guts.MaxSIMD {
		c := counter + uint64(j)
		h.params.lo[j], h.params.hi[j] = uint32(c), uint32(c>>32)
	}
	const stride = batchChunks * 4
	cvs := &h.cvs[0][0]
	compressChunks(cvs, stride, &p[0], n/guts.MaxSIMD, &h.params)
	for level := n / 2; level >= 1; level /= 2 {
		compressParents(cvs, stride, cvs, stride, (level+guts.MaxSIMD-1)/guts.MaxSIMD, &h.params)
	}
	var cv [8]uint32
	for w := range cv {
		cv[w] = h.cvs[w][0]
	}
	return cv
}

// batchPortable is batch with guts' kernels (AVX2 or portable Go).
func (h *Hasher) batchPortable(p []byte, counter uint64) [8]uint32 {
	var buf [8]subtree
	stack := buf[:0]
	for len(p) > 0 {
		n := guts.CompressBuffer((*[BlockSize]byte)(p[:BlockSize]), BlockSize, &guts.IV, counter, 0)
		stack = pushSubtree(stack, guts.ChainingValue(n), guts.MaxSIMD)
		p = p[BlockSize:]
		counter += guts.MaxSIMD
	}
	if len(stack) != 1 {
		panic("treehash: batch is not a power of two")
	}
	return stack[0].cv
}

// push adds a subtree's chaining value, merging equal subtrees.
func (h *Hasher) push(cv [8]uint32, chunks uint64) { h.stack = pushSubtree(h.stack, cv, chunks) }

// pushSubtree appends a subtree to stack, merging it with the subtrees
// of its size on top (the BLAKE3 tree's left-to-right construction).
func pushSubtree(stack []subtree, cv [8]uint32, chunks uint64) []subtree {
	for len(stack) > 0 && stack[len(stack)-1].chunks == chunks {
		cv = guts.ChainingValue(guts.ParentNode(stack[len(stack)-1].cv, cv, &guts.IV, 0))
		stack = stack[:len(stack)-1]
		chunks *= 2
	}
	return append(stack, subtree{cv, chunks})
}

// Finish hashes the last block (0 to BlockSize bytes; 0 only for an
// empty input) and returns the digest.
func (h *Hasher) Finish(last []byte) [32]byte {
	var n guts.Node
	counter := h.chunksDone()
	if len(last) == 0 {
		n = guts.CompressChunk(nil, &guts.IV, counter, 0)
	} else {
		copy(h.tail[:], last) // last may be h.tail already
		clear(h.tail[len(last):])
		n = guts.CompressBuffer(&h.tail, len(last), &guts.IV, counter, 0)
	}
	for i := len(h.stack) - 1; i >= 0; i-- {
		n = guts.ParentNode(h.stack[i].cv, guts.ChainingValue(n), &guts.IV, 0)
	}
	n.Flags |= guts.FlagRoot
	out := guts.WordsToBytes(guts.CompressNode(n))
	var digest [32]byte
	copy(digest[:], out[:32])
	return digest
}

// Sum256 returns the BLAKE3 of data, a whole input in memory.
func (h *Hasher) Sum256(data []byte) [32]byte {
	h.Reset()
	cut := LastBlockStart(int64(len(data)))
	h.WriteBlocks(data[:cut])
	return h.Finish(data[cut:])
}

// LastBlockStart returns where the last block of an input of size bytes
// starts: everything before it can go to WriteBlocks.
func LastBlockStart(size int64) int64 {
	if size == 0 {
		return 0
	}
	return (size - 1) / BlockSize * BlockSize
}
