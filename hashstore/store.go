package hashstore

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"sync"
	"time"

	"github.com/klauspost/compress/s2"
	"github.com/klauspost/compress/zstd"
	"github.com/zeebo/blake3"

	"github.com/deltabackup/deltabackup/snapshot"
)

// Repository format errors, for callers that branch on them.
var (
	// ErrNotRepository: the backend holds no repository config.
	ErrNotRepository = errors.New("not a deltabackup repository")
	// ErrRepositoryExists: Init found a repository, or other data, there.
	ErrRepositoryExists = errors.New("repository already exists")
)

// RepositoryVersion is the storage layout version this code writes and
// reads; see DESIGN.md "Storage layout".
const RepositoryVersion = 1

// configKey is where Init writes the repository config.
const configKey = "config"

// Config identifies a repository.
type Config struct {
	ID            string    `json:"id"`
	Version       int       `json:"version"`
	HashAlgorithm string    `json:"hash_algorithm"`
	Created       time.Time `json:"created"`
}

// Store holds objects under their hexdigest on a Backend, encoded and
// verified as DESIGN.md describes. It is safe for concurrent use.
type Store struct {
	backend Backend
	config  Config
	logger  *slog.Logger
	// lookupParallel bounds concurrent Stat calls of Lookup.
	lookupParallel int
	// index locates packed objects; loaded on first use.
	index packIndex
	// compression is used for every object written.
	compression Compression
	// cacheDir holds the local cache of a remote repository; known are
	// the loose objects seen stored.
	cacheDir string
	known    knownObjects
	// refreshMarker is the gc marker at the last Refresh.
	refreshMu     sync.Mutex
	refreshMarker string
	refreshed     bool
	objectsRead   time.Time // last ReloadObjects
}

// SetCompression chooses how objects written from now on are compressed.
func (s *Store) SetCompression(c Compression) { s.compression = c }

// describe names a backend in messages without revealing anything secret:
// backends that know how to present themselves implement fmt.Stringer.
func describe(b Backend) string {
	if s, ok := b.(fmt.Stringer); ok {
		return s.String()
	}
	return fmt.Sprintf("%T", b)
}

// Init writes a new repository config to b. It refuses a backend that
// already holds a repository or any other data.
func Init(ctx context.Context, b Backend, logger *slog.Logger) (*Store, error) {
	if _, err := b.Stat(ctx, configKey); err == nil {
		return nil, fmt.Errorf("%s: %w", describe(b), ErrRepositoryExists)
	} else if !errors.Is(err, ErrNotFound) {
		return nil, fmt.Errorf("init %s: %w", describe(b), err)
	}
	errStop := errors.New("stop")
	var found string
	err := b.List(ctx, "", func(info Info) error { found = info.Key; return errStop })
	if err != nil && !errors.Is(err, errStop) {
		return nil, fmt.Errorf("init %s: %w", describe(b), err)
	}
	if found != "" {
		return nil, fmt.Errorf("%s is not empty (it holds %q) and is not a repository; choose an empty location: %w",
			describe(b), found, ErrRepositoryExists)
	}
	id := make([]byte, 16)
	if _, err := rand.Read(id); err != nil {
		return nil, err
	}
	cfg := Config{ID: hex.EncodeToString(id), Version: RepositoryVersion, HashAlgorithm: "blake3", Created: time.Now().UTC()}
	data, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		return nil, err
	}
	if err := b.Put(ctx, configKey, bytes.NewReader(data), int64(len(data))); err != nil {
		return nil, fmt.Errorf("init %s: write config: %w", describe(b), err)
	}
	return newStore(b, cfg, logger), nil
}

