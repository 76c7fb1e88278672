package hashstore

import (
	"fmt"
	"runtime"
	"sync"

	"github.com/klauspost/compress/zstd"
)

// Compression is how hard a Store compresses the objects it writes. It is
// a choice made when writing; every object says how it is encoded, so
// readers need no setting.
type Compression int

// Compression levels. Fast, the default, uses S2 for small contents and
// zstd's fastest level for the rest; Better is zstd's default level (what
// restic calls auto); Max is zstd's best; Off stores everything raw.
const (
	CompressionFast Compression = iota
	CompressionBetter
	CompressionMax
	CompressionOff
)

var compressionNames = map[Compression]string{CompressionFast: "fast", CompressionBetter: "better", CompressionMax: "max", CompressionOff: "off"}

func (c Compression) String() string { return compressionNames[c] }

// ParseCompression reads a level by name.
func ParseCompression(name string) (Compression, error) {
	for c, n := range compressionNames {
		if n == name {
			return c, nil
		}
	}
	return 0, fmt.Errorf("unknown compression %q (off, fast, better, max)", name)
}

// zstdCodecs holds the zstd encoders of one level, created on first use:
// each encoder keeps history and tables worth megabytes.
type zstdCodecs struct {
	level zstd.EncoderLevel
	once  sync.Once
	// all serves EncodeAll, safe for concurrent use; one encoder per CPU
	// so workers do not queue for it.
	all *zstd.Encoder
	// stream holds single-goroutine streaming encoders (large objects);
	// parallel holds streaming encoders that use every CPU (manifests).
	stream, parallel sync.Pool
}

var levels = map[Compression]*zstdCodecs{
	CompressionFast:   {level: zstd.SpeedFastest},
	CompressionBetter: {level: zstd.SpeedDefault},
	CompressionMax:    {level: zstd.SpeedBestCompression},
	CompressionOff:    {level: zstd.SpeedFastest}, // only for metadata, which is always compressed
}

func newEncoder(level zstd.EncoderLevel, concurrency int) *zstd.Encoder {
	e, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(level), zstd.WithEncoderConcurrency(concurrency), zstd.WithWindowSize(encoderWindow))
	if err != nil {
		panic(err) // only fails on invalid options
	}
	return e
}

func (c Compression) zstd() *zstdCodecs {
	z := levels[c]
	z.once.Do(func() {
		z.all = newEncoder(z.level, runtime.GOMAXPROCS(0))
		z.stream.New = func() any { return newEncoder(z.level, 1) }
		z.parallel.New = func() any { return newEncoder(z.level, runtime.GOMAXPROCS(0)) }
	})
	return z
}

// metadataZstd compresses index files and pack trailers.
func metadataZstd() *zstd.Encoder { return CompressionFast.zstd().all }
