package hashstore

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"slices"
	"sort"
	"sync"

	"github.com/deltabackup/deltabackup/snapshot/digest"
)

// entryTable maps object ids to their place in a pack in memory that
// does not grow with the repository: sorted runs of entries searched by
// binary search, plus a small map of the newest ones. When the map fills
// it becomes a run, and runs of similar length are merged, so there are
// O(log n) runs. Runs of spillEntries entries or more are written to an
// unlinked temporary file and read with pread; in memory each keeps only
// a Bloom filter (about 1.25 bytes per entry, so most lookups of an absent
// id read nothing) and the first id of every block (0.25 bytes per
// entry). A million packed objects take some 2 MB instead of the 100 MB
// of a Go map; the files live in the page cache, not in the process.
type entryTable struct {
	// spillDir is where run files are created ("" for os.TempDir()).
	spillDir string
	runs     []*tableRun // larger first
	recent   map[digest.Digest]packLocation
}

type tableEntry struct {
	id  digest.Digest
	loc packLocation
}

const (
	// recentLimit is how many entries the map holds before it becomes a run.
	recentLimit = 1 << 14
	// spillEntries is the length from which a run lives in a file.
	spillEntries = 1 << 17
	// entrySize is an entry on disk: id, pack number, offset, length.
	entrySize = digest.Size + 12
	// blockEntries is how many entries one read of a run file covers.
	blockEntries = 128
	// bloomBitsPerEntry and bloomProbes give about 1% false positives.
	bloomBitsPerEntry = 10
	bloomProbes       = 7
)

// tableRun is a sorted run, held either in mem or in file.
type tableRun struct {
	n    int
	mem  []tableEntry
	file *os.File
	// fence holds the first id of each block of the file.
	fence []digest.Digest
	bloom []uint64
}

func (t *entryTable) get(id digest.Digest) (packLocation, bool, error) {
	if loc, ok := t.recent[id]; ok {
		return loc, true, nil
	}
	for _, run := range t.runs {
		loc, ok, err := run.get(id)
		if ok || err != nil {
			return loc, ok, err
		}
	}
	return packLocation{}, false, nil
}

// add records id at loc. An id already in a run is not looked up (that
// lookup was most of the cost of loading a large index): the copy in the
// newer run is dropped when the two runs are merged, and until then
// either location serves, since both packs hold the content.
func (t *entryTable) add(id digest.Digest, loc packLocation) error {
	if t.recent == nil {
		t.recent = make(map[digest.Digest]packLocation)
	}
	if _, ok := t.recent[id]; ok {
		return nil
	}
	t.recent[id] = loc
	if len(t.recent) >= recentLimit {
		return t.flushRecent()
	}
	return nil
}

// recentRun is the map as a sorted run.
func (t *entryTable) recentRun() *tableRun {
	run := make([]tableEntry, 0, len(t.recent))
	for id, loc := range t.recent {
		run = append(run, tableEntry{id, loc})
	}
	slices.SortFunc(run, func(a, b tableEntry) int { return digest.Compare(a.id, b.id) })
	return &tableRun{n: len(run), mem: run}
}

// addBatch adds entries in any order, later ones newer, as one run: the
// way to load index files, with no map in between and one sort by the
// ids' leading bytes, which are uniform.
func (t *entryTable) addBatch(batch []tableEntry) error {
	if len(batch) == 0 {
		return nil
	}
	run := radixSortEntries(batch)
	// Equal ids are adjacent, the older first (the sort is stable).
	run = slices.CompactFunc(run, func(a, b tableEntry) bool { return a.id == b.id })
	t.runs = append(t.runs, &tableRun{n: len(run), mem: run})
	return t.mergeRuns()
}

// radixSortEntries returns the entries sorted by id: stably by the first
// two bytes, then each (short) bucket by insertion sort.
func radixSortEntries(in []tableEntry) []tableEntry {
	var start [1<<16 + 1]int
	for i := range in {
		start[int(in[i].id[0])<<8|int(in[i].id[1])+1]++
	}
	for i := 1; i < len(start); i++ {
		start[i] += start[i-1]
	}
	out := make([]tableEntry, len(in))
	next := start
	for i := range in {
		k := int(in[i].id[0])<<8 | int(in[i].id[1])
		out[next[k]] = in[i]
		next[k]++
	}
	for k := range 1 << 16 {
		bucket := out[start[k]:start[k+1]]
		for i := 1; i < len(bucket); i++ {
			for j := i; j > 0 && digest.Compare(bucket[j-1].id, bucket[j].id) > 0; j-- {
				bucket[j-1], bucket[j] = bucket[j], bucket[j-1]
			}
		}
	}
	return out
}

