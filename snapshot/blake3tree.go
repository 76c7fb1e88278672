package snapshot

import (
	"lukechampine.com/blake3/guts"
)

// blockSize is what one call of the SIMD kernel hashes: 16 chunks of 1 KiB.
const blockSize = guts.MaxSIMD * guts.ChunkSize

// treeHasher computes BLAKE3-256 of an input of known length with the
// AVX-512/AVX2 kernels of lukechampine.com/blake3/guts, in the calling
// goroutine only. Staying in one goroutine matters: large files are hashed
// from memory mappings, and a fault on a mapping (the file was truncated)
// can be recovered only in the goroutine that touched it.
//
// The tree follows the BLAKE3 specification: the input is cut into 1 KiB
// chunks, complete left subtrees of 2^k chunks are merged as soon as two
// of equal size are on the stack, and the last block is held back so the
// root node can be compressed with the ROOT flag.
type treeHasher struct {
	stack []subtree
	tail  [blockSize]byte
}

type subtree struct {
	cv     [8]uint32
	chunks uint64
}

func (t *treeHasher) reset() { t.stack = t.stack[:0] }

// chunksDone is the number of chunks already consumed.
func (t *treeHasher) chunksDone() uint64 {
	var n uint64
	for _, s := range t.stack {
		n += s.chunks
	}
	return n
}

// writeBlocks hashes p, a whole number of blocks none of which is the last
// block of the input.
func (t *treeHasher) writeBlocks(p []byte) {
	counter := t.chunksDone()
	for len(p) >= blockSize {
		n := guts.CompressBuffer((*[blockSize]byte)(p[:blockSize]), blockSize, &guts.IV, counter, 0)
		t.push(guts.ChainingValue(n), guts.MaxSIMD)
		p = p[blockSize:]
		counter += guts.MaxSIMD
	}
}

func (t *treeHasher) push(cv [8]uint32, chunks uint64) {
	for len(t.stack) > 0 && t.stack[len(t.stack)-1].chunks == chunks {
		left := t.stack[len(t.stack)-1]
		t.stack = t.stack[:len(t.stack)-1]
		cv = guts.ChainingValue(guts.ParentNode(left.cv, cv, &guts.IV, 0))
		chunks *= 2
	}
	t.stack = append(t.stack, subtree{cv, chunks})
}

// finish hashes the last block (0 to blockSize bytes; 0 only for an empty
// input) and returns the digest.
func (t *treeHasher) finish(last []byte) [32]byte {
	var n guts.Node
	counter := t.chunksDone()
	if len(last) == 0 {
		n = guts.CompressChunk(nil, &guts.IV, counter, 0)
	} else {
		copy(t.tail[:], last)
		clear(t.tail[len(last):])
		n = guts.CompressBuffer(&t.tail, len(last), &guts.IV, counter, 0)
	}
	for i := len(t.stack) - 1; i >= 0; i-- {
		n = guts.ParentNode(t.stack[i].cv, guts.ChainingValue(n), &guts.IV, 0)
	}
	n.Flags |= guts.FlagRoot
	out := guts.WordsToBytes(guts.CompressNode(n))
	var digest [32]byte
	copy(digest[:], out[:32])
	return digest
}

// sum returns the BLAKE3 of data, a whole input in memory.
func (t *treeHasher) sum(data []byte) [32]byte {
	t.reset()
	cut := lastBlockStart(int64(len(data)))
	t.writeBlocks(data[:cut])
	return t.finish(data[cut:])
}

// lastBlockStart returns where the last block of an input of size bytes
// starts: everything before it can go to writeBlocks.
func lastBlockStart(size int64) int64 {
	if size == 0 {
		return 0
	}
	return (size - 1) / blockSize * blockSize
}