// Open reads the config of the repository on b.
func Open(ctx context.Context, b Backend, logger *slog.Logger) (*Store, error) {
	rc, err := b.Get(ctx, configKey)
	if err != nil {
		if errors.Is(err, ErrNotFound) {
			return nil, fmt.Errorf("%s: %w (no config found)", describe(b), ErrNotRepository)
		}
		return nil, fmt.Errorf("open repository %s: %w", describe(b), err)
	}
	defer rc.Close()
	data, err := io.ReadAll(io.LimitReader(rc, 64<<10))
	if err != nil {
		return nil, fmt.Errorf("open repository %s: read config: %w", describe(b), err)
	}
	var cfg Config
	if err := json.Unmarshal(data, &cfg); err != nil {
		return nil, fmt.Errorf("%s: config is not valid JSON (%v): %w", describe(b), err, ErrNotRepository)
	}
	if cfg.ID == "" || cfg.Version == 0 {
		return nil, fmt.Errorf("%s: config has no id or version: %w", describe(b), ErrNotRepository)
	}
	if cfg.Version > RepositoryVersion {
		return nil, fmt.Errorf("%s: repository format version %d is newer than this deltabackup supports (%d); upgrade deltabackup",
			describe(b), cfg.Version, RepositoryVersion)
	}
	if cfg.HashAlgorithm != "blake3" {
		return nil, fmt.Errorf("%s: unsupported hash algorithm %q", describe(b), cfg.HashAlgorithm)
	}
	return newStore(b, cfg, logger), nil
}

func newStore(b Backend, cfg Config, logger *slog.Logger) *Store {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &Store{backend: b, config: cfg, logger: logger, lookupParallel: 32}
}

// Config returns the repository config.
func (s *Store) Config() Config { return s.config }

// Backend returns the backend the store writes to.
func (s *Store) Backend() Backend { return s.backend }

// String names the repository for messages.
func (s *Store) String() string { return describe(s.backend) }

// ObjectKey returns the backend key of an object.
func ObjectKey(hexdigest string) string {
	return "objects/" + hexdigest[:2] + "/" + hexdigest
}

// PutResult describes a stored object.
type PutResult struct {
	StoredSize int64
	Codec      Codec
}

// bufferedPutLimit is the largest object encoded in memory, where the
// raw-or-zstd choice is exact; larger objects stream and choose by a sample.
const (
	bufferedPutLimit  = 1 << 20
	compressionSample = 1 << 20
)

// Put stores the content read from r, exactly size bytes, under hexdigest.
// The content is hashed while it is encoded; if it does not hash to
// hexdigest or its length is not size, nothing is stored and the error
// wraps ErrContentMismatch.
func (s *Store) Put(ctx context.Context, hexdigest string, r io.Reader, size int64) (PutResult, error) {
	if !snapshot.ValidHexdigest(hexdigest) {
		return PutResult{}, fmt.Errorf("put: invalid hexdigest %q", hexdigest)
	}
	if size < 0 || size > maxDecodedSize {
		return PutResult{}, fmt.Errorf("put %s: invalid size %d", hexdigest, size)
	}
	if size <= bufferedPutLimit {
		return s.putBuffered(ctx, hexdigest, r, size)
	}
	return s.putStreaming(ctx, hexdigest, r, size)
}

func mismatch(hexdigest, what string) error {
	return fmt.Errorf("store %s: %s: %w", hexdigest, what, ErrContentMismatch)
}

var bufferPool = sync.Pool{New: func() any { return new(bytes.Buffer) }}

func (s *Store) putBuffered(ctx context.Context, hexdigest string, r io.Reader, size int64) (PutResult, error) {
	buf := bufferPool.Get().(*bytes.Buffer)
	defer bufferPool.Put(buf)
	buf.Reset()
	n, err := buf.ReadFrom(io.LimitReader(r, size+1))
	if err != nil {
		return PutResult{}, fmt.Errorf("store %s: read content: %w", hexdigest, err)
	}
	if n != size {
		return PutResult{}, mismatch(hexdigest, fmt.Sprintf("read %d bytes or more, expected %d", n, size))
	}
	return s.PutBytes(ctx, hexdigest, buf.Bytes())
}

// PutBytes stores content, which must hash to hexdigest, as a loose
// object. Content that does not match is refused with ErrContentMismatch.
func (s *Store) PutBytes(ctx context.Context, hexdigest string, content []byte) (PutResult, error) {
	if !snapshot.ValidHexdigest(hexdigest) {
		return PutResult{}, fmt.Errorf("put: invalid hexdigest %q", hexdigest)
	}
	if got := Hexdigest(content); got != hexdigest {
		return PutResult{}, mismatch(hexdigest, "content hashes to "+got)
	}
	out := bufferPool.Get().(*bytes.Buffer)
	defer bufferPool.Put(out)
	out.Reset()
	codec := encodeObject(out, content, s.compression)
	stored := int64(out.Len())
	if err := s.backend.Put(ctx, ObjectKey(hexdigest), bytes.NewReader(out.Bytes()), stored); err != nil {
		return PutResult{}, err
	}
	s.known.remember(hexdigest, stored)
	return PutResult{StoredSize: stored, Codec: codec}, nil
}