// flushRecent turns the map into a run and merges runs of similar length.
func (t *entryTable) flushRecent() error {
	t.runs = append(t.runs, t.recentRun())
	clear(t.recent)
	return t.mergeRuns()
}

// mergeRuns merges the newest runs while the newest is at least half as
// long as the one before it, so there are O(log n) runs.
func (t *entryTable) mergeRuns() error {
	for len(t.runs) >= 2 {
		a, b := t.runs[len(t.runs)-2], t.runs[len(t.runs)-1]
		if b.n*2 < a.n {
			break
		}
		merged, err := t.merge(a, b)
		if err != nil {
			return err
		}
		a.close()
		b.close()
		t.runs = append(t.runs[:len(t.runs)-2], merged)
	}
	return nil
}

// merge merges two runs into one, in a file when it is long enough and a
// file can be made (else in memory: the table stays correct, only larger).
func (t *entryTable) merge(a, b *tableRun) (*tableRun, error) {
	n := a.n + b.n
	ia, ib := a.iter(), b.iter()
	next := func() (tableEntry, bool, error) {
		ea, oka, err := ia.peek()
		if err != nil {
			return tableEntry{}, false, err
		}
		eb, okb, err := ib.peek()
		if err != nil {
			return tableEntry{}, false, err
		}
		switch {
		case !oka && !okb:
			return tableEntry{}, false, nil
		case !okb:
			ia.advance()
			return ea, true, nil
		case !oka:
			ib.advance()
			return eb, true, nil
		}
		switch c := digest.Compare(ea.id, eb.id); {
		case c == 0: // the same id in both runs: keep the older entry
			ia.advance()
			ib.advance()
			return ea, true, nil
		case c < 0:
			ia.advance()
			return ea, true, nil
		default:
			ib.advance()
			return eb, true, nil
		}
	}
	if n >= spillEntries {
		if f, err := t.createSpillFile(); err == nil {
			return writeRun(f, n, next)
		}
	}
	out := make([]tableEntry, 0, n)
	for {
		e, ok, err := next()
		if err != nil {
			return nil, err
		}
		if !ok {
			return &tableRun{n: len(out), mem: out}, nil
		}
		out = append(out, e)
	}
}

