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
	"path/filepath"
	"sync"
	"time"

	"github.com/klauspost/compress/s2"
	"github.com/klauspost/compress/zstd"

	"github.com/deltabackup/deltabackup/hashstore/crypt"
	"github.com/deltabackup/deltabackup/snapshot/digest"
)

// Repository format errors, for callers that branch on them.
var (
	// ErrNotRepository: the backend holds no repository config.
	ErrNotRepository = errors.New("not a deltabackup repository")
	// ErrRepositoryExists: Init found a repository, or other data, there.
	ErrRepositoryExists = errors.New("repository already exists")
	// ErrNewerFormat: the repository was written by a newer version.
	ErrNewerFormat = errors.New("repository format is newer than this program")
	// ErrOldFormat: the repository is of a format this program no
	// longer reads (format 1, the flat manifests).
	ErrOldFormat = errors.New("repository format is no longer supported")
	// ErrConfigAltered: the config contradicts the repository (says
	// "not encrypted" beside key files, or says nothing): refused, since
	// writing by it could store plain bytes in an encrypted repository.
	ErrConfigAltered = errors.New("repository config contradicts the repository")
)

// RepositoryVersion is the storage layout version this code writes and
// reads; see README "Storage layout". Format 2 stores a tree object per
// directory; format 1 (one flat manifest per backup) is refused.
const RepositoryVersion = 2

// Config identifies a repository.
type Config struct {
	ID            string    `json:"id"`
	Version       int       `json:"version"`
	HashAlgorithm string    `json:"hash_algorithm"`
	Created       time.Time `json:"created"`
	// Encryption is EncryptionNone or EncryptionXChaCha20; always
	// present, so that a config without it is refused, not read as
	// unencrypted.
	Encryption string `json:"encryption"`
	// ObjectLock (a Go duration) and ObjectLockMode, when set, are the S3
	// Object Lock every command puts on what it writes (see Retainer):
	// a property of the repository, not of each command's flags.
	ObjectLock     string `json:"object_lock,omitempty"`
	ObjectLockMode string `json:"object_lock_mode,omitempty"`
	// Chunking, when present, is how files with much data are cut into
	// chunks; a config without it stores every file whole.
	Chunking *ChunkingConfig `json:"chunking,omitempty"`
}

// Encryption modes of a repository (Config.Encryption).
const (
	EncryptionNone = "none"
	// EncryptionXChaCha20: every stored byte but config and the key
	// files sealed with XChaCha20-Poly1305, loose objects named by keyed
	// BLAKE3 (README "Encryption").
	EncryptionXChaCha20 = "xchacha20-poly1305"
)

// Encrypted reports whether the repository seals what it stores.
func (c Config) Encrypted() bool { return c.Encryption == EncryptionXChaCha20 }

// Options configure a Store; zero values mean defaults.
type Options struct {
	// Logger receives warnings and debug messages (default: none).
	Logger *slog.Logger
	// Compression is used for every object written (default fast).
	Compression Compression
	// CacheDir, when set, is where this program keeps its caches (and the
	// pack index its temporary files when it outgrows memory): the
	// store keeps the repository's index files and the loose objects seen
	// stored under CacheDir/repos/<repository id>, so that a backup to
	// remote storage makes few requests. Leave it empty for a local
	// repository, and for a check that must ask the storage (verify).
	CacheDir string
	// Password returns the repository's password. Open calls it only for
	// an encrypted repository, Init unless Unencrypted is set.
	Password func(ctx context.Context) ([]byte, error)
	// Unencrypted makes Init create a repository that stores plain bytes
	// under plain BLAKE3 ids.
	Unencrypted bool
	// KDF is the argon2id cost of the key files Init and AddKey write
	// (zero: calibrated to about half a second with 64 MiB).
	KDF crypt.KDF
	// KeyCache, when set, keeps the unwrapped master key between runs
	// (see KeyCache); nil derives it from the password every time.
	KeyCache KeyCache
	// ObjectLock and ObjectLockMode make Init create a repository whose
	// every write is retained that long (S3 Object Lock; see Retainer).
	ObjectLock     time.Duration
	ObjectLockMode string
	// Chunking is what Init records as the repository's chunking: nil
	// means DefaultChunking, a zero value stores every file whole.
	Chunking *ChunkingConfig
}

