package snapshot

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"

	"github.com/deltabackup/deltabackup/snapshot/digest"
)

// A DirCache remembers, per directory of one source, what the last
// backup found there: a signature of its entries' status (name, type,
// mode, owner, size, mtime, ctime, inode, device), the id and encoding
// of its tree, and per entry the inode and ctime the tree does not hold.
// A directory whose entries all stat as before is taken by id without
// reading a file or encoding a tree; in a changed directory, only the
// entries whose status changed are read again.
//
// It lives outside the repository (one file per repository and source)
// and is an optimisation only: a missing or damaged cache costs reading
// everything again, never a wrong id. The file written by a run replaces
// the old one only when the caller commits it after the backup's record
// is stored, so every tree it names was part of a whole backup. After a
// gc (the caller compares Generation) the cache is not Trusted: what it
// names is looked up in the repository before it is used.
//
// File format: "DBDC", version byte 1, the fingerprint (uvarint length +
// bytes); then records; then the index (uvarint count, per record uvarint
// path length, path, uvarint offset) and the generation (uvarint length +
// bytes); last the index's offset (uint64, little-endian) and "DBDX". A record: uvarint path length,
// path, local signature, full signature, tree id (32 bytes each), what
// the directory holds (7 uvarints, Counts), uvarint tree length and the tree's encoding, uvarint
// extras count and per tree entry uvarint inode and varint ctime.
type DirCache struct {
	path string
	// Trusted is set by the caller when no gc ran since the cache was
	// committed: the trees it names are then taken as stored.
	Trusted bool

	oldFile     *os.File
	oldSize     int64
	index       map[string]int64
	fingerprint string
	generation  string

	mu      sync.Mutex
	tmp     *os.File
	w       *bufio.Writer
	written int64
	entries []cacheIndexEntry
	werr    error
}

type cacheIndexEntry struct {
	path   string
	offset int64
}

const (
	dirCacheMagic   = "DBDC"
	dirCacheFooter  = "DBDX"
	dirCacheVersion = 1
	maxCacheIndex   = 1 << 28
)

// dirRecord is one directory of a DirCache.
type dirRecord struct {
	path     string
	localSig digest.Digest
	fullSig  digest.Digest
	tree     digest.Digest
	below    Counts
	encoded  []byte
	extras   []entryExtra
}

// entryExtra is what change detection needs beyond the tree's own
// fields. A zero ctime means "read it again next time".
type entryExtra struct {
	ino   uint64
	ctime int64
}

// DirCachePath returns where the cache of the source src for the
// repository repoID lives below dir.
func DirCachePath(dir, repoID, src string) string {
	sum := sha256.Sum256([]byte(src))
	return filepath.Join(dir, "dircache", repoID, hex.EncodeToString(sum[:16]))
}

// OpenDirCache opens the cache at path; a missing file is an empty cache,
// and a damaged one is reported and treated as empty. The new cache a
// snapshot writes goes to a temporary file next to it until Commit.
func OpenDirCache(path string) (*DirCache, error) {
	c := &DirCache{path: path}
	err := c.load()
	if err != nil {
		c.dropOld()
	}
	return c, err
}

func (c *DirCache) load() error {
	f, err := os.Open(c.path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("directory cache: %w", err)
	}
	c.oldFile = f
	fi, err := f.Stat()
	if err != nil {
		return fmt.Errorf("directory cache: %w", err)
	}
	c.oldSize = fi.Size()
	head := make([]byte, min(fi.Size(), 64<<10))
	if _, err := f.ReadAt(head, 0); err != nil {
		return fmt.Errorf("directory cache: %w", err)
	}
	if !bytes.HasPrefix(head, []byte(dirCacheMagic)) || len(head) < 5 || head[4] != dirCacheVersion {
		return fmt.Errorf("directory cache %s: not a cache of this version", c.path)
	}
	d := &treeDecoder{b: head[5:]}
	c.fingerprint = d.string(16<<10, "fingerprint length")
	if d.err != nil {
		return fmt.Errorf("directory cache %s: %w", c.path, d.err)
	}
	var foot [12]byte
	if fi.Size() < 12+5 {
		return fmt.Errorf("directory cache %s: truncated", c.path)
	}
	if _, err := f.ReadAt(foot[:], fi.Size()-12); err != nil || string(foot[8:]) != dirCacheFooter {
		return fmt.Errorf("directory cache %s: no index (an interrupted write?)", c.path)
	}
	indexAt := int64(binary.LittleEndian.Uint64(foot[:8]))
	if indexAt < 5 || indexAt > fi.Size()-12 {
		return fmt.Errorf("directory cache %s: index offset out of range", c.path)
	}
	raw := make([]byte, fi.Size()-12-indexAt)
	if _, err := f.ReadAt(raw, indexAt); err != nil {
		return fmt.Errorf("directory cache %s: %w", c.path, err)
	}
	d = &treeDecoder{b: raw, text: string(raw)} // paths cut from one string
	count := d.bounded(min(maxCacheIndex, uint64(len(raw))/2), "index count")
	c.index = make(map[string]int64, count)
	for range count {
		p := d.string(1<<16, "path length")
		off := d.bounded(uint64(indexAt), "offset")
		if d.err != nil {
			return fmt.Errorf("directory cache %s: %w", c.path, d.err)
		}
		c.index[p] = int64(off)
	}
	c.generation = d.string(16<<10, "generation length")
	if d.err != nil {
		return fmt.Errorf("directory cache %s: %w", c.path, d.err)
	}
	return nil
}