// createSpillFile makes a temporary file that is gone from the directory
// at once, so nothing is left behind whatever happens to the process.
func (t *entryTable) createSpillFile() (*os.File, error) {
	dir := t.spillDir
	if dir == "" {
		dir = os.TempDir()
	} else if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	f, err := os.CreateTemp(dir, "deltabackup-index-*")
	if err != nil {
		return nil, err
	}
	if err := os.Remove(f.Name()); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// writeRun writes the n entries next yields, in order, to f.
func writeRun(f *os.File, n int, next func() (tableEntry, bool, error)) (*tableRun, error) {
	run := &tableRun{file: f, bloom: make([]uint64, (n*bloomBitsPerEntry+63)/64)}
	w := bufio.NewWriterSize(f, 1<<16)
	var rec [entrySize]byte
	for {
		e, ok, err := next()
		if err != nil {
			f.Close()
			return nil, err
		}
		if !ok {
			break
		}
		if run.n%blockEntries == 0 {
			run.fence = append(run.fence, e.id)
		}
		run.bloomAdd(e.id)
		encodeEntry(rec[:], e)
		if _, err := w.Write(rec[:]); err != nil {
			f.Close()
			return nil, fmt.Errorf("index spill file: %w", err)
		}
		run.n++
	}
	if err := w.Flush(); err != nil {
		f.Close()
		return nil, fmt.Errorf("index spill file: %w", err)
	}
	return run, nil
}

// bloomBit gives the probe positions of id: ids are BLAKE3 digests, so
// their bytes are already uniform and serve as the hash values.
func (r *tableRun) bloomBit(id digest.Digest, i int) uint64 {
	h1 := binary.LittleEndian.Uint64(id[0:8])
	h2 := binary.LittleEndian.Uint64(id[8:16]) | 1
	return (h1 + uint64(i)*h2) % uint64(len(r.bloom)*64)
}

func (r *tableRun) bloomAdd(id digest.Digest) {
	for i := range bloomProbes {
		b := r.bloomBit(id, i)
		r.bloom[b/64] |= 1 << (b % 64)
	}
}

func (r *tableRun) mayHold(id digest.Digest) bool {
	for i := range bloomProbes {
		b := r.bloomBit(id, i)
		if r.bloom[b/64]&(1<<(b%64)) == 0 {
			return false
		}
	}
	return true
}

var blockPool = sync.Pool{New: func() any { b := make([]byte, blockEntries*entrySize); return &b }}

func (r *tableRun) get(id digest.Digest) (packLocation, bool, error) {
	if r.file == nil {
		i, ok := slices.BinarySearchFunc(r.mem, id, func(e tableEntry, id digest.Digest) int { return digest.Compare(e.id, id) })
		if !ok {
			return packLocation{}, false, nil
		}
		return r.mem[i].loc, true, nil
	}
	if !r.mayHold(id) {
		return packLocation{}, false, nil
	}
	// The block whose first id is the last one <= id.
	blk, found := slices.BinarySearchFunc(r.fence, id, digest.Compare)
	if !found {
		if blk == 0 {
			return packLocation{}, false, nil
		}
		blk--
	}
	bp := blockPool.Get().(*[]byte)
	defer blockPool.Put(bp)
	count := min(blockEntries, r.n-blk*blockEntries)
	buf := (*bp)[:count*entrySize]
	if _, err := r.file.ReadAt(buf, int64(blk)*blockEntries*entrySize); err != nil {
		return packLocation{}, false, fmt.Errorf("index spill file: %w", err)
	}
	i := sort.Search(count, func(i int) bool {
		return bytes.Compare(buf[i*entrySize:i*entrySize+digest.Size], id[:]) >= 0
	})
	if i == count || !bytes.Equal(buf[i*entrySize:i*entrySize+digest.Size], id[:]) {
		return packLocation{}, false, nil
	}
	return decodeEntry(buf[i*entrySize:]).loc, true, nil
}

// encodeEntry and decodeEntry convert an entry to and from its entrySize
// bytes in a run file.
func encodeEntry(rec []byte, e tableEntry) {
	copy(rec, e.id[:])
	binary.LittleEndian.PutUint32(rec[digest.Size:], e.loc.pack)
	binary.LittleEndian.PutUint32(rec[digest.Size+4:], e.loc.offset)
	binary.LittleEndian.PutUint32(rec[digest.Size+8:], e.loc.length)
}

func decodeEntry(rec []byte) tableEntry {
	var e tableEntry
	copy(e.id[:], rec)
	e.loc = packLocation{
		pack:   binary.LittleEndian.Uint32(rec[digest.Size:]),
		offset: binary.LittleEndian.Uint32(rec[digest.Size+4:]),
		length: binary.LittleEndian.Uint32(rec[digest.Size+8:]),
	}
	return e
}

func (r *tableRun) close() {
	if r.file != nil {
		r.file.Close()
	}
}

// runIter reads a run in order, a file run through a buffer.
type runIter struct {
	run  *tableRun
	i    int
	r    *bufio.Reader
	cur  tableEntry
	have bool
}

func (r *tableRun) iter() *runIter {
	it := &runIter{run: r}
	if r.file != nil {
		it.r = bufio.NewReaderSize(io.NewSectionReader(r.file, 0, int64(r.n)*entrySize), 1<<16)
	}
	return it
}

func (it *runIter) peek() (tableEntry, bool, error) {
	if it.have {
		return it.cur, true, nil
	}
	if it.i >= it.run.n {
		return tableEntry{}, false, nil
	}
	if it.r == nil {
		it.cur = it.run.mem[it.i]
	} else {
		var rec [entrySize]byte
		if _, err := io.ReadFull(it.r, rec[:]); err != nil {
			return tableEntry{}, false, fmt.Errorf("index spill file: %w", err)
		}
		it.cur = decodeEntry(rec[:])
	}
	it.have = true
	return it.cur, true, nil
}

func (it *runIter) advance() {
	it.have = false
	it.i++
}

// all calls fn once for every id, in order, with its oldest location: the
// runs and the map are merged as they are read, so an id added twice is
// given once.
func (t *entryTable) all(fn func(digest.Digest, packLocation)) error {
	its := make([]*runIter, 0, len(t.runs)+1)
	for _, run := range t.runs { // oldest first
		its = append(its, run.iter())
	}
	if len(t.recent) > 0 {
		its = append(its, t.recentRun().iter())
	}
	for {
		var best tableEntry
		found := false
		for _, it := range its {
			e, ok, err := it.peek()
			if err != nil {
				return err
			}
			if ok && (!found || digest.Compare(e.id, best.id) < 0) {
				best, found = e, true
			}
		}
		if !found {
			return nil
		}
		for _, it := range its {
			if e, ok, _ := it.peek(); ok && e.id == best.id {
				it.advance()
			}
		}
		fn(best.id, best.loc)
	}
}

// reset empties the table and closes its files.
func (t *entryTable) reset() {
	for _, r := range t.runs {
		r.close()
	}
	*t = entryTable{spillDir: t.spillDir}
}