// PutGenerated stores the content that write produces, under its
// hexdigest, which it returns. The content is hashed and compressed as it
// is written, so only its compressed form is ever held in memory: for
// manifests of millions of files.
func (s *Store) PutGenerated(ctx context.Context, write func(w io.Writer) error) (string, PutResult, error) {
	var out bytes.Buffer
	out.Write(make([]byte, objectHeaderSize)) // the header, once the size is known
	z := s.compression.zstd()
	enc := z.parallel.Get().(*zstd.Encoder)
	defer z.parallel.Put(enc)
	enc.Reset(&out)
	hasher := blake3.New()
	content := &countingWriter{w: io.MultiWriter(enc, hasher)}
	if err := write(content); err != nil {
		enc.Reset(nil)
		return "", PutResult{}, err
	}
	if err := enc.Close(); err != nil {
		return "", PutResult{}, err
	}
	enc.Reset(nil)
	copy(out.Bytes(), ObjectHeader{Codec: CodecZstd, DecodedSize: content.n}.marshal())
	hexdigest := hex.EncodeToString(hasher.Sum(nil))
	if err := s.backend.Put(ctx, ObjectKey(hexdigest), bytes.NewReader(out.Bytes()), int64(out.Len())); err != nil {
		return "", PutResult{}, err
	}
	s.known.remember(hexdigest, int64(out.Len()))
	return hexdigest, PutResult{StoredSize: int64(out.Len()), Codec: CodecZstd}, nil
}

// entropySample is how many leading bytes looksIncompressible examines.
const entropySample = 2048

// xlog2x[c] is c*log2(c), so the entropy of a sample of n bytes is
// log2(n) - sum(xlog2x[count])/n without a logarithm per byte value.
var xlog2x = func() (t [entropySample + 1]float64) {
	for c := 1; c <= entropySample; c++ {
		t[c] = float64(c) * math.Log2(float64(c))
	}
	return
}()

// looksIncompressible estimates the byte entropy of a sample of content:
// random, compressed or encrypted data (close to 8 bits per byte) would
// only cost a failed compression attempt. Text and most binaries are far
// below.
func looksIncompressible(content []byte) bool {
	if len(content) < 256 {
		return false
	}
	var counts [256]uint16
	n := min(len(content), entropySample)
	for _, b := range content[:n] {
		counts[b]++
	}
	sum := 0.0
	for _, c := range counts {
		sum += xlog2x[c]
	}
	entropy := math.Log2(float64(n)) - sum/float64(n)
	// A uniform sample of n bytes shows less than 8 bits of entropy; the
	// bound leaves room for that and still rejects anything zstd can use.
	return entropy > 7.0+0.8*float64(n)/entropySample
}

// smallObject is the largest content compressed with smallEncoder.
const smallObject = 64 << 10

// encodeObject appends header and payload of content to out, compressed
// at level c when that saves enough, raw otherwise.
func encodeObject(out *bytes.Buffer, content []byte, c Compression) Codec {
	start := out.Len()
	if c == CompressionOff || looksIncompressible(content) {
		out.Write(ObjectHeader{Codec: CodecRaw, DecodedSize: int64(len(content))}.marshal())
		out.Write(content)
		return CodecRaw
	}
	codec := CodecZstd
	if len(content) <= smallObject && c == CompressionFast {
		codec = CodecS2
	}
	out.Write(ObjectHeader{Codec: codec, DecodedSize: int64(len(content))}.marshal())
	var compressed []byte
	if codec == CodecS2 {
		out.Grow(s2.MaxEncodedLen(len(content)))
		compressed = s2.Encode(out.AvailableBuffer()[:s2.MaxEncodedLen(len(content))], content)
	} else {
		compressed = c.zstd().all.EncodeAll(content, out.AvailableBuffer())
	}
	if worthCompressing(len(content), len(compressed)) {
		out.Write(compressed)
		return codec
	}
	out.Truncate(start)
	out.Write(ObjectHeader{Codec: CodecRaw, DecodedSize: int64(len(content))}.marshal())
	out.Write(content)
	return CodecRaw
}

