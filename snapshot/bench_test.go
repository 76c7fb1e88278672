package snapshot

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"testing"
	"time"

	"github.com/zeebo/blake3"
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

func BenchmarkHashTree(b *testing.B) {
	data := benchData(16 << 20)
	var t treeHasher
	b.SetBytes(int64(len(data)))
	for range b.N {
		t.reset()
		cut := lastBlockStart(int64(len(data)))
		t.writeBlocks(data[:cut])
		t.finish(data[cut:])
	}
}

// BenchmarkSnapshotTree hashes a tree of small files through the whole
// walk, read and hash pipeline, with and without the stat cache.
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
			cache := NewMemoryStatCache()
			opts := DefaultOptions(src)
			if cached {
				opts.Cache = cache
				s, _ := New(opts)
				s.Snapshot(context.Background())
				cache.Save()
			}
			s, err := New(opts)
			if err != nil {
				b.Fatal(err)
			}
			b.SetBytes(total)
			b.ResetTimer()
			for range b.N {
				res, err := s.Snapshot(context.Background())
				if err != nil {
					b.Fatal(err)
				}
				if cached {
					cache.Save()
				}
				_ = res
			}
			b.ReportMetric(float64(files*b.N)/b.Elapsed().Seconds(), "files/s")
		})
	}
}

func benchManifest(files int) *Manifest {
	m := &Manifest{Version: ManifestVersion, HashAlgorithm: HashAlgorithm, RootGlobs: []string{"**"}, ExcludeGlobs: []string{}}
	for i := range files {
		sum := blake3.Sum256([]byte(fmt.Sprint(i)))
		m.Files = append(m.Files, File{
			RelativePath: fmt.Sprintf("dir%03d/sub/file-%07d.dat", i%500, i),
			FileSize:     int64(1000 + i), MtimeNs: int64(i) * 1e9, Mode: 0o644,
			Hexdigest: sum, StoredFileSize: int64(900 + i),
		})
	}
	sort.Slice(m.Files, func(i, j int) bool { return m.Files[i].RelativePath < m.Files[j].RelativePath })
	m.SetHashes()
	return m
}

func BenchmarkManifestEncode(b *testing.B) {
	m := benchManifest(100000)
	data, _ := m.Encode()
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	for range b.N {
		if _, err := m.Encode(); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(len(m.Files)*b.N)/b.Elapsed().Seconds(), "files/s")
}

func BenchmarkManifestDecode(b *testing.B) {
	m := benchManifest(100000)
	data, _ := m.Encode()
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	for range b.N {
		if _, err := DecodeManifest(data); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(len(m.Files)*b.N)/b.Elapsed().Seconds(), "files/s")
}

func BenchmarkStatCacheLookup(b *testing.B) {
	const n = 200000
	c := NewMemoryStatCache()
	keys := make([]string, n)
	stats := make([]fileStat, n)
	for i := range n {
		keys[i] = fmt.Sprintf("dir%03d/file-%07d", i%400, i)
		stats[i] = fileStat{size: int64(i), mtimeNs: int64(i), ctimeNs: int64(i), inode: uint64(i)}
		c.record(keys[i], cacheEntry{stat: stats[i]})
	}
	c.Save()
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		if _, ok := c.lookup(keys[i%n], stats[i%n]); !ok {
			b.Fatal("miss")
		}
	}
}

func BenchmarkStatCacheSaveLoad(b *testing.B) {
	const n = 200000
	var records []cacheRecord
	for i := range n {
		records = append(records, cacheRecord{fmt.Sprintf("dir%03d/file-%07d", i%400, i), cacheEntry{stat: fileStat{size: int64(i), inode: uint64(i)}}})
	}
	data := encodeStatCache(records)
	b.SetBytes(int64(len(data)))
	for range b.N {
		data := encodeStatCache(records)
		if _, err := decodeStatCache(data); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(n*b.N)/b.Elapsed().Seconds(), "entries/s")
}
