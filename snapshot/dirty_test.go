package snapshot

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/deltabackup/deltabackup/snapshot/digest"
	"github.com/deltabackup/deltabackup/snapshot/snapshottest"
)

func comparable(m *Manifest) Manifest {
	c := *m
	c.Start, c.End = time.Time{}, time.Time{} // they differ run to run
	return c
}

// checkDelta checks the incremental manifest of res: stored and read back,
// applied to base it gives the whole manifest, and it holds no more files
// than the dirty paths can explain.
func checkDelta(t *testing.T, base *Manifest, res *Result, dirty int) {
	t.Helper()
	if res.Delta == nil {
		if res.Manifest.ChainDepth == 0 && len(base.Files) > 0 {
			return // the root itself was dirty: a full walk
		}
		t.Fatal("an incremental snapshot has no incremental manifest")
	}
	d := *res.Delta
	d.BaseManifest, d.ChainDepth = digest.MustParse(strings.Repeat("ab", 32)), base.ChainDepth+1
	data, err := d.Encode()
	if err != nil {
		t.Fatal(err)
	}
	decoded, err := DecodeManifest(data)
	if err != nil {
		t.Fatalf("incremental manifest does not decode: %v\n%s", err, data)
	}
	whole, err := Apply(base, decoded)
	if err != nil {
		t.Fatal(err)
	}
	if err := whole.Validate(); err != nil {
		t.Fatal(err)
	}
	want := *res.Manifest
	want.ChainDepth = d.ChainDepth
	whole.Dirs, whole.EmptyDirs, whole.Symlinks = nilIfEmpty(whole.Dirs), nilIfEmpty(whole.EmptyDirs), nilIfEmpty(whole.Symlinks)
	if got, w := comparable(whole), comparable(&want); !reflect.DeepEqual(got.Files, w.Files) || !reflect.DeepEqual(got.Hashes, w.Hashes) ||
		!reflect.DeepEqual(got.Dirs, w.Dirs) || !reflect.DeepEqual(got.EmptyDirs, w.EmptyDirs) || !reflect.DeepEqual(got.Symlinks, w.Symlinks) {
		t.Fatalf("base + incremental manifest differs from the snapshot: %+v", Compare(&want, whole))
	}
	if want := res.Manifest; len(d.Files) > 20*dirty {
		t.Fatalf("incremental manifest holds %d files for %d dirty paths (whole: %d)", len(d.Files), dirty, len(want.Files))
	}
}

