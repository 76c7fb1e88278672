package snapshot

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"math/bits"
	"runtime"
	"sync"

	"golang.org/x/sync/errgroup"

	chunkers "github.com/PlakarKorp/go-cdc-chunkers"
	_ "github.com/PlakarKorp/go-cdc-chunkers/chunkers/fastcdc" // registers ChunkerFastCDC

	"github.com/deltabackup/deltabackup/snapshot/digest"
)

// ChunkerFastCDC names the chunker: FastCDC (2020, normalised, level 2)
// with a gear table keyed by BLAKE3, as github.com/PlakarKorp/go-cdc-chunkers
// implements it. The name is stored in each repository's config: the cut
// points of a name must never change, or equal data stops deduplicating.
const ChunkerFastCDC = "fastcdc-v1.0.0"

// Chunking says how files with much data are cut into chunks, so that a
// change stores the chunks it touched and not the whole file.
type Chunking struct {
	// Algorithm is ChunkerFastCDC; empty means no chunking.
	Algorithm string
	// MinSize, AvgSize and MaxSize bound the chunks; AvgSize is a power
	// of two.
	MinSize, AvgSize, MaxSize int
	// Threshold: files with at least this many data bytes are chunked.
	Threshold int64
	// Key keys the gear table (32 bytes), so that cut points depend on a
	// secret of the repository.
	Key []byte
}

// Limits on chunk sizes: a chunk is held in memory whole by a reader and
// by a writer, and a tree lists every chunk of a file.
const (
	MinChunkSize = 4 << 10
	MaxChunkSize = 16 << 20
)

// Enabled reports whether files are chunked at all.
func (c Chunking) Enabled() bool { return c.Algorithm != "" }

// Check reports what makes c unusable: an unknown algorithm, sizes out of
// order or out of bounds, or a key of the wrong length.
func (c Chunking) Check() error {
	if !c.Enabled() {
		return nil
	}
	switch {
	case c.Algorithm != ChunkerFastCDC:
		return fmt.Errorf("unknown chunker %q", c.Algorithm)
	case c.AvgSize <= 0 || bits.OnesCount(uint(c.AvgSize)) != 1:
		return fmt.Errorf("average chunk size %d is not a power of two", c.AvgSize)
	case c.MinSize < MinChunkSize || c.MinSize >= c.AvgSize || c.AvgSize >= c.MaxSize || c.MaxSize > MaxChunkSize:
		return fmt.Errorf("chunk sizes %d/%d/%d (min/avg/max) must grow and lie within %d and %d", c.MinSize, c.AvgSize, c.MaxSize, MinChunkSize, MaxChunkSize)
	case c.Threshold < int64(c.MinSize):
		return fmt.Errorf("chunking threshold %d is below the minimum chunk size %d", c.Threshold, c.MinSize)
	case len(c.Key) != 32:
		return errors.New("the chunker's key must be 32 bytes")
	}
	return nil
}

// chunker cuts one stream after another into chunks, with a scan buffer
// of its own (two maximum chunks, so refills are rare).
type chunker struct {
	c   *chunkers.Chunker
	buf []byte
}

// newChunkerPool returns a pool of chunkers for c, nil when c is off.
func newChunkerPool(c Chunking) *sync.Pool {
	if !c.Enabled() {
		return nil
	}
	return &sync.Pool{New: func() any {
		buf := make([]byte, 2*c.MaxSize)
		opts := &chunkers.ChunkerOpts{MinSize: c.MinSize, NormalSize: c.AvgSize, MaxSize: c.MaxSize, Key: c.Key}
		cc, err := chunkers.NewChunkerBuffer(gearCutName, eofReader{}, opts, buf) // c.Algorithm, faster
		if err != nil {
			panic(fmt.Sprintf("chunker %s: %v", c.Algorithm, err)) // Check passed: a programming error
		}
		return &chunker{c: cc, buf: buf}
	}}
}

type eofReader struct{}

func (eofReader) Read([]byte) (int, error) { return 0, io.EOF }

// split calls fn with each chunk of r in order; a chunk is valid only
// during fn.
func (k *chunker) split(r io.Reader, fn func(chunk []byte) error) error {
	k.c.Reset(r)
	defer k.c.Reset(eofReader{}) // drop the reference to r
	for {
		data, err := k.c.Next()
		if err != nil && err != io.EOF {
			return err
		}
		if len(data) > 0 {
			if ferr := fn(data); ferr != nil {
				return ferr
			}
		}
		if err == io.EOF {
			return nil
		}
	}
}

