package snapshot

import (
	"golang.org/x/sys/cpu"

	"github.com/deltabackup/deltabackup/snapshot/internal/treehash"
)

// Large inputs (files, and chunks of 16 KiB and more) are hashed by one
// of two BLAKE3 implementations, both computing the same BLAKE3: on
// AVX-512 CPUs the 16-way kernel of internal/treehash, elsewhere
// github.com/zeebo/blake3 (AVX2, or portable code). On the AMD EPYC with
// AVX-512 of bench/results treehash hashes 8.5 GB/s within the caches and
// 7.9 streaming from memory, zeebo's AVX2 kernel 4.0 in both. (Until
// treehash, a process timed lukechampine.com/blake3's AVX-512 kernel
// against zeebo's on its first large file, because that kernel was the
// slower one streaming from memory; treehash is twice zeebo's either way.)
// GODEBUG=cpu.avx512f=off rules the AVX-512 kernel out, and
// BLAKE3_DISABLE_AVX2=1 makes zeebo use its portable code.
var useAVX512Kernel = treehash.Fast()

// HashKernel names the BLAKE3 kernel large files are hashed with here.
func HashKernel() string {
	switch {
	case useAVX512Kernel:
		return "avx512 (deltabackup treehash)"
	case cpu.X86.HasAVX2:
		return "avx2 (github.com/zeebo/blake3)"
	}
	return "portable (github.com/zeebo/blake3)"
}
