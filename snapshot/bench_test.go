package snapshot

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/zeebo/blake3"

	"github.com/deltabackup/deltabackup/snapshot/internal/treehash"
)

// Benchmarks for the hot paths of a backup. Compare runs with benchstat:
//
//	go test -run '^$' -bench . -count 6 ./snapshot > new.txt

func benchData(n int) []byte {
	r := rand.New(rand.NewPCG(1, uint64(n)))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

func BenchmarkHashSmall(b *testing.B) {
	for _, n := range []int{1 << 10, 4 << 10, 64 << 10} {
		data := benchData(n)
		b.Run(fmt.Sprintf("%dKiB", n>>10), func(b *testing.B) {
			h := blake3.New()
			b.SetBytes(int64(n))
			for range b.N {
				h.Reset()
				h.Write(data)
				h.Sum(nil)
			}
		})
	}
}

// BenchmarkSnapshotTree runs the whole walk, read and hash pipeline over
// a tree of small files: without a cache (a first backup), and with a
// trusted one (a no-change backup: status only, trees taken by id).
func BenchmarkSnapshotTree(b *testing.B) {
	src := b.TempDir()
	const files = 2000
	var total int64
	for i := range files {
		d := filepath.Join(src, fmt.Sprintf("d%02d", i%20))
		os.MkdirAll(d, 0o755)
		data := benchData(1024 + i%3000)
		total += int64(len(data))
		p := filepath.Join(d, fmt.Sprintf("f%04d", i))
		os.WriteFile(p, data, 0o644)
		os.Chtimes(p, time.Unix(1e9, 0), time.Unix(1e9, 0))
	}
	time.Sleep(2 * racyWindow)
	for _, cached := range []bool{false, true} {
		b.Run(fmt.Sprintf("cache=%v", cached), func(b *testing.B) {
			opts := DefaultOptions()
			path := filepath.Join(b.TempDir(), "cache")
			if cached {
				c, _ := OpenDirCache(path)
				opts.Cache = c
				s, _ := New(src, opts)
				s.Snapshot(context.Background())
				c.Commit("g")
				c.Close()
			}
			b.SetBytes(total)
			b.ResetTimer()
			for range b.N {
				if cached {
					c, _ := OpenDirCache(path)
					c.Trusted = true
					opts.Cache = c
				}
				s, _ := New(src, opts)
				if _, err := s.Snapshot(context.Background()); err != nil {
					b.Fatal(err)
				}
				if cached {
					opts.Cache.Close()
				}
			}
		})
	}
}

func BenchmarkTreeEncode(b *testing.B) {
	t := benchTree(10000)
	b.ReportAllocs()
	for range b.N {
		if _, err := t.Encode(); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkTreeDecode(b *testing.B) {
	data, _ := benchTree(10000).Encode()
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	for range b.N {
		if _, err := DecodeTree(data); err != nil {
			b.Fatal(err)
		}
	}
}

// benchTree is a directory of n files as a backup records them.
func benchTree(n int) *Tree {
	t := &Tree{}
	for i := range n {
		t.Nodes = append(t.Nodes, Node{Name: fmt.Sprintf("file-%07d.dat", i), Type: TypeFile, Mode: 0o644, UID: 1000, GID: 1000,
			User: "postgres", Group: "postgres", MtimeNs: 1700000000_000000000 + int64(i), Size: int64(4096 + i), ID: sum(fmt.Sprint(i))})
	}
	return t
}

// BenchmarkHashLarge compares the two kernels of kernel.go on 16 MiB.
func BenchmarkHashLarge(b *testing.B) {
	data := benchData(16 << 20)
	b.Run("zeebo", func(b *testing.B) {
		h := blake3.New()
		b.SetBytes(int64(len(data)))
		for range b.N {
			h.Reset()
			h.Write(data)
			h.Sum(nil)
		}
	})
	b.Run("treehash", func(b *testing.B) {
		t := treehash.New()
		b.SetBytes(int64(len(data)))
		for range b.N {
			t.Sum256(data)
		}
	})
}