func (c *DirCache) dropOld() {
	if c.oldFile != nil {
		c.oldFile.Close()
	}
	c.oldFile, c.index, c.fingerprint, c.generation = nil, nil, "", ""
}

// Generation is what the caller passed to the Commit that wrote the
// cache ("" for an empty cache).
func (c *DirCache) Generation() string { return c.generation }

// Len is the number of directories the cache knows.
func (c *DirCache) Len() int { return len(c.index) }

// usable reports whether the old cache was written under fingerprint.
func (c *DirCache) usable(fingerprint string) bool {
	return c.index != nil && c.fingerprint == fingerprint
}

// lookup reads the record of directory rel ("" for the root).
func (c *DirCache) lookup(rel string) (*dirRecord, error) {
	off, ok := c.index[rel]
	if !ok {
		return nil, nil
	}
	r := &sectionReader{f: c.oldFile, off: off}
	br := bufio.NewReaderSize(r, 4096)
	// A record cannot be longer than what follows it in the file: lengths
	// it claims beyond that are refused before anything is allocated.
	rec, err := readDirRecord(br, uint64(max(0, c.oldSize-off)))
	if err != nil {
		return nil, fmt.Errorf("directory cache %s, record of %q: %w", c.path, rel, err)
	}
	if rec.path != rel {
		return nil, fmt.Errorf("directory cache %s: the index points %q at the record of %q", c.path, rel, rec.path)
	}
	return rec, nil
}

type sectionReader struct {
	f   *os.File
	off int64
}

func (s *sectionReader) Read(p []byte) (int, error) {
	n, err := s.f.ReadAt(p, s.off)
	s.off += int64(n)
	if n > 0 && err == io.EOF {
		err = nil
	}
	return n, err
}

func readUvarint(r *bufio.Reader, limit uint64, what string) (uint64, error) {
	v, err := binary.ReadUvarint(r)
	if err != nil {
		return 0, err
	}
	if v > limit {
		return 0, fmt.Errorf("%s %d exceeds %d", what, v, limit)
	}
	return v, nil
}

func readDirRecord(r *bufio.Reader, left uint64) (*dirRecord, error) {
	rec := &dirRecord{}
	n, err := readUvarint(r, min(1<<16, left), "path length")
	if err != nil {
		return nil, err
	}
	p := make([]byte, n)
	if _, err := io.ReadFull(r, p); err != nil {
		return nil, err
	}
	rec.path = string(p)
	for _, d := range []*digest.Digest{&rec.localSig, &rec.fullSig, &rec.tree} {
		if _, err := io.ReadFull(r, d[:]); err != nil {
			return nil, err
		}
	}
	for _, v := range rec.below.fields() {
		u, err := readUvarint(r, 1<<62, "count")
		if err != nil {
			return nil, err
		}
		*v = int64(u)
	}
	n, err = readUvarint(r, min(MaxTreeSize, left), "tree length")
	if err != nil {
		return nil, err
	}
	rec.encoded = make([]byte, n)
	if _, err := io.ReadFull(r, rec.encoded); err != nil {
		return nil, err
	}
	if digest.Of(rec.encoded) != rec.tree {
		return nil, errors.New("the tree does not match its id")
	}
	n, err = readUvarint(r, uint64(len(rec.encoded)), "extras count")
	if err != nil {
		return nil, err
	}
	rec.extras = make([]entryExtra, n)
	for i := range rec.extras {
		ino, err := binary.ReadUvarint(r)
		if err != nil {
			return nil, err
		}
		ctime, err := binary.ReadVarint(r)
		if err != nil {
			return nil, err
		}
		rec.extras[i] = entryExtra{ino: ino, ctime: ctime}
	}
	return rec, nil
}