type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// samplePool holds the buffers putStreaming reads its first bytes into.
var samplePool = sync.Pool{New: func() any { b := make([]byte, compressionSample); return &b }}

func (s *Store) putStreaming(ctx context.Context, hexdigest string, r io.Reader, size int64) (PutResult, error) {
	sampleBuf := samplePool.Get().(*[]byte)
	defer samplePool.Put(sampleBuf)
	sample := *sampleBuf
	if _, err := io.ReadFull(r, sample); err != nil {
		if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
			return PutResult{}, mismatch(hexdigest, fmt.Sprintf("content is shorter than %d bytes", size))
		}
		return PutResult{}, fmt.Errorf("store %s: read content: %w", hexdigest, err)
	}
	// The entropy of the first bytes decides: a trial compression of the
	// sample would cost a megabyte of compression per large file.
	codec := CodecRaw
	if s.compression != CompressionOff && !looksIncompressible(sample) {
		codec = CodecZstd
	}
	storedSize := int64(-1)
	if codec == CodecRaw {
		storedSize = objectHeaderSize + size
	}
	pr, pw := io.Pipe()
	counter := &countingWriter{w: pw}
	encodeDone := make(chan struct{})
	go func() {
		defer close(encodeDone)
		pw.CloseWithError(encodeVerified(counter, io.MultiReader(bytes.NewReader(sample), r), hexdigest, size, codec, s.compression))
	}()
	err := s.backend.Put(ctx, ObjectKey(hexdigest), pr, storedSize)
	pr.CloseWithError(errors.New("upload ended")) // unblocks the encoder if the backend stopped reading
	<-encodeDone
	if err != nil {
		return PutResult{}, err
	}
	s.known.remember(hexdigest, counter.n)
	return PutResult{StoredSize: counter.n, Codec: codec}, nil
}

// encodeVerified writes header and payload of content to w, hashing the
// content as it goes. It returns nil only if content is exactly size bytes
// that hash to hexdigest, and returns before the payload is complete
// otherwise, so the backend never commits wrong bytes.
func encodeVerified(w io.Writer, content io.Reader, hexdigest string, size int64, codec Codec, c Compression) error {
	if _, err := w.Write(ObjectHeader{Codec: codec, DecodedSize: size}.marshal()); err != nil {
		return err
	}
	hasher := GetHasher()
	defer PutHasher(hasher)
	var payload io.Writer = w
	var enc *zstd.Encoder
	if codec == CodecZstd {
		z := c.zstd()
		enc = z.stream.Get().(*zstd.Encoder)
		enc.Reset(w)
		defer func() { enc.Reset(nil); z.stream.Put(enc) }()
		payload = enc
	}
	n, err := io.Copy(io.MultiWriter(payload, hasher), io.LimitReader(content, size+1))
	if err != nil {
		return fmt.Errorf("store %s: %w", hexdigest, err)
	}
	if n != size {
		return mismatch(hexdigest, fmt.Sprintf("read %d bytes or more, expected %d", n, size))
	}
	if got := hex.EncodeToString(hasher.Sum(nil)); got != hexdigest {
		return mismatch(hexdigest, "content hashes to "+got)
	}
	if enc != nil {
		return enc.Close()
	}
	return nil
}

// ObjectReader streams an object's decoded content and verifies it: the
// read that reaches the end returns a CorruptObjectError instead of io.EOF
// when the content is not what the key promises.
type ObjectReader struct {
	*verifyingReader
	header ObjectHeader
}

// Size is the decoded size the object's header declares.
func (o *ObjectReader) Size() int64 { return o.header.DecodedSize }

// LimitExpansion makes reads fail with a CorruptObjectError once the
// content decoded exceeds ratio times the stored bytes read plus slack:
// for contents whose honest compression ratio is known to be bounded
// (manifests), so that a small object claiming gigabytes of decoded
// content is refused after decoding a little of it, not all of it.
func (o *ObjectReader) LimitExpansion(ratio, slack int64) {
	o.expansion, o.slack = ratio, slack
}

