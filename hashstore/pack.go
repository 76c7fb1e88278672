package hashstore

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"sort"
	"sync"

	"github.com/klauspost/compress/zstd"

	"github.com/deltabackup/deltabackup/snapshot/digest"
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

// MaxPackEntries is the most objects a pack holds, whatever their size.
// Tiny contents compress to a few dozen bytes, so without it a 16 MiB
// pack of them would hold half a million objects, and a backup would
// keep all their entries (and the pack's index, encoded) in memory until
// the pack completes.
const MaxPackEntries = 1 << 15

// PackEntry locates one object inside a pack.
type PackEntry struct {
	ID          digest.Digest
	Offset      uint32
	Length      uint32 // stored bytes: header and payload
	DecodedSize uint32
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
	packs   []digest.Digest
	packNum map[digest.Digest]uint32
	entries entryTable
	// doomedEntries are the entries of packs a pending deletion names:
	// readers fall back to them, writers never see them.
	doomedEntries entryTable
}

func (ix *packIndex) add(pack digest.Digest, entries []PackEntry) error {
	n := ix.packNumber(pack)
	for _, e := range entries {
		if err := ix.entries.add(e.ID, packLocation{pack: n, offset: e.Offset, length: e.Length}); err != nil {
			return err
		}
	}
	return nil
}

// get finds id among the live packs and, unless forWrite, the doomed
// ones. Called with ix.mu held.
func (ix *packIndex) get(id digest.Digest, forWrite bool) (packLocation, bool, error) {
	loc, ok, err := ix.entries.get(id)
	if ok || err != nil || forWrite {
		return loc, ok, err
	}
	return ix.doomedEntries.get(id)
}

// packNumber is the number standing for pack in table entries.
func (ix *packIndex) packNumber(pack digest.Digest) uint32 {
	n, ok := ix.packNum[pack]
	if !ok {
		n = uint32(len(ix.packs))
		ix.packs = append(ix.packs, pack)
		ix.packNum[pack] = n
	}
	return n
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
	doomedPacks, _, err := s.doomedSets(ctx)
	if err != nil {
		return nil, err
	}
	ix.mu.Lock()
	defer ix.mu.Unlock()
	if ix.loaded {
		return ix, nil
	}
	if ix.packNum == nil {
		ix.packNum = make(map[digest.Digest]uint32)
	}
	keys, err := s.indexKeys(ctx)
	if err != nil {
		return nil, err
	}
	var doomedBatch []tableEntry
	// Entries go to the table in batches of a spilled run's length: long
	// enough to sort once, short enough to keep memory flat. (The capacity
	// is reserved, not touched: pages a small repository does not fill are
	// never faulted in.)
	batch := make([]tableEntry, 0, spillEntries+MaxPackEntries)
	for _, key := range keys {
		packs, err := s.readIndexFile(ctx, key)
		if err != nil {
			return nil, err
		}
		for _, p := range packs {
			n := ix.packNumber(p.id)
			if doomedPacks[p.id] {
				for _, e := range p.entries {
					doomedBatch = append(doomedBatch, tableEntry{e.ID, packLocation{pack: n, offset: e.Offset, length: e.Length}})
				}
				continue
			}
			for _, e := range p.entries {
				batch = append(batch, tableEntry{e.ID, packLocation{pack: n, offset: e.Offset, length: e.Length}})
			}
			if len(batch) >= spillEntries {
				if err := ix.entries.addBatch(batch); err != nil {
					return nil, err
				}
				batch = batch[:0]
			}
		}
	}
	if err := ix.entries.addBatch(batch); err != nil {
		return nil, err
	}
	if err := ix.doomedEntries.addBatch(doomedBatch); err != nil {
		return nil, err
	}
	ix.loaded = true
	return ix, nil
}

