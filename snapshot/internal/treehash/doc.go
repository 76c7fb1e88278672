// Package treehash computes BLAKE3-256 of inputs whose length is known,
// 16 chunks (16 KiB) or more at a time, with an AVX-512 kernel of its own
// on CPUs that have it: the whole-file digests of large files and the ids
// of large chunks. It computes the same BLAKE3 as github.com/zeebo/blake3
// and lukechampine.com/blake3, which it is tested against.
//
// The kernel (kernel_amd64.s, written by gen.go) hashes 16 chunks at once,
// one per 32-bit lane of the 512-bit registers, loading each chunk's 64-byte
// blocks whole and transposing them in registers (lukechampine's kernel
// gathers the words one by one, which costs it most of its speed when the
// data streams from memory; prefetching made no difference), and merges the chaining values of up to 256
// chunks 16 parents at a time with a second kernel. Inputs are split the
// BLAKE3 way, so a power-of-two run of chunks (a Subtree) can be hashed by
// another goroutine and pushed in order: one large file is hashed by
// several cores.
//
// Without AVX-512 (or with GODEBUG=cpu.avx512f=off) the same Hasher runs
// lukechampine.com/blake3/guts' AVX2 or portable code.
package treehash