// Get opens the object stored under hexdigest, loose or packed. A missing
// object is ErrNotFound; damaged bytes are a CorruptObjectError
// (ErrCorrupt), from Get or from a Read.
func (s *Store) Get(ctx context.Context, hexdigest string) (*ObjectReader, error) {
	if !snapshot.ValidHexdigest(hexdigest) {
		return nil, fmt.Errorf("get: invalid hexdigest %q", hexdigest)
	}
	pack, loc, packed, err := s.lookupPacked(ctx, hexdigest)
	if err != nil {
		return nil, err
	}
	var rc io.ReadCloser
	if packed {
		rc, err = s.backend.GetRange(ctx, pack, int64(loc.offset), int64(loc.length))
	} else {
		rc, err = s.backend.Get(ctx, ObjectKey(hexdigest))
	}
	if err != nil {
		return nil, fmt.Errorf("object %s: %w", hexdigest, err)
	}
	o, err := decodeObject(rc, hexdigest)
	if err != nil {
		rc.Close()
		return nil, err
	}
	return o, nil
}

// decodeObject reads the header of one encoded object from rc and returns
// a reader of its verified content; closing it closes rc.
func decodeObject(rc io.ReadCloser, hexdigest string) (*ObjectReader, error) {
	raw := make([]byte, objectHeaderSize)
	if _, err := io.ReadFull(rc, raw); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return nil, &CorruptObjectError{hexdigest, "shorter than its header"}
		}
		return nil, fmt.Errorf("object %s: %w", hexdigest, err)
	}
	header, err := ParseObjectHeader(raw)
	if err != nil {
		return nil, &CorruptObjectError{hexdigest, err.Error()}
	}
	source := &sourceReader{r: rc}
	v := &verifyingReader{source: source, hexdigest: hexdigest, want: header.DecodedSize, hasher: GetHasher()}
	v.closer = func() error {
		if v.hasher != nil {
			PutHasher(v.hasher)
			v.hasher = nil
		}
		return rc.Close()
	}
	switch header.Codec {
	case CodecRaw:
		v.decoded = io.LimitReader(source, header.DecodedSize+1)
	case CodecS2:
		// Small by construction (ParseObjectHeader bounds it): decode in
		// one piece.
		payload, err := io.ReadAll(io.LimitReader(source, int64(s2.MaxEncodedLen(int(header.DecodedSize)))+1))
		if err != nil {
			return nil, fmt.Errorf("object %s: %w", hexdigest, err)
		}
		if n, err := s2.DecodedLen(payload); err != nil || int64(n) != header.DecodedSize {
			return nil, &CorruptObjectError{hexdigest, fmt.Sprintf("s2 payload does not decode to the %d bytes its header declares", header.DecodedSize)}
		}
		decoded, err := s2.Decode(nil, payload)
		if err != nil {
			return nil, &CorruptObjectError{hexdigest, "payload does not decode: " + err.Error()}
		}
		v.decoded = bytes.NewReader(decoded)
	case CodecZstd:
		dec := decoderPool.Get().(*zstd.Decoder)
		if err := dec.Reset(source); err != nil {
			decoderPool.Put(dec)
			return nil, &CorruptObjectError{hexdigest, "payload does not decode: " + err.Error()}
		}
		v.decoded = dec
		closeSource := v.closer
		v.closer = func() error {
			_ = dec.Reset(nil)
			decoderPool.Put(dec)
			return closeSource()
		}
	}
	return &ObjectReader{verifyingReader: v, header: header}, nil
}

