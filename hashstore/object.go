package hashstore

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"

	"github.com/klauspost/compress/zstd"

	"github.com/deltabackup/deltabackup/snapshot/digest"
)

// ErrCorrupt is wrapped by every error about an object whose stored bytes do
// not decode to content that hashes to its key.
var ErrCorrupt = errors.New("corrupt object")

// ErrContentMismatch is returned by Store.Put when the bytes offered do not
// hash to the hexdigest they are to be stored under (typically a source
// file that changed after it was hashed). Nothing is stored.
var ErrContentMismatch = errors.New("content does not match its hexdigest")

// CorruptObjectError names an object that failed verification on read.
type CorruptObjectError struct {
	ID     digest.Digest
	Reason string
}

func (e *CorruptObjectError) Error() string {
	return fmt.Sprintf("object %s is corrupt: %s", e.ID, e.Reason)
}

// Is makes errors.Is(err, ErrCorrupt) true.
func (e *CorruptObjectError) Is(target error) bool { return target == ErrCorrupt }

// Object encoding: a 16-byte header, then the payload.
//
//	magic "DBOB" | format version (1 byte) | codec (1 byte) | 2 zero bytes |
//	decoded size (uint64, big endian)
const (
	objectHeaderSize    = 16
	objectFormatVersion = 1
	// maxDecodedSize bounds what a header may claim, so that a hostile or
	// damaged header cannot drive a huge allocation or an endless read.
	maxDecodedSize = 1 << 46
)

var objectMagic = [4]byte{'D', 'B', 'O', 'B'}

// Codec is how an object's payload is stored.
type Codec byte

// Codecs. Raw is chosen when compression saves too little; S2 (block
// format) compresses small contents, where zstd's per-call cost dominates;
// zstd the rest.
const (
	CodecRaw  Codec = 0
	CodecZstd Codec = 1
	CodecS2   Codec = 2
)

// maxS2Size bounds S2 objects: they are decoded in one piece in memory, so
// a header claiming more is refused before anything is allocated.
const maxS2Size = 1 << 20

func (c Codec) String() string {
	switch c {
	case CodecRaw:
		return "raw"
	case CodecZstd:
		return "zstd"
	case CodecS2:
		return "s2"
	}
	return fmt.Sprintf("codec(%d)", byte(c))
}

// ObjectHeader is the decoded header of a stored object.
type ObjectHeader struct {
	Codec       Codec
	DecodedSize int64
}

func (h ObjectHeader) marshal() []byte {
	b := make([]byte, objectHeaderSize)
	copy(b, objectMagic[:])
	b[4] = objectFormatVersion
	b[5] = byte(h.Codec)
	binary.BigEndian.PutUint64(b[8:], uint64(h.DecodedSize))
	return b
}

// ParseObjectHeader decodes and checks the first objectHeaderSize bytes of
// a stored object.
func ParseObjectHeader(b []byte) (ObjectHeader, error) {
	if len(b) < objectHeaderSize {
		return ObjectHeader{}, fmt.Errorf("header is %d bytes, want %d", len(b), objectHeaderSize)
	}
	if !bytes.Equal(b[:4], objectMagic[:]) {
		return ObjectHeader{}, fmt.Errorf("bad magic %q", b[:4])
	}
	if b[4] != objectFormatVersion {
		return ObjectHeader{}, fmt.Errorf("unknown object format version %d", b[4])
	}
	c := Codec(b[5])
	if c != CodecRaw && c != CodecZstd && c != CodecS2 {
		return ObjectHeader{}, fmt.Errorf("unknown codec %d", b[5])
	}
	if b[6] != 0 || b[7] != 0 {
		return ObjectHeader{}, errors.New("reserved header bytes are not zero")
	}
	size := binary.BigEndian.Uint64(b[8:])
	if size > maxDecodedSize || (c == CodecS2 && size > maxS2Size) {
		return ObjectHeader{}, fmt.Errorf("decoded size %d is implausible for codec %v", size, c)
	}
	return ObjectHeader{Codec: c, DecodedSize: int64(size)}, nil
}

// encoderWindow caps the zstd window: each encoder keeps a history of this
// size, and 2 MiB loses little ratio on file contents against the default
// 8 MiB while keeping memory per encoder small.
const encoderWindow = 2 << 20

var (
	// decoderPool holds streaming decoders; each is used by one reader at a
	// time. Memory is capped so that a hostile frame cannot allocate without
	// bound.
	decoderPool = sync.Pool{New: func() any {
		d, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxMemory(1<<30), zstd.WithDecoderMaxWindow(64<<20))
		if err != nil {
			panic(err) // only fails on invalid options
		}
		return d
	}}
)

// hasherPool recycles BLAKE3 states: each holds several KiB of buffers,
// and a restore of many small files would otherwise allocate one per
// object read.
var hasherPool = sync.Pool{New: func() any { return digest.NewHasher() }}

// GetHasher returns a reset BLAKE3 hasher; give it back with PutHasher.
func GetHasher() *digest.Hasher {
	h := hasherPool.Get().(*digest.Hasher)
	h.Reset()
	return h
}