// Store holds objects under their ids on a Backend, encoded and verified
// as README "Formats" describes. Its options are fixed at Open; it is
// safe for concurrent use.
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
	// doomed is what pending deletions of gc name (see pending.go).
	doomed doomed
	// writerLock is the shared lock this Store's writes happen under, if
	// any: a write of a doomed loose object is announced on it.
	writerMu   sync.Mutex
	writerLock *Lock
	// refreshMarker is the gc marker at the last Refresh.
	refreshMu     sync.Mutex
	refreshMarker string
	refreshed     bool
	objectsRead   time.Time // last ReloadObjects
	// seal is nil for an unencrypted repository; master and keyID are the
	// master key and the key file it was unwrapped from.
	seal   *sealer
	master crypt.MasterKey
	keyID  string
	kdf    crypt.KDF
	// passwordFunc is Options.Password.
	passwordFunc func(ctx context.Context) ([]byte, error)
	keyCache     KeyCache
}

// firstKey returns a key under prefix, or "" when there is none, stopping
// the listing at the first.
func firstKey(ctx context.Context, b Backend, prefix string) (string, error) {
	errStop := errors.New("stop")
	var found string
	err := b.List(ctx, prefix, func(info Info) error { found = info.Key; return errStop })
	if err != nil && !errors.Is(err, errStop) {
		return "", err
	}
	return found, nil
}

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
func Init(ctx context.Context, b Backend, opts Options) (*Store, error) {
	if _, err := b.Stat(ctx, configKey); err == nil {
		return nil, fmt.Errorf("%s: %w", describe(b), ErrRepositoryExists)
	} else if !errors.Is(err, ErrNotFound) {
		return nil, fmt.Errorf("init %s: %w", describe(b), err)
	}
	found, err := firstKey(ctx, b, "")
	if err != nil {
		return nil, fmt.Errorf("init %s: %w", describe(b), err)
	}
	if found != "" {
		return nil, fmt.Errorf("%s is not empty (it holds %q) and is not a repository: %w",
			describe(b), found, ErrRepositoryExists)
	}
	id := make([]byte, 16)
	if _, err := rand.Read(id); err != nil {
		return nil, err
	}
	cfg := Config{ID: hex.EncodeToString(id), Version: RepositoryVersion, HashAlgorithm: "blake3", Created: time.Now().UTC(),
		Encryption: EncryptionNone}
	if !opts.Unencrypted {
		cfg.Encryption = EncryptionXChaCha20
	}
	chunking := DefaultChunking()
	if opts.Chunking != nil {
		chunking = *opts.Chunking
	}
	if cfg.Chunking, err = newChunkingConfig(chunking, cfg.Encrypted()); err != nil {
		return nil, err
	}
	if opts.ObjectLock > 0 {
		cfg.ObjectLock, cfg.ObjectLockMode = opts.ObjectLock.String(), opts.ObjectLockMode
		// Before the key file and the config: they are retained too.
		if err := applyObjectLock(b, cfg); err != nil {
			return nil, fmt.Errorf("init %s: %w", describe(b), err)
		}
	}
	s := newStore(b, cfg, opts)
	if cfg.Encrypted() {
		// The key file first: a config names a repository that opens.
		password, err := s.password(ctx)
		if err != nil {
			return nil, fmt.Errorf("init %s: %w", describe(b), err)
		}
		s.unlock(crypt.NewMasterKey(), "")
		info, err := s.writeKeyFile(ctx, password)
		if err != nil {
			return nil, fmt.Errorf("init %s: %w", describe(b), err)
		}
		s.keyID = info.ID
		s.cacheKey(password)
	}
	data, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		return nil, err
	}
	if err := b.Put(ctx, configKey, bytes.NewReader(data), int64(len(data))); err != nil {
		return nil, fmt.Errorf("init %s: write config: %w", describe(b), err)
	}
	return s, nil
}