// TestIncrementalSnapshotEqualsFullWalk: after each burst of random
// changes, a snapshot of the dirty paths alone equals a full walk.
func TestIncrementalSnapshotEqualsFullWalk(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	for i := range 60 {
		p := filepath.Join(root, fmt.Sprintf("d%d/e%d/f%d", i%4, i%3, i))
		os.MkdirAll(filepath.Dir(p), 0o755)
		os.WriteFile(p, []byte(strings.Repeat(fmt.Sprint(i), 10+i*7)), 0o644)
	}
	storm := snapshottest.NewStorm(root, 7)
	full := func() *Manifest {
		s, _ := New(DefaultOptions(root))
		res, err := s.Snapshot(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return res.Manifest
	}
	base := full()
	cache := NewMemoryStatCache()
	ops := 0
	for round := range 40 {
		var dirty []string
		for range 1 + storm.Rand.IntN(60) {
			dirty = append(dirty, storm.Step()...)
			ops++
		}
		opts := DefaultOptions(root)
		opts.Base, opts.Dirty, opts.Cache = base, dirty, cache
		s, err := New(opts)
		if err != nil {
			t.Fatal(err)
		}
		res, err := s.Snapshot(ctx)
		if err != nil {
			t.Fatal(err)
		}
		cache.Save()
		want := full()
		if got, w := comparable(res.Manifest), comparable(want); !reflect.DeepEqual(got, w) {
			d := Compare(want, res.Manifest)
			t.Fatalf("round %d (dirty %v): incremental snapshot differs from a full walk: %+v\nfiles %d vs %d, dirs %d vs %d, empty %v vs %v",
				round, dirty, d, len(res.Manifest.Files), len(want.Files), len(res.Manifest.Dirs), len(want.Dirs), res.Manifest.EmptyDirs, want.EmptyDirs)
		}
		checkDelta(t, base, res, len(dirty))
		base = res.Manifest
	}
	t.Logf("%d random operations in 40 rounds, each compared with a full walk", ops)
}

// TestApplyChecksIncrementalManifests: an incremental manifest applies to
// its base, and one that does not fit its base is refused with the path.
func TestApplyChecksIncrementalManifests(t *testing.T) {
	h := strings.Repeat("ab", 32)
	base, err := DecodeManifest([]byte(`{"version":1,"hash_algorithm":"blake3","files":[{"relative_path":"a","file_size":2,"hexdigest":"","content_b64":"aGk="},{"relative_path":"d/x","file_size":300,"hexdigest":"` + h + `"}],"dirs":[{"relative_path":"d","mode":493,"mtime_ns":1}],"empty_dirs":["e"],"hashes":[{"hexdigest":"` + h + `","size":300}]}`))
	if err != nil {
		t.Fatal(err)
	}
	delta := func(tail string) string {
		return `{"version":1,"hash_algorithm":"blake3","files":[{"relative_path":"b","file_size":1,"hexdigest":"","content_b64":"eA=="}],"hashes":[],"base_manifest":"` + h + `"` + tail + `}`
	}
	for _, c := range []struct{ data, err string }{
		{delta(`,"chain_depth":1,"removed":{"files":["d/x"],"empty_dirs":["e"]}`), ""},
		{delta(`,"chain_depth":1,"removed":{"files":["c"]}`), `removes file "c", which its base does not have`},
		{delta(`,"chain_depth":1,"removed":{"files":["b"]}`), `both removes and lists file "b"`},
		{delta(`,"chain_depth":2`), "chain depth 2 on a base of depth 0"},
		{delta(`,"chain_depth":1,"removed":{"files":["d/x","a"]}`), "removed files are not sorted"},
		{delta(`,"chain_depth":0`), "chain_depth 0"},
		{delta(`,"chain_depth":1,"removed":{"dirs":["../x"]}`), "removed dirs entry"},
	} {
		d, err := DecodeManifest([]byte(c.data))
		if err == nil {
			var whole *Manifest
			if whole, err = Apply(base, d); err == nil {
				if got := len(whole.Files); got != 2 || whole.Files[1].RelativePath != "b" || len(whole.Hashes) != 0 || len(whole.EmptyDirs) != 0 {
					t.Fatalf("applied: %+v", whole)
				}
			}
		}
		if c.err == "" && err != nil || c.err != "" && (err == nil || !strings.Contains(err.Error(), c.err)) {
			t.Errorf("%s: error %v, want %q", c.data, err, c.err)
		}
	}
}

// TestStatCacheKeptInMemoryAcrossIncrementalRuns: incremental runs lay
// their entries over the cache with Keep (no rewrite of every entry);
// later runs, full or incremental, and a Save read back from disk use
// them, and a deleted file's entry is gone after the Save.
func TestStatCacheKeptInMemoryAcrossIncrementalRuns(t *testing.T) {
	src := t.TempDir()
	files := map[string]string{}
	for i := range 30 {
		files[fmt.Sprintf("d%d/f%02d", i%3, i)] = strings.Repeat(fmt.Sprint(i), 200+i)
	}
	writeTree(t, src, files)
	time.Sleep(2 * racyWindow) // ctime is now: not cached before this
	path := filepath.Join(t.TempDir(), "statcache")
	cache, _ := OpenStatCache(path)
	opts := DefaultOptions(src)
	opts.Cache = cache
	base := run(t, opts).Manifest
	if err := cache.Save(); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(src, "d0/f00"), []byte(strings.Repeat("changed ", 50)), 0o644)
	os.Remove(filepath.Join(src, "d1/f01"))
	time.Sleep(2 * racyWindow)
	inc := opts
	inc.Base, inc.Dirty = base, []string{"d0/f00", "d1/f01"}
	res := run(t, inc)
	if res.HashedFiles != 1 || res.Delta == nil {
		t.Fatalf("incremental run hashed %d files, want 1", res.HashedFiles)
	}
	cache.Keep()
	if res := run(t, opts); res.HashedFiles != 0 {
		t.Fatalf("a full run after Keep hashed %d files; the kept entries were not used", res.HashedFiles)
	}
	inc.Base, inc.Dirty = res.Manifest, []string{"d0/f00"}
	run(t, inc)
	for range 2 { // a Save without a run in between keeps what it has
		if err := cache.Save(); err != nil {
			t.Fatal(err)
		}
	}
	reopened, err := OpenStatCache(path)
	if err != nil {
		t.Fatal(err)
	}
	if reopened.has("d1/f01") || !reopened.has("d0/f00") || reopened.prev.len() != 29 {
		t.Fatalf("saved cache: %d entries, deleted file kept %v", reopened.prev.len(), reopened.has("d1/f01"))
	}
	opts.Cache = reopened
	if res := run(t, opts); res.HashedFiles != 0 {
		t.Fatalf("a full run with the saved cache hashed %d files", res.HashedFiles)
	}
}

// TestDamagedStatCacheDoesNotAllocateWhatItClaims: a damaged cache file
// whose zstd frame claims gigabytes allocates no such thing (the fuzzer
// found one that ended the process where memory was short).
func TestDamagedStatCacheDoesNotAllocateWhatItClaims(t *testing.T) {
	data := []byte("DBSC\x0100000000000000N00000000000000000(\xb5/\xfd\x84010[\xcb&N\xaa\xba\xc3\x05\x01\x0020\x05\x10 B_0000000000000000000\x00\x00\x01\x0000")
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	if _, err := decodeStatCache(data); err == nil {
		t.Fatal("a damaged stat cache decoded")
	}
	runtime.ReadMemStats(&after)
	if n := after.TotalAlloc - before.TotalAlloc; n > 64<<20 {
		t.Fatalf("decoding %d bytes allocated %d MB", len(data), n>>20)
	}
}
