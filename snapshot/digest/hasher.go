package digest

import (
	"sync"

	"github.com/zeebo/blake3"

	"github.com/deltabackup/deltabackup/snapshot/internal/treehash"
)

// Hasher computes the Digest of a stream with the faster of two BLAKE3
// implementations for its length: github.com/zeebo/blake3 for streams
// that end within treehash.BlockSize (16 KiB), and on CPUs with AVX-512
// the tree kernel of snapshot/internal/treehash beyond (twice zeebo's
// speed there). The first 16 KiB are held until it is known which.
type Hasher struct {
	small  *blake3.Hasher
	tree   *treehash.Hasher // nil where zeebo's is the faster
	head   []byte           // with tree: what was written while inTree is false
	inTree bool
}

// NewHasher returns an empty Hasher.
func NewHasher() *Hasher {
	h := &Hasher{small: blake3.New()}
	if treehash.Fast() {
		h.tree = treehash.New()
		h.head = make([]byte, 0, treehash.BlockSize)
	}
	return h
}

// Reset starts a new stream.
func (h *Hasher) Reset() {
	h.small.Reset()
	h.head = h.head[:0]
	h.inTree = false
}

// Write adds p to the stream; it never fails.
func (h *Hasher) Write(p []byte) (int, error) {
	switch {
	case h.tree == nil:
		return h.small.Write(p)
	case h.inTree:
		return h.tree.Write(p)
	case len(h.head)+len(p) <= treehash.BlockSize:
		h.head = append(h.head, p...)
		return len(p), nil
	}
	h.inTree = true
	h.tree.Reset()
	_, _ = h.tree.Write(h.head)
	return h.tree.Write(p)
}

// Sum appends the digest of the stream to b. The Hasher must be Reset
// before it hashes another stream.
func (h *Hasher) Sum(b []byte) []byte {
	switch {
	case h.tree == nil:
		return h.small.Sum(b)
	case h.inTree:
		return h.tree.Sum(b)
	}
	d := blake3.Sum256(h.head)
	return append(b, d[:]...)
}

// Digest returns the digest of the stream (as Sum).
func (h *Hasher) Digest() Digest {
	var d Digest
	h.Sum(d[:0])
	return d
}

// trees recycles tree hashers for Of: each holds 24 KiB of buffers.
var trees = sync.Pool{New: func() any { return treehash.New() }}

// Of returns the BLAKE3-256 digest of data.
func Of(data []byte) Digest {
	if len(data) < treehash.BlockSize || !treehash.Fast() {
		return blake3.Sum256(data)
	}
	t := trees.Get().(*treehash.Hasher)
	defer trees.Put(t)
	return t.Sum256(data)
}