func appendDirRecord(b []byte, rec *dirRecord) []byte {
	b = appendString(b, rec.path)
	b = append(b, rec.localSig[:]...)
	b = append(b, rec.fullSig[:]...)
	b = append(b, rec.tree[:]...)
	for _, v := range rec.below.fields() {
		b = binary.AppendUvarint(b, uint64(*v))
	}
	b = binary.AppendUvarint(b, uint64(len(rec.encoded)))
	b = append(b, rec.encoded...)
	b = binary.AppendUvarint(b, uint64(len(rec.extras)))
	for _, e := range rec.extras {
		b = binary.AppendUvarint(b, e.ino)
		b = binary.AppendVarint(b, e.ctime)
	}
	return b
}

// begin starts the new cache of a snapshot taken under fingerprint.
func (c *DirCache) begin(fingerprint string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	// The previous snapshot's cache was not committed (its backup
	// failed): it is dropped.
	c.dropTmp()
	if err := os.MkdirAll(filepath.Dir(c.path), 0o700); err != nil {
		return fmt.Errorf("directory cache: %w", err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(c.path), filepath.Base(c.path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("directory cache: %w", err)
	}
	c.tmp, c.w, c.entries = tmp, bufio.NewWriterSize(tmp, 1<<20), nil
	head := appendString(append([]byte(dirCacheMagic), dirCacheVersion), fingerprint)
	_, c.werr = c.w.Write(head)
	c.written = int64(len(head))
	return nil
}

// put appends a record to the new cache. A write error is kept for
// Commit: the snapshot goes on without a cache.
func (c *DirCache) put(rec *dirRecord, buf []byte) []byte {
	buf = appendDirRecord(buf[:0], rec)
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.w == nil || c.werr != nil {
		return buf
	}
	c.entries = append(c.entries, cacheIndexEntry{rec.path, c.written})
	n, err := c.w.Write(buf)
	c.written += int64(n)
	c.werr = err
	return buf
}

// Commit makes the cache written by the last snapshot the cache, marked
// with generation (the caller's view of the repository: its newest gc).
// Call it only once the backup it describes is stored.
func (c *DirCache) Commit(generation string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.tmp == nil {
		return errors.New("directory cache: nothing to commit")
	}
	tmp := c.tmp
	c.tmp = nil
	fail := func(err error) error {
		tmp.Close()
		os.Remove(tmp.Name())
		return fmt.Errorf("directory cache: %w", err)
	}
	if c.werr != nil {
		return fail(c.werr)
	}
	slices.SortFunc(c.entries, func(a, b cacheIndexEntry) int { return strings.Compare(a.path, b.path) })
	idx := binary.AppendUvarint(nil, uint64(len(c.entries)))
	for _, e := range c.entries {
		idx = appendString(idx, e.path)
		idx = binary.AppendUvarint(idx, uint64(e.offset))
	}
	idx = appendString(idx, generation)
	idx = binary.LittleEndian.AppendUint64(idx, uint64(c.written))
	idx = append(idx, dirCacheFooter...)
	if _, err := c.w.Write(idx); err != nil {
		return fail(err)
	}
	if err := c.w.Flush(); err != nil {
		return fail(err)
	}
	if err := tmp.Sync(); err != nil {
		return fail(err)
	}
	if err := tmp.Close(); err != nil {
		return fail(err)
	}
	if err := os.Rename(tmp.Name(), c.path); err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("directory cache: %w", err)
	}
	c.entries = nil
	// A long-running process (watch, serve) takes its next snapshot from
	// what it just committed.
	c.dropOld()
	if err := c.load(); err != nil {
		c.dropOld()
	}
	return nil
}

// Close releases the cache; a new cache not committed is discarded.
func (c *DirCache) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.dropTmp()
	c.dropOld()
	return nil
}

// dropTmp discards a new cache not committed; c.mu is held.
func (c *DirCache) dropTmp() {
	if c.tmp != nil {
		c.tmp.Close()
		os.Remove(c.tmp.Name())
		c.tmp = nil
	}
}
