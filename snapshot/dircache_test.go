package snapshot

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestDirCacheSkipsUnchangedFilesAndTrees(t *testing.T) {
	src := t.TempDir()
	files := map[string]string{"a": strings.Repeat("a", 1000), "b": strings.Repeat("b", 2000), "tiny": "t", "c/d": strings.Repeat("d", 300), "e/f/g": "g"}
	writeTree(t, src, files)
	ageFiles()
	cachePath := filepath.Join(t.TempDir(), "cache")
	sink := newMemSink()
	run := func() *Result {
		c, err := OpenDirCache(cachePath)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.Trusted = true
		opts := DefaultOptions()
		opts.Cache = c
		res := snap(t, src, sink, opts)
		if err := c.Commit("g1"); err != nil {
			t.Fatal(err)
		}
		return res
	}
	first := run()
	if first.Stats.HashedBytes != 3302 || first.Stats.TreesWritten != 4 {
		t.Fatalf("first run: %+v", first.Stats)
	}
	second := run()
	if second.Stats.HashedFiles != 0 || second.Stats.TreesWritten != 0 || second.Stats.TreesReused != 4 || second.Root != first.Root {
		t.Fatalf("no-change run: %+v", second.Stats)
	}
	// Same size and mtime, different content: ctime gives it away.
	p := filepath.Join(src, "c/d")
	os.WriteFile(p, []byte(strings.Repeat("D", 300)), 0o644)
	os.Chtimes(p, old, old)
	ageFiles()
	third := run()
	if third.Stats.HashedFiles != 1 || third.Stats.HashedBytes != 300 {
		t.Fatalf("after rewriting one file: %+v", third.Stats)
	}
	// Only c and the root are written again; e, e/f stay by id.
	if third.Stats.TreesWritten != 2 || third.Stats.TreesReused != 2 {
		t.Fatalf("after rewriting one file, trees written %d, reused %d; want 2 and 2", third.Stats.TreesWritten, third.Stats.TreesReused)
	}
	if nodes(t, sink, third.Root)["c/d"].ID != sum(strings.Repeat("D", 300)) {
		t.Fatal("the rewritten file kept its old id")
	}

	// A damaged cache file costs a re-read, never a wrong answer.
	data, _ := os.ReadFile(cachePath)
	data[len(data)/2] ^= 0xff
	os.WriteFile(cachePath, data, 0o600)
	if res := run(); res.Root != third.Root {
		t.Fatalf("with a damaged cache the root changed: %s, want %s", res.Root, third.Root)
	}
	os.WriteFile(cachePath, data[:len(data)-5], 0o600)
	if c, err := OpenDirCache(cachePath); err == nil || c.Len() != 0 {
		t.Fatalf("a truncated cache opened: %v", err)
	}
}

func TestRecentlyModifiedFilesAreReadAgain(t *testing.T) {
	src := t.TempDir()
	p := filepath.Join(src, "fresh")
	os.WriteFile(p, []byte(strings.Repeat("f", 500)), 0o644)
	cachePath := filepath.Join(t.TempDir(), "cache")
	sink := newMemSink()
	for i := range 2 {
		c, _ := OpenDirCache(cachePath)
		c.Trusted = true
		opts := DefaultOptions()
		opts.Cache = c
		res := snap(t, src, sink, opts)
		c.Commit("g")
		if res.Stats.HashedFiles != 1 {
			t.Fatalf("run %d read %d files: a file modified just now must not be trusted by status, since a second write in the same timestamp tick would go unnoticed", i, res.Stats.HashedFiles)
		}
		// Rewrite within the same second, keeping size and mtime.
		st, _ := os.Stat(p)
		os.WriteFile(p, []byte(strings.Repeat("g", 500)), 0o644)
		os.Chtimes(p, st.ModTime(), st.ModTime())
	}
}

// TestUntrustedCacheChecksTheRepository: after a gc (the caller says the
// cache is not trusted), what the cache names is looked up, and a content
// the repository lost is read and stored again.
func TestUntrustedCacheChecksTheRepository(t *testing.T) {
	src := t.TempDir()
	writeTree(t, src, map[string]string{"kept": strings.Repeat("k", 700), "lost": strings.Repeat("l", 700)})
	ageFiles()
	cachePath := filepath.Join(t.TempDir(), "cache")
	sink := newMemSink()
	c, _ := OpenDirCache(cachePath)
	opts := DefaultOptions()
	opts.Cache = c
	first := snap(t, src, sink, opts)
	c.Commit("before gc")
	delete(sink.objects, sum(strings.Repeat("l", 700)))
	for id := range sink.trees {
		delete(sink.trees, id) // gc took the trees too
	}
	c2, _ := OpenDirCache(cachePath)
	c2.Trusted = c2.Generation() == "after gc"
	opts.Cache = c2
	second := snap(t, src, sink, opts)
	if second.Root != first.Root || second.Stats.HashedFiles != 1 {
		t.Fatalf("untrusted cache: root %s (want %s), hashed %d files (want only the lost one)", second.Root, first.Root, second.Stats.HashedFiles)
	}
	if sink.objects[sum(strings.Repeat("l", 700))] == nil || sink.trees[second.Root] == nil {
		t.Fatal("the lost content or the tree was not stored again")
	}
}

func TestDirCacheIgnoresOtherOptions(t *testing.T) {
	src := t.TempDir()
	writeTree(t, src, map[string]string{"a.log": strings.Repeat("a", 900), "b.txt": strings.Repeat("b", 900)})
	ageFiles()
	cachePath := filepath.Join(t.TempDir(), "cache")
	sink := newMemSink()
	c, _ := OpenDirCache(cachePath)
	opts := DefaultOptions()
	opts.Cache = c
	snap(t, src, sink, opts)
	c.Commit("g")
	c.Trusted = true
	opts.Excludes = []string{"*.log"}
	res := snap(t, src, sink, opts)
	if ns := nodes(t, sink, res.Root); ns["a.log"] != nil {
		t.Fatal("a cache written under other globs decided what the tree holds")
	}
	_ = time.Now
}