// chunkFile cuts the data of one file (r yields it) into chunks, hashes
// each and hands it to the Sink straight from the read buffer: a chunked
// file is read once, however much of it is new. The caller compares the
// file's status before and after, so chunks of two versions of a file
// never make one node; a chunk stored from a version that did not last
// is a correct content under its own id that the next gc removes.
//
// In a file of parallelChunkMin bytes or more, chunks are hashed and
// stored by up to one goroutine per CPU while the next are cut (each
// from a copy, since the cutter's buffer moves on): one large file alone
// uses every core, as the walkers do for many files.
func (w *walker) chunkFile(ctx context.Context, h *hasher, r io.Reader, rel string, dataSize int64) ([]Chunk, int64, error) {
	s := w.s
	k := s.chunkers.Get().(*chunker)
	defer s.chunkers.Put(k)
	h.whole = nil
	chunks := make([]Chunk, 0, dataSize/int64(s.opts.Chunking.AvgSize)+1)
	var read int64
	lanes := runtime.NumCPU()
	if dataSize < parallelChunkMin || lanes < 2 {
		lanes = 0
	}
	var g *errgroup.Group
	var slots []*digest.Digest // with g: the ids, as each goroutine finds it
	gctx := ctx
	if lanes > 0 {
		g, gctx = errgroup.WithContext(ctx)
		g.SetLimit(lanes)
	}
	err := k.split(r, func(data []byte) error {
		if err := gctx.Err(); err != nil {
			return err // cancelled, or a chunk could not be stored
		}
		size := int64(len(data))
		read += size
		if read > dataSize {
			return fmt.Errorf("%w: grew while read", ErrChangedWhileReading)
		}
		i := len(chunks)
		chunks = append(chunks, Chunk{Size: size})
		if testHookAfterRead != nil && i == 0 {
			testHookAfterRead(rel, 0)
		}
		if g == nil {
			id, err := w.storeChunk(ctx, data, rel)
			chunks[i].ID = id
			return err
		}
		buf := chunkCopies.Get().(*[]byte)
		*buf = append((*buf)[:0], data...)
		slot := new(digest.Digest) // the goroutine's own: chunks may move as it grows
		slots = append(slots, slot)
		g.Go(func() error {
			defer chunkCopies.Put(buf)
			id, err := w.storeChunk(gctx, *buf, rel)
			*slot = id
			return err
		})
		return nil
	})
	if g != nil {
		if werr := g.Wait(); err == nil || errors.Is(err, context.Canceled) {
			err = cmp.Or(werr, err)
		}
		for i, slot := range slots {
			chunks[i].ID = *slot
		}
	}
	if err != nil {
		if errors.Is(err, io.ErrUnexpectedEOF) {
			return nil, 0, errShrank
		}
		return nil, 0, err
	}
	return chunks, read, nil
}

// parallelChunkMin: files at least this large are hashed by several
// goroutines (a variable for tests).
var parallelChunkMin int64 = 64 << 20

// chunkCopies hold chunks being hashed and stored while the next ones
// are cut.
var chunkCopies = sync.Pool{New: func() any { return new([]byte) }}

// storeChunk hashes a chunk and hands it to the Sink.
func (w *walker) storeChunk(ctx context.Context, data []byte, rel string) (digest.Digest, error) {
	id := digest.Of(data) // with the faster kernel for its size
	sink := w.s.opts.Sink
	if sink == nil {
		return id, nil
	}
	size := int64(len(data))
	return id, store(ctx, sink, &Content{ID: id, Size: size, Bundled: size < w.s.opts.MinDeltaFileSize, Data: data, Path: rel,
		Open: func() io.Reader { return bytes.NewReader(data) }})
}

// store hands c to sink. A file that changed comes back as
// ErrChangedWhileReading (it is read again); any other failure is a
// sinkError, which stops the snapshot.
func store(ctx context.Context, sink Sink, c *Content) error {
	err := sink.StoreContent(ctx, c)
	if err == nil || errors.Is(err, ErrChangedWhileReading) {
		return err
	}
	return &sinkError{fmt.Errorf("store %s: %w", c.Path, err)}
}
