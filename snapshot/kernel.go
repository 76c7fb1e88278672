package snapshot

import (
	"sync"
	"time"

	"github.com/zeebo/blake3"
	"golang.org/x/sys/cpu"

	"github.com/deltabackup/deltabackup/snapshot/internal/treehash"
)

// Large files are hashed from memory mappings in the walker's goroutine
// by one of two BLAKE3 implementations, both computing the same BLAKE3:
// github.com/zeebo/blake3 (AVX2, or portable code), or on AVX-512 CPUs
// the 16-way kernel of internal/treehash. On the AMD EPYC with AVX-512 of
// bench/results treehash hashes 8.5 GB/s within the caches and 7.9
// streaming from memory, zeebo's AVX2 kernel 4.0; a CPU whose AVX-512 is
// slow (split into 256-bit halves, or lowering the clock) may turn that
// round, so the first large file of a process times both on one mapping
// window (16 MiB) and keeps the faster.
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
		data := make([]byte, 16<<20)
		for i := range data {
			data[i] = byte(i * 131) // faulted in before anything is timed
		}
		h := blake3.New()
		t := treehash.New()
		timed := func(hash func()) time.Duration {
			start := time.Now()
			hash()
			return time.Since(start)
		}
		// Alternated, best of three each (about 20 ms in all): a
		// preemption or a frequency change spoils one run, not one kernel.
		zeebo, avx512 := time.Duration(1<<62), time.Duration(1<<62)
		for range 3 {
			zeebo = min(zeebo, timed(func() { h.Reset(); _, _ = h.Write(data); h.Sum(nil) }))
			avx512 = min(avx512, timed(func() { t.Sum256(data) }))
		}
		useAVX512Kernel = avx512 < zeebo
	})
}

// HashKernel names the BLAKE3 kernel large files are hashed with here
// (choosing it first, which takes a few milliseconds).
func HashKernel() string {
	chooseKernel()
	switch {
	case useAVX512Kernel:
		return "avx512 (deltabackup treehash)"
	case cpu.X86.HasAVX2:
		return "avx2 (github.com/zeebo/blake3)"
	}
	return "portable (github.com/zeebo/blake3)"
}
