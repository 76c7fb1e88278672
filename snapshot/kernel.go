package snapshot

import (
	"sync"
	"time"

	"github.com/zeebo/blake3"
	"golang.org/x/sys/cpu"
)

// Large files are hashed from memory mappings in the walker's goroutine
// by one of two BLAKE3 implementations, both computing the same BLAKE3:
// github.com/zeebo/blake3 (AVX2, or portable code), or on AVX-512 CPUs
// the 16-way kernel of lukechampine.com/blake3/guts (treeHasher). Which
// is faster depends on the CPU and on where the data is (on the AMD EPYC
// with AVX-512 of bench/results, guts hashed 5.2 GB/s within the caches
// and 2.7 streaming 16 MiB from memory, zeebo's AVX2 kernel 3.9 in both;
// on AVX2-only CPUs guts falls back to code half as fast as zeebo's), so
// the first large file of a process times both on one mapping window
// (16 MiB) and keeps the faster.
// GODEBUG=cpu.avx512f=off rules the AVX-512 kernel out, and
// BLAKE3_DISABLE_AVX2=1 makes zeebo use its portable code.
var (
	kernelOnce      sync.Once
	useAVX512Kernel bool
)

// chooseKernel decides useAVX512Kernel once.
func chooseKernel() {
	kernelOnce.Do(func() {
		if !cpu.X86.HasAVX512F {
			return
		}
		// A mapping window's worth: within the caches guts' kernel is the
		// faster one here, streaming from memory, as files are, zeebo's.
		data := make([]byte, mmapWindow)
		for i := range data {
			data[i] = byte(i * 131) // faulted in before anything is timed
		}
		h := blake3.New()
		var t treeHasher
		timed := func(hash func()) time.Duration {
			start := time.Now()
			hash()
			return time.Since(start)
		}
		// Alternated, best of three each (about 30 ms in all): a
		// preemption or a frequency change spoils one run, not one kernel.
		zeebo, guts := time.Duration(1<<62), time.Duration(1<<62)
		for range 3 {
			zeebo = min(zeebo, timed(func() { h.Reset(); _, _ = h.Write(data); h.Sum(nil) }))
			guts = min(guts, timed(func() { t.sum(data) }))
		}
		useAVX512Kernel = guts < zeebo
	})
}

// HashKernel names the BLAKE3 kernel large files are hashed with here
// (choosing it first, which takes a few milliseconds).
func HashKernel() string {
	chooseKernel()
	switch {
	case useAVX512Kernel:
		return "avx512 (lukechampine.com/blake3/guts)"
	case cpu.X86.HasAVX2:
		return "avx2 (github.com/zeebo/blake3)"
	}
	return "portable (github.com/zeebo/blake3)"
}
