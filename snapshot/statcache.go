package snapshot

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"

	"github.com/klauspost/compress/zstd"
	"github.com/zeebo/blake3"
)

// StatCache remembers, per relative path, the stat of a file and the
// hexdigest (and, for embedded files, the content) it had, so that a file
// whose size, mtime, ctime and inode are unchanged is not read again.
//
// A run reads the previous generation and records a new one holding only
// the files seen in this run; Save replaces the file on disk atomically.
// The cache is an optimisation: a missing or damaged cache file only costs
// re-reading, never a wrong hash, because the file carries a checksum.
type StatCache struct {
	path string
	prev map[string]cacheEntry

	mu   sync.Mutex
	next map[string]cacheEntry
}

// fileStat is the part of a stat that decides whether content may have
// changed. ctime is included because nobody can set it: a tool that writes
// and then restores mtime still changes ctime.
type fileStat struct {
	size    int64
	mtimeNs int64
	ctimeNs int64
	inode   uint64
}

type cacheEntry struct {
	stat    fileStat
	digest  [32]byte
	content []byte // only for embedded files
}

const (
	statCacheMagic   = "DBSC"
	statCacheVersion = 1
)

// StatCachePath returns where the stat cache for one repository and one
// source directory lives under cacheDir.
func StatCachePath(cacheDir, repositoryID, source string) string {
	h := blake3.New()
	h.WriteString(repositoryID)
	h.WriteString("\x00")
	h.WriteString(source)
	return filepath.Join(cacheDir, "statcache", hex.EncodeToString(h.Sum(nil)[:16]))
}

// OpenStatCache loads the cache at path. A missing file gives an empty
// cache; a damaged or foreign file gives an empty cache and an error that
// callers may log and otherwise ignore.
func OpenStatCache(path string) (*StatCache, error) {
	c := &StatCache{path: path, prev: map[string]cacheEntry{}, next: map[string]cacheEntry{}}
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return c, nil
	}
	if err != nil {
		return c, fmt.Errorf("stat cache %s: %w", path, err)
	}
	prev, err := decodeStatCache(data)
	if err != nil {
		return c, fmt.Errorf("stat cache %s is damaged, every file will be read again: %w", path, err)
	}
	c.prev = prev
	return c, nil
}

// NewMemoryStatCache returns a cache that is never saved, for tests and for
// library users who keep the cache across runs in their own process.
func NewMemoryStatCache() *StatCache {
	return &StatCache{prev: map[string]cacheEntry{}, next: map[string]cacheEntry{}}
}

// Len returns the number of entries recorded in this run.
func (c *StatCache) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.next)
}

// has reports whether the previous run recorded rel.
func (c *StatCache) has(rel string) bool {
	_, ok := c.prev[rel]
	return ok
}

func (c *StatCache) lookup(rel string, st fileStat) (cacheEntry, bool) {
	e, ok := c.prev[rel]
	if !ok || e.stat != st {
		return cacheEntry{}, false
	}
	return e, true
}

func (c *StatCache) record(rel string, e cacheEntry) {
	c.mu.Lock()
	c.next[rel] = e
	c.mu.Unlock()
}

// Forget drops paths from the generation being recorded, for files found
// to have changed after they were hashed.
func (c *StatCache) Forget(paths ...string) {
	c.mu.Lock()
	for _, p := range paths {
		delete(c.next, p)
	}
	c.mu.Unlock()
}

