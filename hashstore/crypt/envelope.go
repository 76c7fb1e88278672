package crypt

import (
	"bytes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sync"

	"golang.org/x/crypto/chacha20poly1305"
)

// Envelope layout:
//
//	version (1 byte, 1) | nonce prefix (16 bytes) | segments
//
// Every segment but the last holds SegmentSize bytes of plaintext; the
// last holds 0 to SegmentSize. A segment is its plaintext sealed with
// XChaCha20-Poly1305 (16-byte tag), nonce = prefix || uint64 big endian
// (segment number << 1 | 1 if last), and the caller's associated data.
const (
	envelopeVersion = 1
	prefixSize      = 16
	headerSize      = 1 + prefixSize
	// SegmentSize is the plaintext of a segment.
	SegmentSize = 64 << 10
	tagSize     = chacha20poly1305.Overhead
	// maxSegments bounds a stream so a segment number never wraps.
	maxSegments = 1 << 62
)

// ErrAuth is wrapped by every error about sealed bytes that do not open:
// changed, truncated, reordered, sealed under another key or for another
// purpose (associated data).
var ErrAuth = errors.New("sealed data does not authenticate")

// Key is a 256-bit key for the envelope.
type Key [32]byte

func (k *Key) aead() cipher.AEAD {
	a, err := chacha20poly1305.NewX(k[:])
	if err != nil {
		panic(err) // only for a key of the wrong length
	}
	return a
}

// SealedSize is the size of n bytes of plaintext once sealed.
func SealedSize(n int64) int64 {
	segments := max(1, (n+SegmentSize-1)/SegmentSize) // empty: one empty segment
	return headerSize + n + segments*tagSize
}

func nonce(prefix []byte, seg uint64, last bool) [chacha20poly1305.NonceSizeX]byte {
	var n [chacha20poly1305.NonceSizeX]byte
	copy(n[:], prefix)
	v := seg << 1
	if last {
		v |= 1
	}
	binary.BigEndian.PutUint64(n[prefixSize:], v)
	return n
}

// Seal seals plaintext under k for the purpose named by ad.
func Seal(k *Key, plaintext, ad []byte) []byte {
	out := make([]byte, 0, SealedSize(int64(len(plaintext))))
	out = append(out, envelopeVersion)
	out = out[:headerSize]
	if _, err := rand.Read(out[1:headerSize]); err != nil {
		panic(err) // crypto/rand does not fail on Linux
	}
	a := k.aead()
	prefix := out[1:headerSize]
	for seg := uint64(0); ; seg++ {
		n := min(len(plaintext), SegmentSize)
		last := n == len(plaintext)
		nn := nonce(prefix, seg, last)
		out = a.Seal(out, nn[:], plaintext[:n], ad)
		plaintext = plaintext[n:]
		if last {
			return out
		}
	}
}

// Open opens what Seal sealed under k with the same ad, leaving sealed
// as it is (OpenInPlace on a copy).
func Open(k *Key, sealed, ad []byte) ([]byte, error) {
	return OpenInPlace(k, bytes.Clone(sealed), ad)
}

// OpenInPlace opens what Seal sealed under k with the same ad, decrypting
// into sealed itself: each segment in place, then moved down over the
// tags before it. The plaintext it returns is a slice of sealed, which
// is overwritten either way; no segment buffer and no second copy, so
// opening many small blobs costs little more than their decryption.
func OpenInPlace(k *Key, sealed, ad []byte) ([]byte, error) {
	if len(sealed) < headerSize {
		return nil, authErr("shorter than its header")
	}
	if sealed[0] != envelopeVersion {
		return nil, authErr("unknown envelope version %d", sealed[0])
	}
	var prefix [headerSize - 1]byte
	copy(prefix[:], sealed[1:headerSize]) // the plaintext will cover it
	a := k.aead()
	read, written := headerSize, 0
	for seg := uint64(0); ; seg++ {
		rest := sealed[read:]
		n := min(len(rest), SegmentSize+tagSize)
		last := len(rest) <= SegmentSize+tagSize
		if n < tagSize {
			return nil, authErr("segment %d is truncated", seg)
		}
		nn := nonce(prefix[:], seg, last)
		plain, err := a.Open(rest[:0], nn[:], rest[:n], ad)
		if err != nil {
			if last {
				return nil, authErr("segment %d (the last) does not open: changed, truncated or not sealed with this key", seg)
			}
			return nil, authErr("segment %d does not open: changed, reordered or not sealed with this key", seg)
		}
		written += copy(sealed[written:], plain)
		read += n
		if last {
			return sealed[:written], nil
		}
	}
}

// NewWriter returns a writer that seals what is written to it onto w;
// Close writes the last segment (and does not close w).
func NewWriter(w io.Writer, k *Key, ad []byte) io.WriteCloser {
	sw := &sealWriter{w: w, a: k.aead(), ad: append([]byte(nil), ad...), buf: make([]byte, 0, SegmentSize)}
	sw.header[0] = envelopeVersion
	if _, err := rand.Read(sw.header[1:]); err != nil {
		panic(err)
	}
	return sw
}

