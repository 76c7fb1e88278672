package snapshot

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
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
// An incremental snapshot sees only what changed, so its run keeps the
// previous generation and lays its records over it (newer); Keep makes
// them the ones lookups use without the O(files) work of a Save, which a
// long-running watcher does only now and then.
// The cache is an optimisation: a missing or damaged cache file only costs
// re-reading, never a wrong hash, because the file carries a checksum.
//
// Memory matters at millions of files, so the previous generation is one
// string of all paths and parallel arrays, and the next generation a list
// of records that share the manifest's path strings.
type StatCache struct {
	path  string
	prev  cacheTable
	newer map[string]newerEntry // replaces prev's entries; read-only during a run

	mu        sync.Mutex
	next      []cacheRecord
	forgotten map[string]bool
	ran       bool // a run started since the last rotation
	keepPrev  bool // that run is incremental: what it does not record stays
}

// newerEntry is an entry recorded after prev was loaded, or the mark of
// one that is gone.
type newerEntry struct {
	entry cacheEntry
	gone  bool
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

type cacheRecord struct {
	rel   string
	entry cacheEntry
}

// cacheTable is a read-only generation: paths[ends[i-1]:ends[i]] is entry
// i, index maps each path (a substring of paths, no copy) to i.
type cacheTable struct {
	paths   string
	ends    []uint32
	stats   []fileStat
	digests [][32]byte
	content map[int32][]byte
	index   map[string]int32
}

func (t *cacheTable) len() int { return len(t.ends) }

func (t *cacheTable) path(i int) string {
	start := uint32(0)
	if i > 0 {
		start = t.ends[i-1]
	}
	return t.paths[start:t.ends[i]]
}

func (t *cacheTable) entry(i int32) cacheEntry {
	return cacheEntry{stat: t.stats[i], digest: t.digests[i], content: t.content[i]}
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
	c := &StatCache{path: path}
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
func NewMemoryStatCache() *StatCache { return &StatCache{} }

// Len returns the number of entries recorded in this run.
func (c *StatCache) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.next)
}

// has reports whether an earlier run recorded rel.
func (c *StatCache) has(rel string) bool {
	if e, ok := c.newer[rel]; ok {
		return !e.gone
	}
	_, ok := c.prev.index[rel]
	return ok
}

func (c *StatCache) lookup(rel string, st fileStat) (cacheEntry, bool) {
	if e, ok := c.newer[rel]; ok {
		if e.gone || e.entry.stat != st {
			return cacheEntry{}, false
		}
		return e.entry, true
	}
	i, ok := c.prev.index[rel]
	if !ok || c.prev.stats[i] != st {
		return cacheEntry{}, false
	}
	return c.prev.entry(i), true
}

func (c *StatCache) record(rel string, e cacheEntry) {
	c.mu.Lock()
	c.next = append(c.next, cacheRecord{rel, e})
	c.mu.Unlock()
}

// begin marks the start of a run. The generation an incremental run
// records is the previous one with its records laid over it.
func (c *StatCache) begin(incremental bool) {
	c.mu.Lock()
	// Runs since the last rotation share one generation; one full run
	// among them has seen every file.
	c.keepPrev = incremental && (!c.ran || c.keepPrev)
	c.ran = true
	c.mu.Unlock()
}

// Forget drops paths from the generation being recorded, for files found
// to have changed after they were hashed or to be gone.
func (c *StatCache) Forget(paths ...string) {
	c.mu.Lock()
	if c.forgotten == nil {
		c.forgotten = map[string]bool{}
	}
	for _, p := range paths {
		c.forgotten[p] = true
	}
	c.mu.Unlock()
}

// Keep makes the generation recorded in this run the one the next lookups
// use, without writing it. After an incremental run it costs what the run
// recorded, not what the cache holds.
func (c *StatCache) Keep() {
	c.mu.Lock()
	c.keep()
	c.mu.Unlock()
}

