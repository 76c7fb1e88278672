package snapshot

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"

	chunkers "github.com/PlakarKorp/go-cdc-chunkers"
)

// cutPoints returns the chunk lengths algorithm cuts data into.
func cutPoints(t testing.TB, algorithm string, c Chunking, data []byte) []int {
	opts := &chunkers.ChunkerOpts{MinSize: c.MinSize, NormalSize: c.AvgSize, MaxSize: c.MaxSize, Key: c.Key}
	cc, err := chunkers.NewChunker(algorithm, bytes.NewReader(data), opts)
	if err != nil {
		t.Fatal(err)
	}
	var cuts []int
	for {
		chunk, err := cc.Next()
		if len(chunk) > 0 {
			cuts = append(cuts, len(chunk))
		}
		if err != nil {
			return cuts
		}
	}
}

// The faster scan cuts where the library's FastCDC does, for every size
// configuration a repository may have, keyed tables, and data of high
// and low entropy (long runs, where the masks and the maximum decide).
func TestGearCutMatchesFastCDC(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	random := make([]byte, 24<<20)
	for i := range random {
		random[i] = byte(r.Uint32())
	}
	text := bytes.Repeat([]byte("SELECT * FROM accounts WHERE id = 42;\n"), 300000)
	pages := make([]byte, 0, 16<<20)
	for len(pages) < 16<<20 {
		pages = append(pages, random[len(pages)%len(random):][:4096]...)
		pages = append(pages, make([]byte, 4096)...)
	}
	for _, sizes := range [][3]int{{4 << 10, 8 << 10, 64 << 10}, {64 << 10, 128 << 10, 1 << 20}, {32 << 10, 64 << 10, 512 << 10},
		{512 << 10, 1 << 20, 8 << 20}, {8 << 10, 16 << 10, 17 << 10}} {
		for k := range 3 {
			key := bytes.Repeat([]byte{byte(k + 1)}, 32)
			c := Chunking{Algorithm: ChunkerFastCDC, MinSize: sizes[0], AvgSize: sizes[1], MaxSize: sizes[2], Threshold: int64(sizes[2]), Key: key}
			if err := c.Check(); err != nil {
				t.Fatal(err)
			}
			for name, data := range map[string][]byte{"random": random, "text": text, "pages": pages, "short": random[:sizes[1]+5]} {
				t.Run(fmt.Sprintf("%v/key%d/%s", sizes, k, name), func(t *testing.T) {
					want := cutPoints(t, ChunkerFastCDC, c, data)
					got := cutPoints(t, gearCutName, c, data)
					if !slices.Equal(got, want) {
						t.Fatalf("%d chunks, want %d; first %v, want %v", len(got), len(want), got[:min(len(got), 5)], want[:min(len(want), 5)])
					}
				})
			}
		}
	}
}

func BenchmarkGearCut(b *testing.B) {
	data := benchData(64 << 20)
	c := Chunking{Algorithm: ChunkerFastCDC, MinSize: 64 << 10, AvgSize: 128 << 10, MaxSize: 1 << 20, Key: make([]byte, 32)}
	for _, algorithm := range []string{ChunkerFastCDC, gearCutName} {
		b.Run(algorithm, func(b *testing.B) {
			b.SetBytes(int64(len(data)))
			for b.Loop() {
				cutPoints(b, algorithm, c, data)
			}
		})
	}
}
