package hashstore

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/zeebo/blake3"

	"github.com/deltabackup/deltabackup/hashstore/crypt"
	"github.com/deltabackup/deltabackup/snapshot/digest"
)

// sealer seals what an encrypted repository stores and names its loose
// objects; a nil *sealer is an unencrypted repository, where every
// method passes bytes and ids through.
//
// Contents keep their plain BLAKE3 ids everywhere inside sealed bytes
// (trees, pack entries, index files) and on the wire between peers. The
// only ids an outsider sees are the names of loose objects, and those are
// keyed: BLAKE3 keyed with the repository's id key, of the plain id. So
// equal contents share one name in the repository, nobody without the key
// can compute the name of a known content, and a copy to a repository
// with another key renames and re-seals contents without rewriting a
// single tree.
type sealer struct {
	key   crypt.Key
	names sync.Pool // of *blake3.Hasher keyed with the id key
}

func newSealer(m *crypt.MasterKey) *sealer {
	idKey := m.IDKey()
	s := &sealer{key: m.SealKey()}
	s.names.New = func() any {
		h, err := blake3.NewKeyed(idKey[:])
		if err != nil {
			panic(err) // only for a key of the wrong length
		}
		return h
	}
	return s
}

// What each sealed byte string is for: bound into the seal as associated
// data, so that bytes sealed for one place do not open in another (an
// object's under another id, a record under another name).
const (
	adObject  = "deltabackup object\x00"
	adIndex   = "deltabackup index file"
	adTrailer = "deltabackup pack trailer"
	adRecord  = "deltabackup backup record\x00"
)

func objectAD(id digest.Digest) []byte { return append([]byte(adObject), id[:]...) }

func recordAD(name string) []byte { return []byte(adRecord + name) }

// looseName is the name a loose object with content id is stored under.
func (s *sealer) looseName(id digest.Digest) digest.Digest {
	if s == nil {
		return id
	}
	h := s.names.Get().(*blake3.Hasher)
	h.Reset()
	_, _ = h.Write(id[:])
	var name digest.Digest
	h.Sum(name[:0])
	s.names.Put(h)
	return name
}

// seal returns plain sealed for ad.
func (s *sealer) seal(plain, ad []byte) []byte {
	if s == nil {
		return plain
	}
	return crypt.Seal(&s.key, plain, ad)
}

// open returns the plaintext of stored, sealed for ad, opening it in
// place: stored is the caller's own copy and is overwritten.
func (s *sealer) open(stored, ad []byte) ([]byte, error) {
	if s == nil {
		return stored, nil
	}
	return crypt.OpenInPlace(&s.key, stored, ad)
}

// writer seals what is written to it onto w; Close ends the seal without
// closing w.
func (s *sealer) writer(w io.Writer, ad []byte) io.WriteCloser {
	if s == nil {
		return nopWriteCloser{w}
	}
	return crypt.NewWriter(w, &s.key, ad)
}

// sealedSize is the stored size of n bytes.
func (s *sealer) sealedSize(n int64) int64 {
	if s == nil {
		return n
	}
	return crypt.SealedSize(n)
}

// wholeOpenLimit: sealed bytes up to this size, of known length, are
// read and opened in one piece rather than through a streaming reader
// (which holds a 64 KiB segment buffer): pack entries of small files.
const wholeOpenLimit = 1 << 20

// reader returns the plaintext stream of the sealed bytes in r, which are
// length bytes long (-1: unknown).
func (s *sealer) reader(r io.Reader, length int64, ad []byte) io.Reader {
	if s == nil {
		return r
	}
	if length >= 0 && length <= wholeOpenLimit {
		buf := openBuffers.Get().(*[]byte)
		if int64(cap(*buf)) < length {
			*buf = make([]byte, length)
		}
		stored := (*buf)[:length]
		if n, err := io.ReadFull(r, stored); err != nil {
			openBuffers.Put(buf)
			if err == io.ErrUnexpectedEOF || err == io.EOF {
				// Short: what arrived will not authenticate.
				err = fmt.Errorf("%w: only %d of %d sealed bytes", crypt.ErrAuth, n, length)
			}
			return errReader{err}
		}
		plain, err := crypt.OpenInPlace(&s.key, stored, ad)
		if err != nil {
			openBuffers.Put(buf)
			return errReader{err}
		}
		return &pooledReader{r: bytes.NewReader(plain), buf: buf}
	}
	return crypt.NewReader(r, &s.key, ad)
}

type nopWriteCloser struct{ io.Writer }

func (nopWriteCloser) Close() error { return nil }

// isSealBroken reports whether err says sealed bytes did not open, which
// is damage (or tampering) of the stored bytes, not a failure to read them.
func isSealBroken(err error) bool { return errors.Is(err, crypt.ErrAuth) }

// sealError names sealed bytes of what that did not open.
func sealError(what string, err error) error {
	return fmt.Errorf("%s is damaged or was altered (it does not authenticate): %w", what, err)
}

// openBuffers hold sealed blobs while they are opened and read: a restore
// of many chunks would otherwise allocate each one's size twice.
var openBuffers = sync.Pool{New: func() any { return new([]byte) }}

// pooledReader reads a blob opened in a buffer of openBuffers and gives
// the buffer back when the blob has been read to its end.
type pooledReader struct {
	r   *bytes.Reader
	buf *[]byte
}

func (r *pooledReader) Read(p []byte) (int, error) {
	if r.buf == nil {
		return 0, io.EOF
	}
	n, err := r.r.Read(p)
	if err == io.EOF {
		openBuffers.Put(r.buf)
		r.buf, r.r = nil, nil
	}
	return n, err
}