// ReadAll returns the verified content of an object, refusing objects whose
// header declares more than maxSize bytes before allocating anything.
func (s *Store) ReadAll(ctx context.Context, hexdigest string, maxSize int64) ([]byte, error) {
	o, err := s.Get(ctx, hexdigest)
	if err != nil {
		return nil, err
	}
	defer o.Close()
	if o.Size() > maxSize {
		return nil, fmt.Errorf("object %s declares %d bytes, more than the limit of %d", hexdigest, o.Size(), maxSize)
	}
	// The header's size is untrusted until the content hashes right: the
	// buffer grows with the bytes that really arrive, so a tiny object
	// claiming gigabytes costs nothing.
	buf := bytes.NewBuffer(make([]byte, 0, min(o.Size(), 1<<20)))
	n, err := io.Copy(buf, io.LimitReader(o, o.Size()))
	if err != nil {
		return nil, err
	}
	if n < o.Size() {
		return nil, &CorruptObjectError{hexdigest, "decodes to fewer bytes than its header declares"}
	}
	data := buf.Bytes()
	// The verifying reader checks size and hash when it sees the end.
	var probe [1]byte
	if n, err := o.Read(probe[:]); n != 0 || err != io.EOF {
		if err == nil || err == io.EOF {
			err = &CorruptObjectError{hexdigest, "decodes to more bytes than its header declares"}
		}
		return nil, err
	}
	return data, nil
}

// ObjectInfo describes a stored object.
type ObjectInfo struct {
	Found      bool
	StoredSize int64
	Packed     bool
}

// LookupAll reports, for each of hexdigests (packed or loose), whether and
// how it is stored; the result is aligned with hexdigests. Packed objects
// are answered from memory, loose ones with bounded concurrent Stats.
func (s *Store) LookupAll(ctx context.Context, hexdigests []string) ([]ObjectInfo, error) {
	ix, err := s.loadIndex(ctx)
	if err != nil {
		return nil, err
	}
	infos := make([]ObjectInfo, len(hexdigests))
	var loose []int
	ix.mu.RLock()
	for i, h := range hexdigests {
		var id [32]byte
		if !snapshot.ValidHexdigest(h) {
			ix.mu.RUnlock()
			return nil, fmt.Errorf("lookup: invalid hexdigest %q", h)
		}
		hex.Decode(id[:], []byte(h))
		if loc, ok := ix.entries[id]; ok {
			infos[i] = ObjectInfo{Found: true, StoredSize: int64(loc.length), Packed: true}
		} else {
			loose = append(loose, i)
		}
	}
	ix.mu.RUnlock()
	looseHashes := make([]string, len(loose))
	for j, i := range loose {
		looseHashes[j] = hexdigests[i]
	}
	err = s.lookupLoose(ctx, looseHashes, func(j int, size int64) {
		infos[loose[j]] = ObjectInfo{Found: true, StoredSize: size}
	})
	if err != nil {
		return nil, err
	}
	return infos, nil
}

// Lookup returns, for the hexdigests the store holds, what is stored.
// Absent ones are not in the map.
func (s *Store) Lookup(ctx context.Context, hexdigests []string) (map[string]ObjectInfo, error) {
	infos, err := s.LookupAll(ctx, hexdigests)
	if err != nil {
		return nil, err
	}
	found := make(map[string]ObjectInfo)
	for i, info := range infos {
		if info.Found {
			found[hexdigests[i]] = info
		}
	}
	return found, nil
}

// Has reports whether the store holds the object hexdigest, packed or
// loose. Packed objects are answered from memory.
func (s *Store) Has(ctx context.Context, hexdigest string) (bool, error) {
	_, _, packed, err := s.lookupPacked(ctx, hexdigest)
	if err != nil || packed {
		return packed, err
	}
	has := false
	err = s.lookupLoose(ctx, []string{hexdigest}, func(int, int64) { has = true })
	return has, err
}

// HasPacked reports whether the object hexdigest is in a pack, from the
// in-memory index alone.
func (s *Store) HasPacked(ctx context.Context, hexdigest string) (bool, error) {
	_, _, packed, err := s.lookupPacked(ctx, hexdigest)
	return packed, err
}

// Missing returns the hexdigests, in their order and without duplicates,
// that the store does not hold.
func (s *Store) Missing(ctx context.Context, hexdigests []string) ([]string, error) {
	found, err := s.Lookup(ctx, hexdigests)
	if err != nil {
		return nil, err
	}
	var missing []string
	seen := make(map[string]bool)
	for _, h := range hexdigests {
		if _, ok := found[h]; !ok && !seen[h] {
			seen[h] = true
			missing = append(missing, h)
		}
	}
	return missing, nil
}
