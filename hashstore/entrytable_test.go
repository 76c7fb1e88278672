package hashstore

import (
	"encoding/binary"
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

// fillTable adds n entries, some of them twice at another place (which
// must be ignored: the first place recorded wins, as with the map this
// table replaced).
func fillTable(t *testing.T, tab *entryTable, n int) {
	t.Helper()
	for i := range n {
		if err := tab.add(tableID(i), packLocation{pack: uint32(i % 7), offset: uint32(i), length: uint32(i + 1)}); err != nil {
			t.Fatal(err)
		}
		if i%1000 == 0 {
			if err := tab.add(tableID(i), packLocation{pack: 99, offset: 1, length: 1}); err != nil {
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
	if tab.len() != n {
		t.Fatalf("len = %d, want %d", tab.len(), n)
	}
	for i := range n {
		loc, ok, err := tab.get(tableID(i))
		if err != nil || !ok || loc.offset != uint32(i) || loc.length != uint32(i+1) || loc.pack != uint32(i%7) {
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