// PutHasher returns a hasher from GetHasher for reuse.
func PutHasher(h *digest.Hasher) { hasherPool.Put(h) }

// worthCompressing decides raw versus zstd: compression must save at least
// 3% of the bytes, otherwise decoding cost buys nothing.
func worthCompressing(raw, compressed int) bool {
	return compressed < raw-raw*3/100
}

// sourceReader remembers the last error of the stored bytes' reader, so a
// decode failure can be told apart from an I/O failure.
type sourceReader struct {
	r   io.Reader
	n   int64 // stored bytes read
	err error
}

func (s *sourceReader) Read(p []byte) (int, error) {
	n, err := s.r.Read(p)
	s.n += int64(n)
	if err != nil && err != io.EOF {
		s.err = err
	}
	return n, err
}

// verifyingReader hashes and counts the decoded stream and, at its end,
// turns a mismatch into a CorruptObjectError instead of io.EOF, so a caller
// that copies to completion never accepts wrong bytes.
type verifyingReader struct {
	decoded io.Reader
	source  *sourceReader
	id      digest.Digest
	want    int64
	got     int64
	hasher  *digest.Hasher
	closer  func() error
	err     error
	// expansion, when set, bounds the decoded bytes to expansion times
	// the stored bytes read so far, plus slack (LimitExpansion).
	expansion, slack int64
}

func (v *verifyingReader) Read(p []byte) (int, error) {
	if v.err != nil {
		return 0, v.err
	}
	if v.hasher == nil {
		return 0, fmt.Errorf("read object %s: %w", v.id, os.ErrClosed)
	}
	n, err := v.decoded.Read(p)
	v.got += int64(n)
	v.hasher.Write(p[:n])
	if v.got > v.want {
		v.err = &CorruptObjectError{v.id, fmt.Sprintf("decodes to more than the %d bytes its header declares", v.want)}
		return n, v.err
	}
	if v.expansion > 0 && v.got > v.expansion*v.source.n+v.slack {
		v.err = &CorruptObjectError{v.id, fmt.Sprintf("decodes to more than %d times its %d stored bytes", v.expansion, v.source.n)}
		return n, v.err
	}
	switch {
	case err == io.EOF:
		if v.got != v.want {
			v.err = &CorruptObjectError{v.id, fmt.Sprintf("decodes to %d bytes, header declares %d", v.got, v.want)}
		} else if got := digest.Digest(v.hasher.Sum(nil)); got != v.id {
			v.err = &CorruptObjectError{v.id, "content hashes to " + got.String()}
		} else {
			v.err = io.EOF
		}
		return n, v.err
	case err != nil:
		if v.source.err != nil && isSealBroken(v.source.err) {
			v.err = &CorruptObjectError{v.id, "sealed bytes do not authenticate: " + v.source.err.Error()}
		} else if v.source.err != nil {
			v.err = fmt.Errorf("read object %s: %w", v.id, v.source.err)
		} else {
			v.err = &CorruptObjectError{v.id, "payload does not decode: " + err.Error()}
		}
		return n, v.err
	}
	return n, nil
}

func (v *verifyingReader) Close() error { return v.closer() }

// VerifyReader passes on the bytes of r and, where they end, fails with a
// CorruptObjectError (instead of io.EOF) unless there were exactly size of
// them and they hash to hexdigest. For content from sources that are not
// trusted, such as peers.
func VerifyReader(r io.Reader, id digest.Digest, size int64) io.Reader {
	src := &sourceReader{r: r}
	v := &verifyingReader{decoded: io.LimitReader(src, size+1), source: src, id: id, want: size, hasher: GetHasher()}
	return &releasingReader{v: v}
}

// Verifying is a reader that checks, where its content ends, that it was
// exactly the content of one object, and fails instead of ending when it
// was not. Readers of the content can then skip hashing it again.
type Verifying interface {
	io.Reader
	// Verifies returns the id and size the reader checks.
	Verifies() (id digest.Digest, size int64)
}

// IsVerifying reports whether r checks that its content is exactly size
// bytes hashing to hexdigest.
func IsVerifying(r io.Reader, id digest.Digest, size int64) bool {
	v, ok := r.(Verifying)
	if !ok {
		return false
	}
	h, n := v.Verifies()
	return h == id && n == size
}

// Verifies implements Verifying.
func (v *verifyingReader) Verifies() (digest.Digest, int64) { return v.id, v.want }

// releasingReader gives the hasher back once the verdict is in.
type releasingReader struct{ v *verifyingReader }

// Verifies implements Verifying.
func (r *releasingReader) Verifies() (digest.Digest, int64) { return r.v.Verifies() }

func (r *releasingReader) Read(p []byte) (int, error) {
	n, err := r.v.Read(p)
	if err != nil && r.v.hasher != nil {
		PutHasher(r.v.hasher)
		r.v.hasher = nil
		r.v.err = err // later reads repeat the verdict
	}
	return n, err
}
