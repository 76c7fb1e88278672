package hashstore

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/deltabackup/deltabackup/snapshot/digest"
)

func benchContent(n int, text bool) []byte {
	if text {
		line := "log line with some words and a number 12345\n"
		return []byte(strings.Repeat(line, n/len(line)+1))[:n]
	}
	r := rand.New(rand.NewPCG(9, uint64(n)))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// benchModes are the repository modes every benchmark runs in: what
// encryption costs is the difference.
var benchModes = []struct {
	name string
	opts Options
}{{"sealed", testOptions(Options{})}, {"plain", Options{Unencrypted: true}}}

// BenchmarkObjectEncode measures encoding (hash check, zstd or raw) into
// a memory backend, BenchmarkObjectDecode reading back with verification.
func BenchmarkObjectEncode(b *testing.B) {
	for _, c := range []struct {
		size int
		text bool
	}{{4 << 10, true}, {4 << 10, false}, {1 << 20, true}, {1 << 20, false}, {32 << 20, false}} {
		data := benchContent(c.size, c.text)
		h := digest.Of(data)
		for _, mode := range benchModes {
			b.Run(fmt.Sprintf("%dKiB/text=%v/%s", c.size>>10, c.text, mode.name), func(b *testing.B) {
				s, _ := Init(context.Background(), NewMemory(), mode.opts)
				b.SetBytes(int64(len(data)))
				b.ResetTimer() // Init derived a key
				for range b.N {
					if _, err := s.Put(context.Background(), h, bytes.NewReader(data), int64(len(data))); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}

func BenchmarkObjectDecode(b *testing.B) {
	for _, c := range []struct {
		size int
		text bool
	}{{4 << 10, true}, {1 << 20, true}, {1 << 20, false}} {
		data := benchContent(c.size, c.text)
		h := digest.Of(data)
		for _, mode := range benchModes {
			b.Run(fmt.Sprintf("%dKiB/text=%v/%s", c.size>>10, c.text, mode.name), func(b *testing.B) {
				s, _ := Init(context.Background(), NewMemory(), mode.opts)
				s.Put(context.Background(), h, bytes.NewReader(data), int64(len(data)))
				b.SetBytes(int64(len(data)))
				b.ResetTimer() // Init derived a key
				for range b.N {
					o, err := s.Get(context.Background(), h)
					if err != nil {
						b.Fatal(err)
					}
					if _, err := io.Copy(io.Discard, o); err != nil {
						b.Fatal(err)
					}
					o.Close()
				}
			})
		}
	}
}

// BenchmarkPackedGetMany reads 1,000 small objects of one pack with one
// coalesced read.
func BenchmarkPackedGetMany(b *testing.B) {
	for _, mode := range benchModes {
		b.Run(mode.name, func(b *testing.B) { benchmarkPackedGetMany(b, mode.opts) })
	}
}

func benchmarkPackedGetMany(b *testing.B, opts Options) {
	ctx := context.Background()
	s, _ := Init(ctx, NewMemory(), opts)
	var hs []digest.Digest
	var total int64
	s.WithPacker(ctx, 0, func(ctx context.Context, p *Packer) error {
		for i := range 1000 {
			data := benchContent(2000+i, i%2 == 0)
			h := digest.Of(data)
			hs = append(hs, h)
			total += int64(len(data))
			p.Add(ctx, h, data)
		}
		return nil
	})
	b.SetBytes(total)
	b.ResetTimer() // Init derived a key, the packer wrote
	for range b.N {
		err := s.GetMany(ctx, hs, func(h digest.Digest, r io.Reader, err error) error {
			if err != nil {
				return err
			}
			_, err = io.Copy(io.Discard, r)
			return err
		})
		if err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(1000*b.N)/b.Elapsed().Seconds(), "objects/s")
}