// indexKeys lists the index files, in key order.
func (s *Store) indexKeys(ctx context.Context) ([]string, error) {
	var keys []string
	err := s.backend.List(ctx, indexPrefix, func(info Info) error {
		keys = append(keys, info.Key)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list pack indexes: %w", err)
	}
	sort.Strings(keys)
	return keys, nil
}

type packEntries struct {
	id      digest.Digest
	entries []PackEntry
}

// readIndexFile reads one index file (from the local cache when it is
// there), checked against its name.
func (s *Store) readIndexFile(ctx context.Context, key string) ([]packEntries, error) {
	id, ok := parseIndexKey(key)
	if !ok {
		return nil, fmt.Errorf("read index: %q is not an index key", key)
	}
	data := s.cachedIndexFile(id)
	if data == nil {
		rc, err := s.backend.Get(ctx, key)
		if err != nil {
			return nil, fmt.Errorf("read index %s: %w", id, err)
		}
		data, err = readAllSized(rc, maxIndexFileSize+1)
		rc.Close()
		if err != nil {
			return nil, fmt.Errorf("read index %s: %w", id, err)
		}
		if got := digest.Of(data); got != id {
			return nil, &CorruptObjectError{ID: id, Reason: "index file hashes to " + got.String()}
		}
		s.cacheIndexFile(id, data)
	}
	plain, err := s.seal.open(data, []byte(adIndex))
	if err != nil {
		return nil, &CorruptObjectError{ID: id, Reason: "index file does not authenticate: " + err.Error()}
	}
	packs, err := decodeIndex(plain)
	if err != nil {
		return nil, &CorruptObjectError{ID: id, Reason: "index file: " + err.Error()}
	}
	return packs, nil
}

// readAllSized reads r, at most limit bytes, into one allocation when r
// can tell its size (a local file), where io.ReadAll would grow its
// buffer a dozen times for an index file of a few megabytes.
func readAllSized(r io.Reader, limit int64) ([]byte, error) {
	if st, ok := r.(interface{ Stat() (fs.FileInfo, error) }); ok {
		if fi, err := st.Stat(); err == nil && fi.Size() < limit {
			buf := bytes.NewBuffer(make([]byte, 0, fi.Size()+bytes.MinRead))
			_, err := buf.ReadFrom(io.LimitReader(r, limit))
			return buf.Bytes(), err
		}
	}
	return io.ReadAll(io.LimitReader(r, limit))
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
		w.Write(e.ID[:])
		put(uint64(e.Offset))
		put(uint64(e.Length))
		put(uint64(e.DecodedSize))
	}
}