// Open reads the config of the repository on b.
func Open(ctx context.Context, b Backend, opts Options) (*Store, error) {
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
		return nil, fmt.Errorf("%s: repository format version %d is newer than this program supports (%d): %w",
			describe(b), cfg.Version, RepositoryVersion, ErrNewerFormat)
	}
	if cfg.Version < RepositoryVersion {
		return nil, fmt.Errorf("%s: repository format version %d (flat manifests); this program reads format %d (trees): %w",
			describe(b), cfg.Version, RepositoryVersion, ErrOldFormat)
	}
	if cfg.HashAlgorithm != "blake3" {
		return nil, fmt.Errorf("%s: unsupported hash algorithm %q", describe(b), cfg.HashAlgorithm)
	}
	if err := applyObjectLock(b, cfg); err != nil {
		return nil, fmt.Errorf("%s: %w", describe(b), err)
	}
	s := newStore(b, cfg, opts)
	switch cfg.Encryption {
	case EncryptionXChaCha20:
		if err := s.openKey(ctx); err != nil {
			return nil, err
		}
	case EncryptionNone:
		// A config edited to say "none" must not make this program
		// write plain bytes into an encrypted repository.
		if key, err := firstKey(ctx, b, keysPrefix); err != nil {
			return nil, fmt.Errorf("open repository %s: list key files: %w", describe(b), err)
		} else if key != "" {
			return nil, fmt.Errorf("%s: config says the repository is not encrypted, but it holds key file %s: %w",
				describe(b), key, ErrConfigAltered)
		}
	case "":
		return nil, fmt.Errorf("%s: config does not say whether the repository is encrypted: %w", describe(b), ErrConfigAltered)
	default:
		return nil, fmt.Errorf("%s: repository encryption %q is not supported by this program: %w", describe(b), cfg.Encryption, ErrNewerFormat)
	}
	return s, nil
}

func newStore(b Backend, cfg Config, opts Options) *Store {
	logger := opts.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	s := &Store{backend: b, config: cfg, logger: logger, lookupParallel: 32, compression: opts.Compression,
		passwordFunc: opts.Password, kdf: opts.KDF, keyCache: opts.KeyCache}
	if opts.CacheDir != "" {
		s.cacheDir = filepath.Join(opts.CacheDir, "repos", cfg.ID)
		// The pack index's long runs go to files beside the cache (they
		// are unlinked at once); otherwise to os.TempDir().
		s.index.entries.spillDir = opts.CacheDir
	}
	return s
}

// Config returns the repository config.
func (s *Store) Config() Config { return s.config }

// Backend returns the backend the store writes to.
func (s *Store) Backend() Backend { return s.backend }

// String names the repository for messages.
func (s *Store) String() string { return describe(s.backend) }

// PutResult describes a stored object.
type PutResult struct {
	StoredSize int64
	Codec      Codec
	// Existed is set when the object was not stored again: a packer that
	// already holds it.
	Existed bool
}

// bufferedPutLimit is the largest object encoded in memory, where the
// raw-or-zstd choice is exact; larger objects stream and choose by a sample.
const (
	bufferedPutLimit  = 1 << 20
	compressionSample = 1 << 20
)

// Put stores the content read from r, exactly size bytes, under id.
// The content is hashed while it is encoded; if it does not hash to
// id or its length is not size, nothing is stored and the error
// wraps ErrContentMismatch.
func (s *Store) Put(ctx context.Context, id digest.Digest, r io.Reader, size int64) (PutResult, error) {
	if id.IsZero() {
		return PutResult{}, errors.New("put: no id")
	}
	if size < 0 || size > maxDecodedSize {
		return PutResult{}, fmt.Errorf("put %s: invalid size %d", id, size)
	}
	if size <= bufferedPutLimit {
		return s.putBuffered(ctx, id, r, size)
	}
	return s.putStreaming(ctx, id, r, size)
}

func mismatch(id digest.Digest, what string) error {
	return fmt.Errorf("store %s: %s: %w", id, what, ErrContentMismatch)
}

var bufferPool = sync.Pool{New: func() any { return new(bytes.Buffer) }}

