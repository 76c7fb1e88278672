package hashstore

import (
	"encoding/binary"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/deltabackup/deltabackup/snapshot/digest"
)

func tableID(i int) digest.Digest {
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], uint64(i))
	return digest.Of(b[:])
}

// fillTable adds n entries, some of them again later at another place
// (as when two packs hold the same content): either place may be given
// until their runs merge, but every id counts once.
func fillTable(t *testing.T, tab *entryTable, n int) {
	t.Helper()
	for i := range n {
		if err := tab.add(tableID(i), packLocation{pack: uint32(i % 7), offset: uint32(i), length: uint32(i + 1)}); err != nil {
			t.Fatal(err)
		}
		if i%1000 == 0 {
			if err := tab.add(tableID(i/2), packLocation{pack: 99, offset: uint32(i / 2), length: uint32(i/2 + 1)}); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// checkTable looks every entry up, and as many absent ids (so that the
// Bloom filters' false positives send some lookups of absent ids to the
// files), and iterates over all entries.
func checkTable(t *testing.T, tab *entryTable, n int) {
	t.Helper()
	for i := range n {
		loc, ok, err := tab.get(tableID(i))
		added := loc.pack == uint32(i%7) || i%500 == 0 && loc.pack == 99
		if err != nil || !ok || loc.offset != uint32(i) || loc.length != uint32(i+1) || !added {
			t.Fatalf("entry %d: got %+v, %v, %v", i, loc, ok, err)
		}
		if _, ok, err := tab.get(tableID(n + i)); ok || err != nil {
			t.Fatalf("id %d, never added, found: %v, %v", n+i, ok, err)
		}
	}
	seen := map[digest.Digest]bool{}
	err := tab.all(func(d digest.Digest, _ packLocation) {
		if seen[d] {
			t.Fatalf("all gave %s twice", d)
		}
		seen[d] = true
	})
	if err != nil || len(seen) != n {
		t.Fatalf("all gave %d entries (%v), want %d", len(seen), err, n)
	}
}

// TestEntryTableFindsEveryEntry fills the table so that it holds runs in
// files, runs in memory and a map at once.
func TestEntryTableFindsEveryEntry(t *testing.T) {
	const n = spillEntries*2 + recentLimit*3 + 123
	tab := entryTable{spillDir: t.TempDir()}
	defer tab.reset()
	fillTable(t, &tab, n)
	var files, mems int
	for _, r := range tab.runs {
		if r.file != nil {
			files++
		} else {
			mems++
		}
	}
	if files == 0 || mems == 0 || len(tab.recent) == 0 {
		t.Fatalf("want runs in files and in memory and a non-empty map, got %d, %d and %d", files, mems, len(tab.recent))
	}
	if left, _ := os.ReadDir(tab.spillDir); len(left) != 0 {
		t.Fatalf("spill files are visible in their directory: %v", left)
	}
	checkTable(t, &tab, n)
}

// TestEntryTableWithoutSpillDirStaysInMemory: when no file can be made
// the table keeps everything in memory and stays right.
func TestEntryTableWithoutSpillDirStaysInMemory(t *testing.T) {
	const n = spillEntries + recentLimit
	blocker := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(blocker, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	tab := entryTable{spillDir: filepath.Join(blocker, "sub")}
	fillTable(t, &tab, n)
	for _, r := range tab.runs {
		if r.file != nil {
			t.Fatal("a run went to a file under a regular file")
		}
	}
	checkTable(t, &tab, n)
}

// TestEntryTableLoadsBatches adds entries as index files are loaded:
// unsorted batches in which a later entry of an id already seen in the
// same batch loses to the first, and ids that a later batch repeats.
func TestEntryTableLoadsBatches(t *testing.T) {
	const n = spillEntries*2 + 1000
	tab := entryTable{spillDir: t.TempDir()}
	defer tab.reset()
	r := rand.New(rand.NewPCG(1, 2))
	order := r.Perm(n)
	var batch []tableEntry
	for k, i := range order {
		batch = append(batch, tableEntry{tableID(i), packLocation{pack: uint32(i % 7), offset: uint32(i), length: uint32(i + 1)}})
		if i%500 == 0 { // the same content in a newer pack of the same batch
			batch = append(batch, tableEntry{tableID(i), packLocation{pack: 99}})
		}
		if len(batch) >= spillEntries || k == n-1 {
			if err := tab.addBatch(batch); err != nil {
				t.Fatal(err)
			}
			batch = batch[:0]
		}
	}
	// An id that a later batch repeats, as after a pack was written twice.
	if err := tab.addBatch([]tableEntry{{tableID(order[0]), packLocation{pack: uint32(order[0] % 7), offset: uint32(order[0]), length: uint32(order[0] + 1)}}}); err != nil {
		t.Fatal(err)
	}
	if len(tab.runs) < 2 || tab.runs[0].file == nil {
		t.Fatalf("want a spilled run among several, got %d runs", len(tab.runs))
	}
	for i := range n {
		loc, ok, err := tab.get(tableID(i))
		if err != nil || !ok || loc != (packLocation{pack: uint32(i % 7), offset: uint32(i), length: uint32(i + 1)}) {
			t.Fatalf("entry %d: got %+v, %v, %v", i, loc, ok, err)
		}
	}
	count := 0
	if err := tab.all(func(digest.Digest, packLocation) { count++ }); err != nil || count != n {
		t.Fatalf("all gave %d entries (%v), want %d", count, err, n)
	}
}
