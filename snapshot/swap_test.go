package snapshot

import (
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// TestBackupNeverReadsThroughASwappedDirectory is the audit's M3: a user
// who owns a directory of the source swaps it for a symbolic link to a
// directory they cannot read, right before the (root) backup opens a file
// below it. The backup must never store the other file's content under
// the user's path: it reads the file it listed, or reports a change.
func TestBackupNeverReadsThroughASwappedDirectory(t *testing.T) {
	top := t.TempDir()
	src, secretDir := filepath.Join(top, "src"), filepath.Join(top, "rootonly")
	secret := "root:TOPSECRET\n" + strings.Repeat("s", 100)
	bait := strings.Repeat("b", len(secret))
	big := strings.Repeat("S", 2<<20) // read through a mapping
	writeTree(t, src, map[string]string{"u/d/notes.txt": bait, "u/d/big": strings.Repeat("B", 2<<20)})
	writeTree(t, secretDir, map[string]string{"notes.txt": secret, "big": big})
	cachePath := filepath.Join(t.TempDir(), "cache")
	for _, cache := range []bool{false, true} {
		opts := DefaultOptions()
		sink := newMemSink()
		if cache {
			c, _ := OpenDirCache(cachePath)
			opts.Cache = c
			snap(t, src, sink, opts) // so the second run looks files up in the cache first
			c.Commit("g")
			c.Trusted = true
			os.Chtimes(filepath.Join(src, "u/d/notes.txt"), old.Add(1), old.Add(1))
			os.Chtimes(filepath.Join(src, "u/d/big"), old.Add(1), old.Add(1))
		}
		var once sync.Once
		testHookBeforeOpen = func(path string) {
			if strings.Contains(path, "/u/d/") {
				once.Do(func() {
					d := filepath.Join(src, "u/d")
					if err := os.Rename(d, d+".old"); err != nil {
						t.Error(err)
					}
					if err := os.Symlink(secretDir, d); err != nil {
						t.Error(err)
					}
				})
			}
		}
		res := snap(t, src, sink, opts)
		testHookBeforeOpen = nil
		for rel, n := range nodes(t, sink, res.Root) {
			if string(n.Embedded) == secret || n.ID == sum(secret) || n.ID == sum(big) {
				t.Fatalf("cache %v: %s holds the content of a file outside the source", cache, rel)
			}
		}
		// Undo the swap for the next round.
		d := filepath.Join(src, "u/d")
		os.Remove(d)
		os.Rename(d+".old", d)
	}
}