func (s *Store) putBuffered(ctx context.Context, id digest.Digest, r io.Reader, size int64) (PutResult, error) {
	buf := bufferPool.Get().(*bytes.Buffer)
	defer bufferPool.Put(buf)
	buf.Reset()
	n, err := buf.ReadFrom(io.LimitReader(r, size+1))
	if err != nil {
		return PutResult{}, fmt.Errorf("store %s: read content: %w", id, err)
	}
	if n != size {
		return PutResult{}, mismatch(id, fmt.Sprintf("read %d bytes or more, expected %d", n, size))
	}
	return s.PutBytes(ctx, id, buf.Bytes())
}

// PutBytes stores content, which must hash to id, as a loose
// object. Content that does not match is refused with ErrContentMismatch.
func (s *Store) PutBytes(ctx context.Context, id digest.Digest, content []byte) (PutResult, error) {
	if id.IsZero() {
		return PutResult{}, errors.New("put: no id")
	}
	if got := digest.Of(content); got != id {
		return PutResult{}, mismatch(id, "content hashes to "+got.String())
	}
	return s.PutHashed(ctx, id, content)
}

// PutHashed stores content as a loose object under id, which the caller
// has just computed from these very bytes (a snapshot hashing its read
// buffer): unlike PutBytes it does not hash them again.
func (s *Store) PutHashed(ctx context.Context, id digest.Digest, content []byte) (PutResult, error) {
	if id.IsZero() {
		return PutResult{}, errors.New("put: no id")
	}
	out := bufferPool.Get().(*bytes.Buffer)
	defer bufferPool.Put(out)
	out.Reset()
	codec := encodeObject(out, content, s.compression)
	sealed := s.seal.seal(out.Bytes(), objectAD(id))
	stored := int64(len(sealed))
	name := s.seal.looseName(id)
	if err := s.beforeLooseWrite(ctx, name); err != nil {
		return PutResult{}, err
	}
	if err := s.backend.Put(ctx, looseKey(name), bytes.NewReader(sealed), stored); err != nil {
		return PutResult{}, err
	}
	s.known.remember(name, stored)
	return PutResult{StoredSize: stored, Codec: codec}, nil
}

// PutGenerated stores the content that write produces, under its
// id, which it returns. The content is hashed and compressed as it
// is written, so only its compressed form is ever held in memory: for
// manifests of millions of files.
func (s *Store) PutGenerated(ctx context.Context, write func(w io.Writer) error) (digest.Digest, PutResult, error) {
	var out bytes.Buffer
	out.Write(make([]byte, objectHeaderSize)) // the header, once the size is known
	z := s.compression.zstd()
	enc := z.parallel.Get().(*zstd.Encoder)
	defer z.parallel.Put(enc)
	enc.Reset(&out)
	hasher := GetHasher()
	defer PutHasher(hasher)
	content := &countingWriter{w: io.MultiWriter(enc, hasher)}
	if err := write(content); err != nil {
		enc.Reset(nil)
		return digest.Digest{}, PutResult{}, err
	}
	if err := enc.Close(); err != nil {
		return digest.Digest{}, PutResult{}, err
	}
	enc.Reset(nil)
	copy(out.Bytes(), ObjectHeader{Codec: CodecZstd, DecodedSize: content.n}.marshal())
	id := digest.Digest(hasher.Sum(nil))
	sealed := s.seal.seal(out.Bytes(), objectAD(id))
	name := s.seal.looseName(id)
	if err := s.beforeLooseWrite(ctx, name); err != nil {
		return digest.Digest{}, PutResult{}, err
	}
	if err := s.backend.Put(ctx, looseKey(name), bytes.NewReader(sealed), int64(len(sealed))); err != nil {
		return digest.Digest{}, PutResult{}, err
	}
	s.known.remember(name, int64(len(sealed)))
	return id, PutResult{StoredSize: int64(len(sealed)), Codec: CodecZstd}, nil
}

// beforeLooseWrite announces, on the lock the Store writes under, that a
// loose object a pending deletion names is written again, and waits for
// a sweep under way to end: the sweep then leaves it, or deleted it
// before this write (see Lock.resurrect).
func (s *Store) beforeLooseWrite(ctx context.Context, name digest.Digest) error {
	if !s.looseDoomed(name) {
		return nil
	}
	s.writerMu.Lock()
	lk := s.writerLock
	s.writerMu.Unlock()
	if lk == nil {
		return nil
	}
	return lk.resurrect(ctx)
}