// keep is Keep with c.mu held. After a full run it returns the records,
// sorted, that the new generation was built from.
func (c *StatCache) keep() []cacheRecord {
	if !c.ran && len(c.next) == 0 && len(c.forgotten) == 0 {
		return nil // nothing recorded since the last rotation
	}
	records, forgotten := c.next, c.forgotten
	c.next, c.forgotten, c.ran = nil, nil, false
	if !c.keepPrev {
		// Several runs may have recorded a path: the latest counts.
		sort.SliceStable(records, func(i, j int) bool { return records[i].rel < records[j].rel })
		kept := records[:0]
		for i, r := range records {
			if !forgotten[r.rel] && (i+1 == len(records) || records[i+1].rel != r.rel) {
				kept = append(kept, r)
			}
		}
		c.prev, c.newer = buildTable(kept), nil
		return kept
	}
	c.keepPrev = false
	if c.newer == nil {
		c.newer = make(map[string]newerEntry, len(records)+len(forgotten))
	}
	for _, r := range records {
		c.newer[r.rel] = newerEntry{entry: r.entry}
	}
	for p := range forgotten {
		c.newer[p] = newerEntry{gone: true}
	}
	return nil
}

// Save writes the generation recorded in this run (with, after incremental
// runs, the earlier entries it kept) and makes it the one the next lookups
// use. A cache from NewMemoryStatCache is only rotated.
func (c *StatCache) Save() error {
	c.mu.Lock()
	records := c.keep()
	if records == nil {
		// Incremental runs, or none: the previous generation with the
		// newer entries laid over it, which become one generation again.
		records = make([]cacheRecord, 0, c.prev.len()+len(c.newer))
		for i := 0; i < c.prev.len(); i++ {
			p := c.prev.path(i)
			if _, ok := c.newer[p]; !ok {
				records = append(records, cacheRecord{p, c.prev.entry(int32(i))})
			}
		}
		if len(c.newer) > 0 {
			for p, e := range c.newer {
				if !e.gone {
					records = append(records, cacheRecord{p, e.entry})
				}
			}
			sort.Slice(records, func(i, j int) bool { return records[i].rel < records[j].rel })
			c.prev, c.newer = buildTable(records), nil
		}
	}
	c.mu.Unlock()
	if c.path == "" {
		return nil
	}
	data := encodeStatCache(records)
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

// buildTable makes a generation from records sorted by path.
func buildTable(records []cacheRecord) cacheTable {
	n := 0
	for _, r := range records {
		n += len(r.rel)
	}
	var paths []byte
	t := cacheTable{
		ends:    make([]uint32, len(records)),
		stats:   make([]fileStat, len(records)),
		digests: make([][32]byte, len(records)),
		content: map[int32][]byte{},
	}
	paths = make([]byte, 0, n)
	for i, r := range records {
		paths = append(paths, r.rel...)
		t.ends[i] = uint32(len(paths))
		t.stats[i] = r.entry.stat
		t.digests[i] = r.entry.digest
		if r.entry.content != nil {
			t.content[int32(i)] = r.entry.content
		}
	}
	t.paths = string(paths)
	t.buildIndex()
	return t
}

func (t *cacheTable) buildIndex() {
	t.index = make(map[string]int32, len(t.ends))
	for i := range t.ends {
		t.index[t.path(i)] = int32(i)
	}
}

// File layout: magic, version byte, BLAKE3 of the body (32 bytes), then the
// zstd-compressed body: a uvarint entry count and the entries, sorted by
// path: uvarint path length, path, varint size, mtime_ns, ctime_ns, uvarint
// inode, 32-byte digest, uvarint content length, content.
func encodeStatCache(records []cacheRecord) []byte {
	var body bytes.Buffer
	body.Grow(len(records) * 96)
	var tmp [binary.MaxVarintLen64]byte
	putU := func(v uint64) { body.Write(tmp[:binary.PutUvarint(tmp[:], v)]) }
	putI := func(v int64) { body.Write(tmp[:binary.PutVarint(tmp[:], v)]) }
	putU(uint64(len(records)))
	for _, r := range records {
		e := r.entry
		putU(uint64(len(r.rel)))
		body.WriteString(r.rel)
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
	return cacheEncoder.EncodeAll(body.Bytes(), out)
}

// One encoder for every cache file: creating it allocates its history
// buffers, which is most of the memory it uses.
var cacheEncoder, _ = zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderConcurrency(1), zstd.WithWindowSize(1<<20))

// decodeCacheBody decompresses the body of a cache file. It streams, so
// memory grows with the bytes that really decode: a damaged frame header
// may claim gigabytes, and DecodeAll would allocate them up front.
func decodeCacheBody(compressed []byte) ([]byte, error) {
	dec, err := zstd.NewReader(bytes.NewReader(compressed), zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxWindow(64<<20))
	if err != nil {
		return nil, err
	}
	defer dec.Close()
	var body bytes.Buffer
	body.Grow(min(2*len(compressed), 1<<30))
	if _, err := body.ReadFrom(dec); err != nil {
		return nil, err
	}
	return body.Bytes(), nil
}

// errCacheFormat reports a cache file that does not parse.
var errCacheFormat = errors.New("malformed stat cache")

func decodeStatCache(data []byte) (cacheTable, error) {
	header := len(statCacheMagic) + 1 + 32
	if len(data) < header || string(data[:4]) != statCacheMagic {
		return cacheTable{}, errors.New("not a stat cache file")
	}
	if data[4] != statCacheVersion {
		return cacheTable{}, fmt.Errorf("stat cache version %d is not supported", data[4])
	}
	body, err := decodeCacheBody(data[header:])
	if err != nil {
		return cacheTable{}, err
	}
	if sum := blake3.Sum256(body); !bytes.Equal(sum[:], data[5:header]) {
		return cacheTable{}, errors.New("checksum mismatch")
	}
	r := body
	readU := func() (uint64, bool) {
		v, n := binary.Uvarint(r)
		if n <= 0 {
			return 0, false
		}
		r = r[n:]
		return v, true
	}
	readI := func() (int64, bool) {
		v, n := binary.Varint(r)
		if n <= 0 {
			return 0, false
		}
		r = r[n:]
		return v, true
	}
	count, ok := readU()
	if !ok || count > uint64(len(body)) {
		return cacheTable{}, errCacheFormat
	}
	t := cacheTable{
		ends:    make([]uint32, 0, count),
		stats:   make([]fileStat, 0, count),
		digests: make([][32]byte, 0, count),
		content: map[int32][]byte{},
	}
	paths := make([]byte, 0, len(body)/2)
	for i := range count {
		n, ok := readU()
		if !ok || n > maxPathLength || n > uint64(len(r)) {
			return cacheTable{}, errCacheFormat
		}
		paths = append(paths, r[:n]...)
		r = r[n:]
		if uint64(len(paths)) > 1<<32-1 {
			return cacheTable{}, errCacheFormat
		}
		var st fileStat
		var ok1, ok2, ok3, ok4 bool
		st.size, ok1 = readI()
		st.mtimeNs, ok2 = readI()
		st.ctimeNs, ok3 = readI()
		st.inode, ok4 = readU()
		if !(ok1 && ok2 && ok3 && ok4) || len(r) < 32 {
			return cacheTable{}, errCacheFormat
		}
		var d [32]byte
		copy(d[:], r[:32])
		r = r[32:]
		cl, ok := readU()
		if !ok || cl > maxEmbeddedSize || cl > uint64(len(r)) {
			return cacheTable{}, errCacheFormat
		}
		if cl > 0 {
			t.content[int32(i)] = append([]byte(nil), r[:cl]...)
			r = r[cl:]
		}
		t.ends = append(t.ends, uint32(len(paths)))
		t.stats = append(t.stats, st)
		t.digests = append(t.digests, d)
	}
	t.paths = string(paths)
	t.buildIndex()
	return t, nil
}
