package snapshot

import (
	"math/bits"

	chunkers "github.com/PlakarKorp/go-cdc-chunkers"
	"github.com/PlakarKorp/go-cdc-chunkers/chunkers/fastcdc"
)

// gearCut is ChunkerFastCDC with a faster scan: the cut points are the
// library's (TestGearCutMatchesFastCDC compares them), found at about
// twice its speed. FastCDC's gear hash fp = fp<<1 + G[byte] carries one
// shift and one add per byte from each byte to the next; the scan here
// computes four bytes' worth at once, fp<<4 + (G[a]<<3 + G[b]<<2 +
// G[c]<<1 + G[d]), so the carried chain is two operations per four
// bytes and the rest runs in parallel. The library still keys the gear
// table (Setup) and buffers the stream (chunkers.Chunker).
type gearCut struct {
	fastcdc.FastCDC
	maskS, maskL uint64
}

// gearCutName is the name gearCut is registered under with the chunkers
// library; repositories name the chunker ChunkerFastCDC.
const gearCutName = "deltabackup-" + ChunkerFastCDC

func init() {
	if err := chunkers.Register(gearCutName, func() chunkers.ChunkerImplementation { return &gearCut{} }); err != nil {
		panic(err)
	}
}

// Setup derives the keyed gear table as the library does and the masks
// of ChunkerFastCDC: log2(average)+2 bits below the average size and
// log2(average)-2 above it ("normalization level" 2), spread evenly from
// the top bit down. The library uses fixed masks for its default sizes
// (2/8/64 KiB), which Check does not allow.
func (g *gearCut) Setup(o *chunkers.ChunkerOpts) error {
	if err := g.FastCDC.Setup(o); err != nil {
		return err
	}
	avgBits := bits.Len(uint(o.NormalSize)) - 1
	g.maskS, g.maskL = spacedMask(avgBits+2), spacedMask(avgBits-2)
	return nil
}

// spacedMask has ones 1 bits, one every 64/ones bits from bit 63 down.
func spacedMask(ones int) uint64 {
	if ones >= 64 {
		return ^uint64(0)
	}
	var mask uint64
	for i := range max(ones, 0) {
		mask |= 1 << (63 - i*(64/ones))
	}
	return mask
}

// Algorithm returns the length of the chunk at the start of data[:n]:
// bytes from the minimum size to the average are tested with the
// stricter mask, then up to the maximum with the looser one.
func (g *gearCut) Algorithm(o *chunkers.ChunkerOpts, data []byte, n int) int {
	normal := o.NormalSize
	switch {
	case n <= o.MinSize:
		return n
	case n >= o.MaxSize:
		n = o.MaxSize
	case n <= normal:
		normal = n
	}
	if cut, fp, found := g.scan(data[:normal], o.MinSize, 0, g.maskS); found {
		return cut
	} else if cut, _, found := g.scan(data[:n], normal, fp, g.maskL); found {
		return cut
	}
	return n
}

// scan goes on with the gear hash fp from data[i] to the end of data and
// returns the first position whose hash has no bit of mask set.
func (g *gearCut) scan(data []byte, i int, fp uint64, mask uint64) (int, uint64, bool) {
	table := g.G
	for ; i+4 <= len(data); i += 4 {
		p := data[i : i+4 : i+4]
		a, b, c, d := table[p[0]], table[p[1]], table[p[2]], table[p[3]]
		fp1 := fp<<1 + a
		fp2 := fp1<<1 + b
		fp3 := fp2<<1 + c
		next := fp<<4 + (a<<3 + b<<2 + c<<1 + d)
		switch {
		case fp1&mask == 0:
			return i, fp1, true
		case fp2&mask == 0:
			return i + 1, fp2, true
		case fp3&mask == 0:
			return i + 2, fp3, true
		case next&mask == 0:
			return i + 3, next, true
		}
		fp = next
	}
	for ; i < len(data); i++ {
		fp = fp<<1 + table[data[i]]
		if fp&mask == 0 {
			return i, fp, true
		}
	}
	return i, fp, false
}
