package hashstore

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"sort"
	"sync"

	"github.com/klauspost/compress/zstd"
	"github.com/zeebo/blake3"

	"github.com/deltabackup/deltabackup/snapshot"
)

// Packs hold many small objects in one stored file, so that a backup of
// 200,000 small files writes tens of files, not 200,000.
//
// Pack layout (key packs/<hh>/<packid>, packid = 32 random bytes: a pack
// is streamed to the backend while it fills, before its hash could be
// known; each object in it is verified by its own hexdigest):
//
//	object 1 | object 2 | ... | trailer | trailer length (uint32 BE) | "DBPK"
//
// Each object is encoded exactly like a loose object (header + payload), so
// a ranged read of one entry decodes on its own. The trailer is the
// zstd-compressed entry list of the pack (see encodeEntries); it lets an
// index be rebuilt from the packs alone.
//
// Index layout (key index/<hh>/<indexid>, indexid = BLAKE3 of the file):
//
//	"DBIX" | version (1 byte) | zstd(entry lists of one or more packs)
//
// An index is written only after the packs it names are stored, so a crash
// never leaves an index that points at a missing pack; at worst a pack
// without an index, whose objects the next backup stores again.
const (
	packFooterMagic   = "DBPK"
	indexMagic        = "DBIX"
	indexVersion      = 1
	maxIndexFileSize  = 1 << 30
	maxEntriesPerPack = 1 << 22
)

// DefaultPackSize is the size at which a pack is closed and stored.
const DefaultPackSize = 16 << 20

// PackEntry locates one object inside a pack.
type PackEntry struct {
	Hexdigest   [32]byte
	Offset      uint32
	Length      uint32 // stored bytes: header and payload
	DecodedSize uint32
}

func packKey(id [32]byte) string {
	h := hex.EncodeToString(id[:])
	return "packs/" + h[:2] + "/" + h
}

func indexKey(id [32]byte) string {
	h := hex.EncodeToString(id[:])
	return "index/" + h[:2] + "/" + h
}

// packLocation is an entry as kept in memory: the pack by number.
type packLocation struct {
	pack   uint32
	offset uint32
	length uint32
}

// packIndex is the in-memory union of all index files of a repository.
type packIndex struct {
	mu      sync.RWMutex
	loaded  bool
	packs   [][32]byte
	packNum map[[32]byte]uint32
	entries map[[32]byte]packLocation
}

func (ix *packIndex) add(pack [32]byte, entries []PackEntry) {
	n, ok := ix.packNum[pack]
	if !ok {
		n = uint32(len(ix.packs))
		ix.packs = append(ix.packs, pack)
		ix.packNum[pack] = n
	}
	for _, e := range entries {
		if _, dup := ix.entries[e.Hexdigest]; !dup {
			ix.entries[e.Hexdigest] = packLocation{pack: n, offset: e.Offset, length: e.Length}
		}
	}
}