// Save writes the generation recorded in this run and makes it the one the
// next lookups use. A cache from NewMemoryStatCache is only rotated.
func (c *StatCache) Save() error {
	c.mu.Lock()
	next := c.next
	c.prev, c.next = next, make(map[string]cacheEntry, len(next))
	c.mu.Unlock()
	if c.path == "" {
		return nil
	}
	data, err := encodeStatCache(next)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(c.path), 0o700); err != nil {
		return fmt.Errorf("save stat cache: %w", err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(c.path), ".tmp-statcache-*")
	if err != nil {
		return fmt.Errorf("save stat cache: %w", err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("save stat cache: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("save stat cache: %w", err)
	}
	if err := os.Rename(tmp.Name(), c.path); err != nil {
		return fmt.Errorf("save stat cache: %w", err)
	}
	return nil
}

// File layout: magic, version byte, BLAKE3 of the body (32 bytes), then the
// zstd-compressed body: a uvarint entry count and the entries.
func encodeStatCache(entries map[string]cacheEntry) ([]byte, error) {
	var body bytes.Buffer
	var tmp [binary.MaxVarintLen64]byte
	putU := func(v uint64) { body.Write(tmp[:binary.PutUvarint(tmp[:], v)]) }
	putI := func(v int64) { body.Write(tmp[:binary.PutVarint(tmp[:], v)]) }
	putU(uint64(len(entries)))
	for rel, e := range entries {
		putU(uint64(len(rel)))
		body.WriteString(rel)
		putI(e.stat.size)
		putI(e.stat.mtimeNs)
		putI(e.stat.ctimeNs)
		putU(e.stat.inode)
		body.Write(e.digest[:])
		putU(uint64(len(e.content)))
		body.Write(e.content)
	}
	sum := blake3.Sum256(body.Bytes())
	out := append([]byte(statCacheMagic), statCacheVersion)
	out = append(out, sum[:]...)
	return cacheEncoder.EncodeAll(body.Bytes(), out), nil
}

// One encoder and decoder for every cache file: creating them allocates
// their history buffers, which is most of the memory they use.
var (
	cacheEncoder, _ = zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderConcurrency(1), zstd.WithWindowSize(1<<20))
	cacheDecoder, _ = zstd.NewReader(nil, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxMemory(1<<32))
)

func decodeStatCache(data []byte) (map[string]cacheEntry, error) {
	header := len(statCacheMagic) + 1 + 32
	if len(data) < header || string(data[:4]) != statCacheMagic {
		return nil, errors.New("not a stat cache file")
	}
	if data[4] != statCacheVersion {
		return nil, fmt.Errorf("stat cache version %d is not supported", data[4])
	}
	body, err := cacheDecoder.DecodeAll(data[header:], nil)
	if err != nil {
		return nil, err
	}
	if sum := blake3.Sum256(body); !bytes.Equal(sum[:], data[5:header]) {
		return nil, errors.New("checksum mismatch")
	}
	r := bufio.NewReader(bytes.NewReader(body))
	count, err := binary.ReadUvarint(r)
	if err != nil || count > uint64(len(body)) {
		return nil, errors.New("bad entry count")
	}
	entries := make(map[string]cacheEntry, count)
	for range count {
		var e cacheEntry
		n, err := binary.ReadUvarint(r)
		if err != nil || n > maxPathLength {
			return nil, errors.New("bad path length")
		}
		rel := make([]byte, n)
		if _, err := io.ReadFull(r, rel); err != nil {
			return nil, err
		}
		if e.stat.size, err = binary.ReadVarint(r); err != nil {
			return nil, err
		}
		if e.stat.mtimeNs, err = binary.ReadVarint(r); err != nil {
			return nil, err
		}
		if e.stat.ctimeNs, err = binary.ReadVarint(r); err != nil {
			return nil, err
		}
		if e.stat.inode, err = binary.ReadUvarint(r); err != nil {
			return nil, err
		}
		if _, err := io.ReadFull(r, e.digest[:]); err != nil {
			return nil, err
		}
		n, err = binary.ReadUvarint(r)
		if err != nil || n > maxEmbeddedSize {
			return nil, errors.New("bad content length")
		}
		if n > 0 {
			e.content = make([]byte, n)
			if _, err := io.ReadFull(r, e.content); err != nil {
				return nil, err
			}
		}
		entries[string(rel)] = e
	}
	return entries, nil
}