type sealWriter struct {
	w       io.Writer
	a       cipher.AEAD
	ad      []byte
	header  [headerSize]byte
	started bool
	seg     uint64
	buf     []byte
	out     []byte
	err     error
	closed  bool
}

func (s *sealWriter) Write(p []byte) (int, error) {
	if s.err != nil {
		return 0, s.err
	}
	if s.closed {
		return 0, errors.New("crypt: write after close")
	}
	n := 0
	for len(p) > 0 {
		if len(s.buf) == SegmentSize {
			// A full segment is written only once more follows, so that
			// the last one can carry the flag.
			if err := s.flush(false); err != nil {
				return n, err
			}
		}
		k := copy(s.buf[len(s.buf):SegmentSize], p)
		s.buf = s.buf[:len(s.buf)+k]
		p = p[k:]
		n += k
	}
	return n, nil
}

func (s *sealWriter) flush(last bool) error {
	if !s.started {
		if _, err := s.w.Write(s.header[:]); err != nil {
			s.err = err
			return err
		}
		s.started = true
	}
	nn := nonce(s.header[1:], s.seg, last)
	s.out = s.a.Seal(s.out[:0], nn[:], s.buf, s.ad)
	s.seg++
	s.buf = s.buf[:0]
	if _, err := s.w.Write(s.out); err != nil {
		s.err = err
		return err
	}
	return nil
}

// Close seals the last segment.
func (s *sealWriter) Close() error {
	if s.closed {
		return s.err
	}
	s.closed = true
	if s.err != nil {
		return s.err
	}
	return s.flush(true)
}

// NewReader returns a reader of the plaintext sealed in r. It returns
// io.EOF only after the last segment authenticated; anything wrong is an
// error wrapping ErrAuth.
func NewReader(r io.Reader, k *Key, ad []byte) io.Reader {
	return &openReader{r: r, a: k.aead(), ad: append([]byte(nil), ad...)}
}

// segmentPool holds the segment buffers of readers: a reader takes one
// on its first segment and gives it back once it returned its verdict
// (EOF or an error), so a restore of many objects does not allocate
// 64 KiB for each.
var segmentPool = sync.Pool{New: func() any { b := make([]byte, SegmentSize+tagSize+1); return &b }}

func (o *openReader) release() {
	if o.buf != nil {
		o.in, o.plain = nil, nil
		segmentPool.Put(o.buf)
		o.buf = nil
	}
}

type openReader struct {
	r      io.Reader
	a      cipher.AEAD
	ad     []byte
	prefix []byte
	seg    uint64
	in     []byte
	buf    *[]byte // in's pooled backing, nil once released
	// ahead is the byte read beyond a full segment, to know whether that
	// segment was the last.
	ahead    byte
	hasAhead bool
	plain    []byte
	done     bool
	err      error
}

func (o *openReader) Read(p []byte) (int, error) {
	for len(o.plain) == 0 {
		if o.err != nil {
			o.release()
			return 0, o.err
		}
		if o.done {
			o.release()
			return 0, io.EOF
		}
		o.err = o.next()
	}
	n := copy(p, o.plain)
	o.plain = o.plain[n:]
	return n, nil
}

func authErr(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrAuth}, args...)...)
}

// next opens one segment. It reads one byte beyond a full segment to know
// whether it is the last.
func (o *openReader) next() error {
	if o.prefix == nil {
		var h [headerSize]byte
		if _, err := io.ReadFull(o.r, h[:]); err != nil {
			if err == io.EOF || err == io.ErrUnexpectedEOF {
				return authErr("shorter than its header")
			}
			return err
		}
		if h[0] != envelopeVersion {
			return authErr("unknown envelope version %d", h[0])
		}
		o.prefix = append([]byte(nil), h[1:]...)
	}
	if o.buf == nil {
		o.buf = segmentPool.Get().(*[]byte)
		o.in = *o.buf
	}
	o.in = o.in[:SegmentSize+tagSize+1]
	have := 0
	if o.hasAhead {
		o.in[0], have, o.hasAhead = o.ahead, 1, false
	}
	n, err := io.ReadFull(o.r, o.in[have:])
	n += have
	switch {
	case err == io.EOF || err == io.ErrUnexpectedEOF:
	case err != nil:
		return err
	}
	last := n <= SegmentSize+tagSize
	seg := o.in[:min(n, SegmentSize+tagSize)]
	if len(seg) < tagSize {
		return authErr("segment %d is truncated", o.seg)
	}
	if o.seg >= maxSegments {
		return authErr("too many segments")
	}
	nn := nonce(o.prefix, o.seg, last)
	plain, oerr := o.a.Open(seg[:0], nn[:], seg, o.ad)
	if oerr != nil {
		if last {
			return authErr("segment %d (the last) does not open: changed, truncated or not sealed with this key", o.seg)
		}
		return authErr("segment %d does not open: changed, reordered or not sealed with this key", o.seg)
	}
	o.plain = plain
	o.seg++
	if last {
		o.done = true
	} else {
		o.ahead, o.hasAhead = o.in[SegmentSize+tagSize], true
	}
	return nil
}