// loadIndex reads every index file once, on first use.
func (s *Store) loadIndex(ctx context.Context) (*packIndex, error) {
	ix := &s.index
	ix.mu.RLock()
	loaded := ix.loaded
	ix.mu.RUnlock()
	if loaded {
		return ix, nil
	}
	ix.mu.Lock()
	defer ix.mu.Unlock()
	if ix.loaded {
		return ix, nil
	}
	if ix.entries == nil {
		ix.entries = make(map[[32]byte]packLocation)
		ix.packNum = make(map[[32]byte]uint32)
	}
	var keys []string
	err := s.backend.List(ctx, "index/", func(info Info) error {
		keys = append(keys, info.Key)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list pack indexes: %w", err)
	}
	sort.Strings(keys)
	for _, key := range keys {
		packs, err := s.readIndexFile(ctx, key)
		if err != nil {
			return nil, err
		}
		for _, p := range packs {
			ix.add(p.id, p.entries)
		}
	}
	ix.loaded = true
	return ix, nil
}

type packEntries struct {
	id      [32]byte
	entries []PackEntry
}

func (s *Store) readIndexFile(ctx context.Context, key string) ([]packEntries, error) {
	name := key[len(key)-64:]
	data := s.cachedIndexFile(key)
	if data == nil {
		rc, err := s.backend.Get(ctx, key)
		if err != nil {
			return nil, fmt.Errorf("read index %s: %w", name, err)
		}
		data, err = io.ReadAll(io.LimitReader(rc, maxIndexFileSize+1))
		rc.Close()
		if err != nil {
			return nil, fmt.Errorf("read index %s: %w", name, err)
		}
		if got := Hexdigest(data); got != name {
			return nil, &CorruptObjectError{Hexdigest: name, Reason: "index file hashes to " + got}
		}
		s.cacheIndexFile(key, data)
	}
	packs, err := DecodeIndex(data)
	if err != nil {
		return nil, &CorruptObjectError{Hexdigest: name, Reason: "index file: " + err.Error()}
	}
	return packs, nil
}

// encodeEntries writes the entry list of one pack: version 1 only knows
// this layout, so it carries no version of its own.
//
//	uvarint count | count × (hexdigest 32 bytes | uvarint offset | uvarint length | uvarint decoded size)
func encodeEntries(w *bytes.Buffer, entries []PackEntry) {
	var tmp [binary.MaxVarintLen64]byte
	put := func(v uint64) { w.Write(tmp[:binary.PutUvarint(tmp[:], v)]) }
	put(uint64(len(entries)))
	for _, e := range entries {
		w.Write(e.Hexdigest[:])
		put(uint64(e.Offset))
		put(uint64(e.Length))
		put(uint64(e.DecodedSize))
	}
}

func decodeEntries(r *bufio.Reader) ([]PackEntry, error) {
	n, err := binary.ReadUvarint(r)
	if err != nil {
		return nil, err
	}
	if n > maxEntriesPerPack {
		return nil, fmt.Errorf("%d entries in one pack is implausible", n)
	}
	entries := make([]PackEntry, 0, min(n, 1<<14))
	var end uint64
	for range n {
		var e PackEntry
		if _, err := io.ReadFull(r, e.Hexdigest[:]); err != nil {
			return nil, err
		}
		var v [3]uint64
		for i := range v {
			if v[i], err = binary.ReadUvarint(r); err != nil {
				return nil, err
			}
			if v[i] > 1<<32-1 {
				return nil, errors.New("entry field out of range")
			}
		}
		if v[1] < objectHeaderSize || v[0] < end {
			return nil, errors.New("entries overlap or are shorter than a header")
		}
		end = v[0] + v[1]
		if end > 1<<32-1 {
			return nil, errors.New("entry beyond 4 GiB")
		}
		e.Offset, e.Length, e.DecodedSize = uint32(v[0]), uint32(v[1]), uint32(v[2])
		entries = append(entries, e)
	}
	return entries, nil
}

// encodeIndex returns the bytes of an index file naming packs.
func encodeIndex(packs []packEntries) []byte {
	var body bytes.Buffer
	var tmp [binary.MaxVarintLen64]byte
	body.Write(tmp[:binary.PutUvarint(tmp[:], uint64(len(packs)))])
	for _, p := range packs {
		body.Write(p.id[:])
		encodeEntries(&body, p.entries)
	}
	out := bytes.NewBufferString(indexMagic)
	out.WriteByte(indexVersion)
	out.Write(metadataZstd().EncodeAll(body.Bytes(), nil))
	return out.Bytes()
}

// DecodeIndex parses an index file. Untrusted input: every count and
// offset is bounded before anything is allocated for it.
func DecodeIndex(data []byte) ([]packEntries, error) {
	if len(data) < len(indexMagic)+1 || string(data[:4]) != indexMagic {
		return nil, errors.New("not an index file")
	}
	if data[4] != indexVersion {
		return nil, fmt.Errorf("index version %d is not supported", data[4])
	}
	dec := decoderPool.Get().(*zstd.Decoder)
	defer decoderPool.Put(dec)
	if err := dec.Reset(bytes.NewReader(data[5:])); err != nil {
		return nil, err
	}
	defer dec.Reset(nil)
	r := bufio.NewReader(io.LimitReader(dec, maxIndexFileSize))
	n, err := binary.ReadUvarint(r)
	if err != nil {
		return nil, err
	}
	if n > 1<<20 {
		return nil, fmt.Errorf("%d packs in one index is implausible", n)
	}
	var packs []packEntries
	for range n {
		var p packEntries
		if _, err := io.ReadFull(r, p.id[:]); err != nil {
			return nil, err
		}
		if p.entries, err = decodeEntries(r); err != nil {
			return nil, err
		}
		packs = append(packs, p)
	}
	if _, err := r.ReadByte(); err != io.EOF {
		return nil, errors.New("trailing data after the last pack")
	}
	return packs, nil
}

// Packer collects small objects into packs. Each pack is streamed to the
// backend while it fills, so no pack is ever held in memory; when it
// reaches the target size it is completed, then its index is stored and its
// objects become visible. Add is safe for concurrent use.
type Packer struct {
	store  *Store
	ctx    context.Context
	target int64

	mu   sync.Mutex
	cur  *openPack
	err  error
	seen map[[32]byte]bool
}

// openPack is a pack whose bytes are being streamed to the backend.
type openPack struct {
	id      [32]byte
	pw      *io.PipeWriter
	stored  chan error // result of the backend Put
	size    int64
	entries []PackEntry
}

// NewPacker returns a Packer whose pack uploads run under ctx and that
// completes packs at about target bytes (DefaultPackSize when target <= 0).
// Call Flush when done, or Abort to give up.
func (s *Store) NewPacker(ctx context.Context, target int) *Packer {
	if target <= 0 {
		target = DefaultPackSize
	}
	return &Packer{store: s, ctx: ctx, target: int64(target), seen: map[[32]byte]bool{}}
}

// Add verifies that content hashes to hexdigest, encodes it and appends it
// to the current pack. The object is readable from the store once its pack
// is complete (at the latest after Flush).
func (p *Packer) Add(ctx context.Context, hexdigest string, content []byte) (PutResult, error) {
	if got := Hexdigest(content); got != hexdigest {
		return PutResult{}, mismatch(hexdigest, "content hashes to "+got)
	}
	return p.AddHashed(ctx, hexdigest, content)
}

// AddHashed is Add for content whose hexdigest the caller has just
// computed from these very bytes (a backup hashing a file it read into
// memory): hashing it a second time would only cost time.
func (p *Packer) AddHashed(ctx context.Context, hexdigest string, content []byte) (PutResult, error) {
	if len(content) > 1<<30 {
		return PutResult{}, fmt.Errorf("pack %s: %d bytes is too large for a pack", hexdigest, len(content))
	}
	if !snapshot.ValidHexdigest(hexdigest) {
		return PutResult{}, fmt.Errorf("pack: invalid hexdigest %q", hexdigest)
	}
	var id [32]byte
	hex.Decode(id[:], []byte(hexdigest))
	encoded := bufferPool.Get().(*bytes.Buffer)
	defer bufferPool.Put(encoded)
	encoded.Reset()
	codec := encodeObject(encoded, content, p.store.compression)
	res := PutResult{StoredSize: int64(encoded.Len()), Codec: codec}

	p.mu.Lock()
	if p.err != nil {
		p.mu.Unlock()
		return PutResult{}, p.err
	}
	if p.seen[id] {
		p.mu.Unlock()
		return res, nil
	}
	if p.cur == nil {
		p.cur = p.store.openPack(p.ctx)
	}
	cur := p.cur
	if _, err := cur.pw.Write(encoded.Bytes()); err != nil {
		p.err = fmt.Errorf("store pack: %w", err)
		p.cur = nil
		p.mu.Unlock()
		return PutResult{}, p.err
	}
	p.seen[id] = true
	cur.entries = append(cur.entries, PackEntry{Hexdigest: id, Offset: uint32(cur.size), Length: uint32(encoded.Len()), DecodedSize: uint32(len(content))})
	cur.size += int64(encoded.Len())
	full := cur.size >= p.target
	if full {
		p.cur = nil
	}
	p.mu.Unlock()
	if full {
		if err := p.store.completePack(ctx, cur); err != nil {
			p.fail(err)
			return PutResult{}, err
		}
	}
	return res, nil
}

func (p *Packer) fail(err error) {
	p.mu.Lock()
	if p.err == nil {
		p.err = err
	}
	p.mu.Unlock()
}

// Flush completes the current pack and stores its index.
func (p *Packer) Flush(ctx context.Context) error {
	p.mu.Lock()
	cur, err := p.cur, p.err
	p.cur = nil
	p.mu.Unlock()
	if err != nil {
		return err
	}
	if cur == nil {
		return nil
	}
	return p.store.completePack(ctx, cur)
}

// Abort gives up the current pack: its upload fails and leaves nothing.
func (p *Packer) Abort() {
	p.mu.Lock()
	cur := p.cur
	p.cur = nil
	if p.err == nil {
		p.err = errors.New("packer aborted")
	}
	p.mu.Unlock()
	if cur != nil {
		cur.pw.CloseWithError(errors.New("pack aborted"))
		<-cur.stored
	}
}

// openPack starts streaming a new pack to the backend.
func (s *Store) openPack(ctx context.Context) *openPack {
	op := &openPack{stored: make(chan error, 1)}
	if _, err := rand.Read(op.id[:]); err != nil {
		panic(err) // crypto/rand does not fail on Linux
	}
	pr, pw := io.Pipe()
	op.pw = pw
	go func() {
		err := s.backend.Put(ctx, packKey(op.id), pr, -1)
		// Unblocks writers if the backend stopped early, telling them why.
		cause := err
		if cause == nil {
			cause = errors.New("pack upload ended before the pack was complete")
		}
		pr.CloseWithError(cause)
		op.stored <- err
	}()
	return op
}

// completePack writes the trailer and footer, waits until the pack is
// stored, then stores its index and makes its objects visible.
func (s *Store) completePack(ctx context.Context, op *openPack) error {
	var trailer bytes.Buffer
	encodeEntries(&trailer, op.entries)
	compressed := metadataZstd().EncodeAll(trailer.Bytes(), nil)
	var footer [8]byte
	binary.BigEndian.PutUint32(footer[:4], uint32(len(compressed)))
	copy(footer[4:], packFooterMagic)
	_, err := op.pw.Write(append(compressed, footer[:]...))
	if err != nil {
		op.pw.CloseWithError(err)
	} else {
		op.pw.Close()
	}
	if perr := <-op.stored; perr != nil || err != nil {
		return fmt.Errorf("store pack: %w", errors.Join(perr, err))
	}
	idx := encodeIndex([]packEntries{{id: op.id, entries: op.entries}})
	key := indexKey(blake3.Sum256(idx))
	if err := s.backend.Put(ctx, key, bytes.NewReader(idx), int64(len(idx))); err != nil {
		return fmt.Errorf("store pack index: %w", err)
	}
	s.cacheIndexFile(key, idx)
	s.index.mu.Lock()
	if s.index.entries == nil {
		s.index.entries = make(map[[32]byte]packLocation)
		s.index.packNum = make(map[[32]byte]uint32)
	}
	s.index.add(op.id, op.entries)
	s.index.mu.Unlock()
	s.logger.Debug("stored pack", "pack", hex.EncodeToString(op.id[:]), "objects", len(op.entries), "bytes", op.size)
	return nil
}

// lookupPacked returns where a packed object lives.
func (s *Store) lookupPacked(ctx context.Context, hexdigest string) (string, packLocation, bool, error) {
	ix, err := s.loadIndex(ctx)
	if err != nil {
		return "", packLocation{}, false, err
	}
	var id [32]byte
	if _, err := hex.Decode(id[:], []byte(hexdigest)); err != nil {
		return "", packLocation{}, false, fmt.Errorf("invalid hexdigest %q", hexdigest)
	}
	ix.mu.RLock()
	loc, ok := ix.entries[id]
	var pack [32]byte
	if ok {
		pack = ix.packs[loc.pack]
	}
	ix.mu.RUnlock()
	return packKey(pack), loc, ok, nil
}

// Location says where an object is stored: its own key, or a range of a
// pack.
type Location struct {
	Key    string
	Packed bool
	Offset int64
	Length int64
}

// Locate returns where the object hexdigest is stored, or ErrNotFound.
func (s *Store) Locate(ctx context.Context, hexdigest string) (Location, error) {
	if !snapshot.ValidHexdigest(hexdigest) {
		return Location{}, fmt.Errorf("locate: invalid hexdigest %q", hexdigest)
	}
	pack, loc, packed, err := s.lookupPacked(ctx, hexdigest)
	if err != nil {
		return Location{}, err
	}
	if packed {
		return Location{Key: pack, Packed: true, Offset: int64(loc.offset), Length: int64(loc.length)}, nil
	}
	info, err := s.backend.Stat(ctx, ObjectKey(hexdigest))
	if err != nil {
		return Location{}, fmt.Errorf("object %s: %w", hexdigest, err)
	}
	return Location{Key: info.Key, Length: info.Size}, nil
}

// ReadPackTrailer reads the entry list a pack carries at its end, for
// rebuilding indexes and verifying packs.
func (s *Store) ReadPackTrailer(ctx context.Context, key string) ([]PackEntry, error) {
	info, err := s.backend.Stat(ctx, key)
	if err != nil {
		return nil, err
	}
	if info.Size < 8 {
		return nil, fmt.Errorf("pack %s: too short", key)
	}
	rc, err := s.backend.GetRange(ctx, key, info.Size-8, 8)
	if err != nil {
		return nil, err
	}
	footer, err := io.ReadAll(rc)
	rc.Close()
	if err != nil {
		return nil, err
	}
	if len(footer) != 8 || string(footer[4:]) != packFooterMagic {
		return nil, fmt.Errorf("pack %s: no pack footer", key)
	}
	n := int64(binary.BigEndian.Uint32(footer[:4]))
	if n > info.Size-8 {
		return nil, fmt.Errorf("pack %s: trailer longer than the pack", key)
	}
	rc, err = s.backend.GetRange(ctx, key, info.Size-8-n, n)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	compressed, err := io.ReadAll(rc)
	if err != nil {
		return nil, err
	}
	dec := decoderPool.Get().(*zstd.Decoder)
	defer decoderPool.Put(dec)
	if err := dec.Reset(bytes.NewReader(compressed)); err != nil {
		return nil, err
	}
	defer dec.Reset(nil)
	entries, err := decodeEntries(bufio.NewReader(io.LimitReader(dec, maxIndexFileSize)))
	if err != nil {
		return nil, fmt.Errorf("pack %s: trailer: %w", key, err)
	}
	return entries, nil
}