func decodeEntries(r *entryReader) ([]PackEntry, error) {
	n, err := r.uvarint()
	if err != nil {
		return nil, err
	}
	if n > maxEntriesPerPack {
		return nil, fmt.Errorf("%d entries in one pack is implausible", n)
	}
	// Every entry takes at least 35 bytes, which bounds what is reserved.
	entries := make([]PackEntry, 0, min(n, uint64(len(r.b)/(digest.Size+3))))
	var end uint64
	for range n {
		var e PackEntry
		if err := r.id(&e.ID); err != nil {
			return nil, err
		}
		var v [3]uint64
		for i := range v {
			if v[i], err = r.uvarint(); err != nil {
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

// entryReader reads index files and pack trailers from their bytes,
// decompressed whole: parsing a slice is several times faster than
// reading a decompressing stream byte by byte, and the decoder's memory
// limit (decoderPool) bounds what a hostile file can make it allocate.
type entryReader struct{ b []byte }

// decompressEntries decompresses an index file's body or a trailer.
func decompressEntries(compressed []byte) (*entryReader, error) {
	dec := decoderPool.Get().(*zstd.Decoder)
	defer decoderPool.Put(dec)
	plain, err := dec.DecodeAll(compressed, nil)
	if err != nil {
		return nil, err
	}
	return &entryReader{b: plain}, nil
}

func (r *entryReader) uvarint() (uint64, error) {
	v, n := binary.Uvarint(r.b)
	if n <= 0 {
		return 0, errors.New("truncated or overlong number")
	}
	r.b = r.b[n:]
	return v, nil
}

func (r *entryReader) id(id *digest.Digest) error {
	if len(r.b) < digest.Size {
		return io.ErrUnexpectedEOF
	}
	copy(id[:], r.b)
	r.b = r.b[digest.Size:]
	return nil
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

// decodeIndex parses an index file. Untrusted input: every count and
// offset is bounded before anything is allocated for it.
func decodeIndex(data []byte) ([]packEntries, error) {
	if len(data) < len(indexMagic)+1 || string(data[:4]) != indexMagic {
		return nil, errors.New("not an index file")
	}
	if data[4] != indexVersion {
		return nil, fmt.Errorf("index version %d is not supported", data[4])
	}
	r, err := decompressEntries(data[5:])
	if err != nil {
		return nil, err
	}
	n, err := r.uvarint()
	if err != nil {
		return nil, err
	}
	if n > 1<<20 {
		return nil, fmt.Errorf("%d packs in one index is implausible", n)
	}
	var packs []packEntries
	for range n {
		var p packEntries
		if err := r.id(&p.id); err != nil {
			return nil, err
		}
		if p.entries, err = decodeEntries(r); err != nil {
			return nil, err
		}
		packs = append(packs, p)
	}
	if len(r.b) != 0 {
		return nil, errors.New("trailing data after the last pack")
	}
	return packs, nil
}

// Packer collects small objects into packs. Each pack is streamed to the
// backend while it fills, so no pack is ever held in memory; when it
// reaches the target size it is completed, then its index is stored and its
// objects become visible. Add is safe for concurrent use. A Packer lives
// only inside Store.WithPacker.
type Packer struct {
	store  *Store
	ctx    context.Context // the uploads of packs run under it
	target int64

	mu  sync.Mutex
	cur *openPack
	err error
	// pending holds the objects of packs not yet in the store's index
	// (the open one, and ones being completed), so none is added twice
	// while callers cannot see it yet; an object leaves it when its
	// pack's index is stored. The Packer does not consult the index
	// itself: callers ask it first (HasPacked, Missing), and gc must be
	// able to write a live object again into a new pack while the old
	// one still holds it.
	pending map[digest.Digest]bool
}

// openPack is a pack whose bytes are being streamed to the backend.
type openPack struct {
	id      digest.Digest
	pw      *io.PipeWriter
	stored  chan error // result of the backend Put
	size    int64
	entries []PackEntry
}

// WithPacker runs fn with a Packer that completes packs at about target
// bytes (DefaultPackSize when target <= 0). When fn returns nil, the last
// pack is completed and its index stored before WithPacker returns; when
// fn fails, the pack under way is given up and leaves nothing. Either
// way every upload has ended when WithPacker returns.
func (s *Store) WithPacker(ctx context.Context, target int, fn func(ctx context.Context, p *Packer) error) error {
	if target <= 0 {
		target = DefaultPackSize
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	p := &Packer{store: s, ctx: ctx, target: int64(target), pending: map[digest.Digest]bool{}}
	if err := fn(ctx, p); err != nil {
		p.abort()
		return err
	}
	return p.flush(ctx)
}

// Add verifies that content hashes to id, encodes it and appends it to the
// current pack. The object is readable from the store once its pack is
// complete (at the latest when WithPacker returns).
func (p *Packer) Add(ctx context.Context, id digest.Digest, content []byte) (PutResult, error) {
	if got := digest.Of(content); got != id {
		return PutResult{}, mismatch(id, "content hashes to "+got.String())
	}
	return p.AddHashed(ctx, id, content)
}

// AddHashed is Add for content whose id the caller has just computed from
// these very bytes (a backup hashing a file it read into memory): hashing
// it a second time would only cost time.
func (p *Packer) AddHashed(ctx context.Context, id digest.Digest, content []byte) (PutResult, error) {
	if len(content) > 1<<30 {
		return PutResult{}, fmt.Errorf("pack %s: %d bytes is too large for a pack", id, len(content))
	}
	if id.IsZero() {
		return PutResult{}, errors.New("pack: no id")
	}
	encoded := bufferPool.Get().(*bytes.Buffer)
	defer bufferPool.Put(encoded)
	encoded.Reset()
	codec := encodeObject(encoded, content, p.store.compression)
	stored := p.store.seal.seal(encoded.Bytes(), objectAD(id))
	res := PutResult{StoredSize: int64(len(stored)), Codec: codec}

	p.mu.Lock()
	if p.err != nil {
		p.mu.Unlock()
		return PutResult{}, p.err
	}
	if p.pending[id] {
		p.mu.Unlock()
		return PutResult{Existed: true}, nil
	}
	if p.cur == nil {
		p.cur = p.store.openPack(p.ctx)
	}
	cur := p.cur
	if _, err := cur.pw.Write(stored); err != nil {
		p.err = fmt.Errorf("store pack: %w", err)
		p.cur = nil
		p.mu.Unlock()
		return PutResult{}, p.err
	}
	p.pending[id] = true
	cur.entries = append(cur.entries, PackEntry{ID: id, Offset: uint32(cur.size), Length: uint32(len(stored)), DecodedSize: uint32(len(content))})
	cur.size += int64(len(stored))
	full := cur.size >= p.target || len(cur.entries) >= MaxPackEntries
	if full {
		p.cur = nil
	}
	p.mu.Unlock()
	if full {
		if err := p.complete(ctx, cur); err != nil {
			return PutResult{}, err
		}
	}
	return res, nil
}

// complete completes a pack and drops its objects from pending, which the
// index now answers for.
func (p *Packer) complete(ctx context.Context, op *openPack) error {
	if err := p.store.completePack(ctx, op); err != nil {
		p.fail(err)
		return err
	}
	p.mu.Lock()
	for _, e := range op.entries {
		delete(p.pending, e.ID)
	}
	p.mu.Unlock()
	return nil
}

func (p *Packer) fail(err error) {
	p.mu.Lock()
	if p.err == nil {
		p.err = err
	}
	p.mu.Unlock()
}

// flush completes the current pack and stores its index.
func (p *Packer) flush(ctx context.Context) error {
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
	return p.complete(ctx, cur)
}

// abort gives up the current pack: its upload fails and leaves nothing.
func (p *Packer) abort() {
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
	compressed := s.seal.seal(metadataZstd().EncodeAll(trailer.Bytes(), nil), []byte(adTrailer))
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
	if err := s.putIndex(ctx, []packEntries{{id: op.id, entries: op.entries}}); err != nil {
		return err
	}
	s.index.mu.Lock()
	if s.index.packNum == nil {
		s.index.packNum = make(map[digest.Digest]uint32)
	}
	err = s.index.add(op.id, op.entries)
	s.index.mu.Unlock()
	if err != nil {
		return fmt.Errorf("pack %s stored, but not indexed in memory: %w", op.id, err)
	}
	s.logger.Debug("stored pack", "pack", op.id, "objects", len(op.entries), "bytes", op.size)
	return nil
}

// lookupPacked returns where a packed object lives. A reader (forWrite
// false) also finds objects only a doomed pack holds; a writer deciding
// whether to store an object takes those for absent.
func (s *Store) lookupPacked(ctx context.Context, id digest.Digest, forWrite bool) (string, packLocation, bool, error) {
	ix, err := s.loadIndex(ctx)
	if err != nil {
		return "", packLocation{}, false, err
	}
	ix.mu.RLock()
	loc, ok, err := ix.get(id, forWrite)
	var pack digest.Digest
	if ok {
		pack = ix.packs[loc.pack]
	}
	ix.mu.RUnlock()
	return packKey(pack), loc, ok, err
}

// Location says where an object is stored: its own key, or a range of a
// pack.
type Location struct {
	Key    string
	Packed bool
	Offset int64
	Length int64
}

// Locate returns where the object id is stored, or ErrNotFound.
func (s *Store) Locate(ctx context.Context, id digest.Digest) (Location, error) {
	pack, loc, packed, err := s.lookupPacked(ctx, id, false)
	if err != nil {
		return Location{}, err
	}
	if packed {
		return Location{Key: pack, Packed: true, Offset: int64(loc.offset), Length: int64(loc.length)}, nil
	}
	info, err := s.backend.Stat(ctx, s.ObjectKey(id))
	if err != nil {
		return Location{}, fmt.Errorf("object %s: %w", id, err)
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
	stored, err := io.ReadAll(rc)
	if err != nil {
		return nil, err
	}
	compressed, err := s.seal.open(stored, []byte(adTrailer))
	if err != nil {
		return nil, sealError("pack "+key+": trailer", err)
	}
	var entries []PackEntry
	r, err := decompressEntries(compressed)
	if err == nil {
		entries, err = decodeEntries(r)
	}
	if err == nil && len(r.b) != 0 {
		err = errors.New("trailing data after the entries")
	}
	if err != nil {
		return nil, fmt.Errorf("pack %s: trailer: %w", key, err)
	}
	return entries, nil
}