// entropySample is the size of each window looksIncompressible examines,
// entropyWindows how many it examines at most, spread over the content.
const (
	entropySample  = 2048
	entropyWindows = 16
)

// xlog2x[c] is c*log2(c), so the entropy of a sample of n bytes is
// log2(n) - sum(xlog2x[count])/n without a logarithm per byte value.
var xlog2x = func() (t [entropySample + 1]float64) {
	for c := 1; c <= entropySample; c++ {
		t[c] = float64(c) * math.Log2(float64(c))
	}
	return
}()

// looksIncompressible estimates whether content would only cost a failed
// compression attempt: random, compressed or encrypted data, close to 8
// bits of entropy per byte. It looks at windows spread over the whole
// content, not only its start, and calls content incompressible only if
// every window is: a database table whose pages begin with dense rows
// and end in free space compresses well although its first bytes do not
// (zstd then stores each 128 KiB block raw or compressed, as that block
// warrants).
func looksIncompressible(content []byte) bool {
	if len(content) < 256 {
		return false
	}
	windows := min(entropyWindows, max(1, len(content)/entropySample))
	stride := len(content) / windows
	for i := range windows {
		// Each window a little further into its stride than the last
		// (by a fraction of it and an odd number of bytes), so windows do
		// not all fall on the same part of fixed-size pages.
		start := min(i*stride+i*stride/windows+i*521, max(0, len(content)-entropySample))
		if !windowIncompressible(content[start:min(start+entropySample, len(content))]) {
			return false
		}
	}
	return true
}

// windowIncompressible estimates the byte entropy of one window.
func windowIncompressible(w []byte) bool {
	var counts [256]uint16
	for _, b := range w {
		counts[b]++
	}
	sum := 0.0
	for _, c := range counts {
		sum += xlog2x[c]
	}
	n := len(w)
	entropy := math.Log2(float64(n)) - sum/float64(n)
	// A uniform sample of n bytes shows less than 8 bits of entropy; the
	// bound leaves room for that and still rejects anything zstd can use.
	return entropy > 7.0+0.8*float64(n)/entropySample
}

// At the fast level, contents of up to maxS2Size (every chunk of the
// default chunk sizes) are compressed with S2, larger ones with zstd's
// fastest level. On the db data set of bench/ S2 stored 11% more than
// zstd (440 MB against 396 for a full backup; 12% more for 1 GiB of log
// text) at 0.6 of its CPU, so a night's changed chunks of a database no
// longer spend half a core in the compressor; `better` and `max` are
// zstd's.

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
	if len(content) <= maxS2Size && c == CompressionFast {
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

func (s *Store) putStreaming(ctx context.Context, id digest.Digest, r io.Reader, size int64) (PutResult, error) {
	sampleBuf := samplePool.Get().(*[]byte)
	defer samplePool.Put(sampleBuf)
	sample := *sampleBuf
	if _, err := io.ReadFull(r, sample); err != nil {
		if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
			return PutResult{}, mismatch(id, fmt.Sprintf("content is shorter than %d bytes", size))
		}
		return PutResult{}, fmt.Errorf("store %s: read content: %w", id, err)
	}
	// Windows spread over the first megabyte decide: a trial compression
	// of the sample would cost a megabyte of compression per large file.
	codec := CodecRaw
	if s.compression != CompressionOff && !looksIncompressible(sample) {
		codec = CodecZstd
	}
	storedSize := int64(-1)
	if codec == CodecRaw {
		storedSize = s.seal.sealedSize(objectHeaderSize + size)
	}
	name := s.seal.looseName(id)
	if err := s.beforeLooseWrite(ctx, name); err != nil {
		return PutResult{}, err
	}
	pr, pw := io.Pipe()
	counter := &countingWriter{w: pw}
	encodeDone := make(chan struct{})
	go func() {
		defer close(encodeDone)
		sealer := s.seal.writer(counter, objectAD(id))
		err := encodeVerified(sealer, io.MultiReader(bytes.NewReader(sample), r), id, size, codec, s.compression)
		if err == nil {
			err = sealer.Close() // only verified content gets its last segment
		}
		pw.CloseWithError(err)
	}()
	err := s.backend.Put(ctx, looseKey(name), pr, storedSize)
	pr.CloseWithError(errors.New("upload ended")) // unblocks the encoder if the backend stopped reading
	<-encodeDone
	if err != nil {
		return PutResult{}, err
	}
	s.known.remember(name, counter.n)
	return PutResult{StoredSize: counter.n, Codec: codec}, nil
}

