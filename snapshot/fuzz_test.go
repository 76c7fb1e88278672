package snapshot

import (
	"bytes"
	"encoding/binary"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// FuzzDecodeTree: no input crashes the decoder or allocates beyond what
// it holds, and whatever decodes encodes back to the same bytes (a tree's
// encoding is unique, so its id is).
func FuzzDecodeTree(f *testing.F) {
	seed, _ := sampleTree().Encode()
	f.Add(seed)
	empty, _ := (&Tree{}).Encode()
	f.Add(empty)
	f.Add([]byte(treeMagic + "\x01"))
	f.Fuzz(func(t *testing.T, data []byte) {
		tr, err := DecodeTree(data)
		if err != nil {
			return
		}
		again, err := tr.Encode()
		if err != nil {
			t.Fatalf("a decoded tree does not encode: %v", err)
		}
		if !bytes.Equal(again, data) {
			t.Fatalf("decoded and encoded again, %d bytes became %d", len(data), len(again))
		}
	})
}

// FuzzDirCache: a damaged directory cache is refused or read, never a
// crash, and a record read from it carries a tree matching its id.
func FuzzDirCache(f *testing.F) {
	dir := f.TempDir()
	p := filepath.Join(dir, "c")
	c, _ := OpenDirCache(p)
	c.begin("fp")
	enc, _ := sampleTree().Encode()
	c.put(&dirRecord{path: "a/b", tree: digestOf(enc), encoded: enc, extras: []entryExtra{{1, 2}}}, nil)
	c.put(&dirRecord{path: ""}, nil)
	c.Commit("gen")
	seed, _ := os.ReadFile(p)
	f.Add(seed)
	// One file, rewritten for every input: a worker runs inputs one at a
	// time, and a directory made and removed per input made minimizing
	// an input take minutes.
	input := filepath.Join(dir, "input")
	f.Fuzz(func(t *testing.T, data []byte) {
		p := input
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		c, err := OpenDirCache(p)
		if err != nil {
			return
		}
		defer c.Close()
		// A walk looks up only the directories the source has; checking
		// every one of thousands of index entries that all point at one
		// large record would only make each run slow.
		looked := 0
		for rel := range c.index {
			if looked++; looked > 64 {
				break
			}
			rec, err := c.lookup(rel)
			if err == nil && rec != nil && digestOf(rec.encoded) != rec.tree {
				t.Fatal("a record's tree does not match its id")
			}
		}
	})
}

// TestDirCacheRecordCannotClaimMoreThanTheFile: a record whose tree length
// is larger than the rest of the file is refused before the buffer is
// made (a fuzzed cache of 200 bytes made each lookup allocate 1 GiB).
func TestDirCacheRecordCannotClaimMoreThanTheFile(t *testing.T) {
	p := filepath.Join(t.TempDir(), "c")
	c, _ := OpenDirCache(p)
	c.begin("fp")
	enc, _ := sampleTree().Encode()
	c.put(&dirRecord{path: "a", tree: digestOf(enc), encoded: enc}, nil)
	if err := c.Commit("gen"); err != nil {
		t.Fatal(err)
	}
	data, _ := os.ReadFile(p)
	// The tree's uvarint length comes right before its bytes.
	length := binary.AppendUvarint(nil, uint64(len(enc)))
	at := bytes.Index(data, enc) - len(length)
	if at < 0 || !bytes.Equal(data[at:at+len(length)], length) {
		t.Fatalf("sample record layout not as expected (tree of %d bytes)", len(enc))
	}
	claim := binary.AppendUvarint(nil, 1<<29)
	hostile := append(append(append([]byte{}, data[:at]...), claim...), data[at+len(length):]...)
	// Keep the footer's index offset pointing where the index now is.
	off := binary.LittleEndian.Uint64(hostile[len(hostile)-12:])
	binary.LittleEndian.PutUint64(hostile[len(hostile)-12:], off+uint64(len(claim)-len(length)))
	os.WriteFile(p, hostile, 0o600)
	c2, err := OpenDirCache(p)
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	_, err = c2.lookup("a")
	runtime.ReadMemStats(&after)
	if err == nil || !strings.Contains(err.Error(), "tree length") {
		t.Fatalf("a record claiming a 512 MiB tree in a %d-byte file: %v", len(hostile), err)
	}
	if grown := after.TotalAlloc - before.TotalAlloc; grown > 1<<20 {
		t.Fatalf("the lookup allocated %d bytes", grown)
	}
}