// encodeVerified writes header and payload of content to w, hashing the
// content as it goes. It returns nil only if content is exactly size bytes
// that hash to id, and returns before the payload is complete
// otherwise, so the backend never commits wrong bytes.
func encodeVerified(w io.Writer, content io.Reader, id digest.Digest, size int64, codec Codec, c Compression) error {
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
		return fmt.Errorf("store %s: %w", id, err)
	}
	if n != size {
		return mismatch(id, fmt.Sprintf("read %d bytes or more, expected %d", n, size))
	}
	if got := digest.Digest(hasher.Sum(nil)); got != id {
		return mismatch(id, "content hashes to "+got.String())
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

// Get opens the object stored under id, loose or packed. A missing
// object is ErrNotFound; damaged bytes are a CorruptObjectError
// (ErrCorrupt), from Get or from a Read.
func (s *Store) Get(ctx context.Context, id digest.Digest) (*ObjectReader, error) {
	if id.IsZero() {
		return nil, errors.New("get: no id")
	}
	pack, loc, packed, err := s.lookupPacked(ctx, id, false)
	if err != nil {
		return nil, err
	}
	var rc io.ReadCloser
	length := int64(-1)
	if packed {
		length = int64(loc.length)
		rc, err = s.backend.GetRange(ctx, pack, int64(loc.offset), length)
	} else {
		rc, err = s.backend.Get(ctx, s.ObjectKey(id))
	}
	if err != nil {
		return nil, fmt.Errorf("object %s: %w", id, err)
	}
	o, err := s.decodeObject(rc, length, id)
	if err != nil {
		rc.Close()
		return nil, err
	}
	return o, nil
}

// decodeObject reads the header of one stored object (length bytes, -1 if
// unknown) from rc and returns a reader of its verified content; closing
// it closes rc.
func (s *Store) decodeObject(rc io.ReadCloser, length int64, id digest.Digest) (*ObjectReader, error) {
	plain := s.seal.reader(rc, length, objectAD(id))
	raw := make([]byte, objectHeaderSize)
	if _, err := io.ReadFull(plain, raw); err != nil {
		switch {
		case isSealBroken(err):
			return nil, &CorruptObjectError{id, "sealed bytes do not authenticate: " + err.Error()}
		case errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF):
			return nil, &CorruptObjectError{id, "shorter than its header"}
		}
		return nil, fmt.Errorf("object %s: %w", id, err)
	}
	header, err := ParseObjectHeader(raw)
	if err != nil {
		return nil, &CorruptObjectError{id, err.Error()}
	}
	source := &sourceReader{r: plain}
	v := &verifyingReader{source: source, id: id, want: header.DecodedSize, hasher: GetHasher()}
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
			return nil, fmt.Errorf("object %s: %w", id, err)
		}
		if n, err := s2.DecodedLen(payload); err != nil || int64(n) != header.DecodedSize {
			return nil, &CorruptObjectError{id, fmt.Sprintf("s2 payload does not decode to the %d bytes its header declares", header.DecodedSize)}
		}
		decoded, err := s2.Decode(nil, payload)
		if err != nil {
			return nil, &CorruptObjectError{id, "payload does not decode: " + err.Error()}
		}
		v.decoded = bytes.NewReader(decoded)
	case CodecZstd:
		dec := decoderPool.Get().(*zstd.Decoder)
		if err := dec.Reset(source); err != nil {
			decoderPool.Put(dec)
			return nil, &CorruptObjectError{id, "payload does not decode: " + err.Error()}
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
func (s *Store) ReadAll(ctx context.Context, id digest.Digest, maxSize int64) ([]byte, error) {
	o, err := s.Get(ctx, id)
	if err != nil {
		return nil, err
	}
	defer o.Close()
	if o.Size() > maxSize {
		return nil, fmt.Errorf("object %s declares %d bytes, more than the limit of %d", id, o.Size(), maxSize)
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
		return nil, &CorruptObjectError{id, "decodes to fewer bytes than its header declares"}
	}
	data := buf.Bytes()
	// The verifying reader checks size and hash when it sees the end.
	var probe [1]byte
	if n, err := o.Read(probe[:]); n != 0 || err != io.EOF {
		if err == nil || err == io.EOF {
			err = &CorruptObjectError{id, "decodes to more bytes than its header declares"}
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

// LookupAll reports, for each of ids (packed or loose), whether and how
// it is stored; the result is aligned with ids. Packed objects are
// answered from memory, loose ones with bounded concurrent Stats (or one
// listing). It answers for readers: a copy a pending deletion of gc
// names counts as stored until it is gone.
func (s *Store) LookupAll(ctx context.Context, ids []digest.Digest) ([]ObjectInfo, error) {
	return s.lookupAll(ctx, ids, false)
}

// lookupAll is LookupAll, for a writer when forWrite: copies a pending
// deletion names count as absent, so the writer stores the content again
// rather than reference what gc is about to delete.
func (s *Store) lookupAll(ctx context.Context, ids []digest.Digest, forWrite bool) ([]ObjectInfo, error) {
	ix, err := s.loadIndex(ctx)
	if err != nil {
		return nil, err
	}
	infos := make([]ObjectInfo, len(ids))
	var loose []int
	ix.mu.RLock()
	for i, id := range ids {
		loc, ok, err := ix.get(id, forWrite)
		if err != nil {
			ix.mu.RUnlock()
			return nil, err
		}
		if ok {
			infos[i] = ObjectInfo{Found: true, StoredSize: int64(loc.length), Packed: true}
		} else {
			loose = append(loose, i)
		}
	}
	ix.mu.RUnlock()
	looseIDs := make([]digest.Digest, len(loose))
	for j, i := range loose {
		looseIDs[j] = ids[i]
	}
	err = s.lookupLoose(ctx, looseIDs, forWrite, func(j int, size int64) {
		infos[loose[j]] = ObjectInfo{Found: true, StoredSize: size}
	})
	if err != nil {
		return nil, err
	}
	return infos, nil
}

// Has reports whether a writer can reference the object id as stored,
// packed or loose: a copy that a pending deletion of gc names does not
// count. Packed objects are answered from memory.
func (s *Store) Has(ctx context.Context, id digest.Digest) (bool, error) {
	_, _, packed, err := s.lookupPacked(ctx, id, true)
	if err != nil || packed {
		return packed, err
	}
	has := false
	err = s.lookupLoose(ctx, []digest.Digest{id}, true, func(int, int64) { has = true })
	return has, err
}

// LoadIndex reads the pack index now unless it is in memory already, so
// that lookups after it answer without reading index files.
func (s *Store) LoadIndex(ctx context.Context) error {
	_, err := s.loadIndex(ctx)
	return err
}

// HasPacked reports whether the object id is in a pack a writer can
// reference (not a doomed one), from the in-memory index alone.
func (s *Store) HasPacked(ctx context.Context, id digest.Digest) (bool, error) {
	_, _, packed, err := s.lookupPacked(ctx, id, true)
	return packed, err
}

// Missing returns the ids, in their order and without duplicates, that
// the store does not hold (for readers: see LookupAll).
func (s *Store) Missing(ctx context.Context, ids []digest.Digest) ([]digest.Digest, error) {
	return s.missing(ctx, ids, false)
}

// ToStore returns the ids, in their order and without duplicates, that a
// writer must store before it references them: those the store does not
// hold, and those only a pending deletion of gc holds.
func (s *Store) ToStore(ctx context.Context, ids []digest.Digest) ([]digest.Digest, error) {
	return s.missing(ctx, ids, true)
}

func (s *Store) missing(ctx context.Context, ids []digest.Digest, forWrite bool) ([]digest.Digest, error) {
	infos, err := s.lookupAll(ctx, ids, forWrite)
	if err != nil {
		return nil, err
	}
	var missing []digest.Digest
	seen := make(map[digest.Digest]bool)
	for i, id := range ids {
		if !infos[i].Found && !seen[id] {
			seen[id] = true
			missing = append(missing, id)
		}
	}
	return missing, nil
}
