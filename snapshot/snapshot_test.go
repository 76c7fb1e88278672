package snapshot

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestSnapshotTree(t *testing.T) {
	src := t.TempDir()
	big := strings.Repeat("x", 5000)
	writeTree(t, src, map[string]string{
		"a.txt":          "small",
		"empty":          "",
		"dir/big.bin":    big,
		"dir/copy.bin":   big,
		"dir/sub/z.dat":  strings.Repeat("z", 151),
		"dir/sub/at.dat": strings.Repeat("y", 150),
	})
	if err := os.Chmod(filepath.Join(src, "dir/big.bin"), 0o640); err != nil {
		t.Fatal(err)
	}
	os.MkdirAll(filepath.Join(src, "void/deeper"), 0o755)
	os.Symlink("../a.txt", filepath.Join(src, "dir/link"))
	os.Symlink("/nonexistent/target", filepath.Join(src, "dangling"))
	os.Symlink("dir", filepath.Join(src, "dirlink"))
	if err := syscall.Mkfifo(filepath.Join(src, "fifo"), 0o640); err != nil {
		t.Fatal(err)
	}

	opts := DefaultOptions()
	opts.Parallel = 3
	opts.MinDeltaFileSize = 1000
	sink := newMemSink()
	res := snap(t, src, sink, opts)
	ns := nodes(t, sink, res.Root)

	want := []string{"a.txt", "dir/big.bin", "dir/copy.bin", "dir/sub/at.dat", "dir/sub/z.dat", "empty"}
	if diff := cmp.Diff(want, filePaths(ns)); diff != "" {
		t.Fatalf("files (-want +got):\n%s", diff)
	}
	if n := ns["a.txt"]; !n.IsEmbedded() || string(n.Embedded) != "small" || n.Size != 5 {
		t.Errorf("a.txt should be embedded with its content: %+v", n)
	}
	if n := ns["dir/sub/at.dat"]; !n.IsEmbedded() {
		t.Errorf("a file of exactly 150 bytes should be embedded: %+v", n)
	}
	if n := ns["dir/sub/z.dat"]; n.IsEmbedded() || n.ID != sum(strings.Repeat("z", 151)) {
		t.Errorf("z.dat (151 bytes): %+v", n)
	}
	if n := ns["dir/big.bin"]; n.ID != sum(big) || n.Mode != 0o640 || n.MtimeNs != old.UnixNano() {
		t.Errorf("big.bin: %+v", n)
	}
	if n := ns["empty"]; !n.IsEmbedded() || n.Size != 0 {
		t.Errorf("empty file: %+v", n)
	}
	if n := ns["dir/link"]; n.Type != TypeSymlink || n.Target != "../a.txt" {
		t.Errorf("symlink: %+v", n)
	}
	if n := ns["dangling"]; n.Type != TypeSymlink || n.Target != "/nonexistent/target" {
		t.Errorf("dangling symlink: %+v", n)
	}
	if n := ns["dirlink"]; n.Type != TypeSymlink {
		t.Errorf("a symlink to a directory must stay a symlink: %+v", n)
	}
	if n := ns["void/deeper"]; n == nil || n.Type != TypeDir {
		t.Errorf("empty directory missing: %+v", n)
	}
	if n := ns["fifo"]; n == nil || n.Type != TypeFIFO || n.Mode != 0o640 {
		t.Errorf("fifo: %+v", n)
	}
	// The same content in two files is stored once.
	if len(sink.objects) != 2 || sink.objects[sum(big)] == nil {
		t.Errorf("stored %d objects, want big.bin's and z.dat's", len(sink.objects))
	}
	st := res.Stats
	if st.Files != 6 || st.Dirs != 4 || st.Symlinks != 3 || st.Specials != 1 || st.Embedded != 3 ||
		st.Bytes != 5+2*5000+151+150 || st.HashedFiles != 6 {
		t.Errorf("stats %+v", st)
	}
	if root := ns[""]; root.Below.Files != 6 || root.Below.Dirs != 4 {
		t.Errorf("the root's own node sums up %+v", root.Below)
	}
}

// TestRootHashIsStableForAnUnchangedTree: identical trees have identical
// ids, however they were found (with or without the directory cache), and
// a change below a directory changes only the trees above it.
func TestRootHashIsStableForAnUnchangedTree(t *testing.T) {
	src := t.TempDir()
	writeTree(t, src, map[string]string{"a/1": "one", "a/2": strings.Repeat("2", 400), "b/3": strings.Repeat("3", 2000), "c": "c"})
	ageFiles()
	sink := newMemSink()
	cache, _ := OpenDirCache(filepath.Join(t.TempDir(), "cache"))
	opts := DefaultOptions()
	first := snap(t, src, sink, opts)
	second := snap(t, src, sink, opts)
	opts.Cache = cache
	third := snap(t, src, sink, opts)
	cache.Commit("g")
	cache.Trusted = true
	fourth := snap(t, src, sink, opts)
	if first.Root != second.Root || first.Root != third.Root || first.Root != fourth.Root {
		t.Fatalf("root hashes of an unchanged tree differ: %s %s %s %s", first.Root, second.Root, third.Root, fourth.Root)
	}
	if fourth.Stats.HashedFiles != 0 || fourth.Stats.TreesReused != 3 {
		t.Fatalf("with the cache an unchanged tree read %d files and reused %d trees, want 0 and 3", fourth.Stats.HashedFiles, fourth.Stats.TreesReused)
	}
	before := nodes(t, sink, first.Root)
	os.WriteFile(filepath.Join(src, "b/3"), []byte(strings.Repeat("4", 2000)), 0o644)
	after := nodes(t, sink, snap(t, src, sink, opts).Root)
	if before["a"].Subtree != after["a"].Subtree {
		t.Error("an unchanged subtree got a new id")
	}
	if before["b"].Subtree == after["b"].Subtree || after["b/3"].ID != sum(strings.Repeat("4", 2000)) {
		t.Error("the changed directory kept its id or content")
	}
}

func TestGlobs(t *testing.T) {
	src := t.TempDir()
	writeTree(t, src, map[string]string{
		"main.go": "package main", "README": "r", "vendor/x/y.go": "v", "pkg/a.go": "a", "pkg/a.tmp": "t",
		"data/one": "1", "data/sub/two": "2", "logs/l.log": "l",
	})
	cases := []struct {
		name               string
		includes, excludes []string
		want               []string
	}{
		{"default", nil, nil, []string{"README", "data/one", "data/sub/two", "logs/l.log", "main.go", "pkg/a.go", "pkg/a.tmp", "vendor/x/y.go"}},
		{"go files outside vendor", []string{"**/*.go"}, []string{"vendor"}, []string{"main.go", "pkg/a.go"}},
		{"exclude by pattern", nil, []string{"**/*.tmp", "logs/**"}, []string{"README", "data/one", "data/sub/two", "main.go", "pkg/a.go", "vendor/x/y.go"}},
		{"include a directory", []string{"data"}, nil, []string{"data/one", "data/sub/two"}},
		{"exclude inside include", []string{"data"}, []string{"data/sub"}, []string{"data/one"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			opts := DefaultOptions()
			opts.Includes, opts.Excludes = c.includes, c.excludes
			sink := newMemSink()
			ns := nodes(t, sink, snap(t, src, sink, opts).Root)
			if diff := cmp.Diff(c.want, filePaths(ns)); diff != "" {
				t.Errorf("selected files (-want +got):\n%s", diff)
			}
			if c.name == "go files outside vendor" && (ns["data"] != nil || ns["vendor"] != nil) {
				t.Error("a directory that holds no selected file is in the tree")
			}
		})
	}
	if _, err := New(src, Options{Includes: []string{"[unclosed"}}); err == nil {
		t.Error("an invalid glob was accepted")
	}
}

func TestFileChangingWhileRead(t *testing.T) {
	src := t.TempDir()
	writeTree(t, src, map[string]string{"db": strings.Repeat("1", 4<<20), "calm": strings.Repeat("c", 400)})
	target := filepath.Join(src, "db")

	t.Run("settles", func(t *testing.T) {
		testHookAfterRead = func(path string, attempt int) {
			if path == target && attempt == 0 {
				os.WriteFile(target, []byte(strings.Repeat("2", 4<<20)), 0o644)
			}
		}
		defer func() { testHookAfterRead = nil }()
		sink := newMemSink()
		res := snap(t, src, sink, DefaultOptions())
		if len(res.Changed) != 0 {
			t.Fatalf("changed: %v", res.Changed)
		}
		if n := nodes(t, sink, res.Root)["db"]; n.ID != sum(strings.Repeat("2", 4<<20)) {
			t.Fatal("the tree records an id that is not of the file's settled content")
		}
	})
	t.Run("keeps changing", func(t *testing.T) {
		n := 0
		testHookAfterRead = func(path string, attempt int) {
			if path == target {
				n++
				f, _ := os.OpenFile(target, os.O_WRONLY|os.O_APPEND, 0)
				f.WriteString("more")
				f.Close()
			}
		}
		defer func() { testHookAfterRead = nil }()
		opts := DefaultOptions()
		opts.ChangeRetries = 2
		sink := newMemSink()
		res := snap(t, src, sink, opts)
		if diff := cmp.Diff([]string{"db"}, problemPaths(res.Changed)); diff != "" {
			t.Fatalf("changed (-want +got):\n%s", diff)
		}
		if n != 3 {
			t.Errorf("read %d times, want 1 + 2 retries", n)
		}
		if diff := cmp.Diff([]string{"calm"}, filePaths(nodes(t, sink, res.Root))); diff != "" {
			t.Fatalf("a file that kept changing must not be in the tree (-want +got):\n%s", diff)
		}
		if !errors.Is(res.Changed[0].Err, ErrChangedWhileReading) {
			t.Fatalf("error %v", res.Changed[0].Err)
		}
	})
}

// TestContentChangedBeforeItIsStoredIsNotStoredUnderItsId: the file
// changes between hashing and the sink reading it again; the sink sees
// other bytes, and the snapshot reads the file again rather than record
// an id it cannot store.
func TestContentChangedBeforeItIsStoredIsNotStoredUnderItsId(t *testing.T) {
	src := t.TempDir()
	p := filepath.Join(src, "big")
	writeTree(t, src, map[string]string{"big": strings.Repeat("a", 3<<20)})
	sink := &changingSink{memSink: newMemSink(), path: p}
	opts := DefaultOptions()
	opts.Sink = sink
	s, _ := New(src, opts)
	res, err := s.Snapshot(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	n := nodes(t, sink.memSink, res.Root)["big"]
	if n == nil || sink.objects[n.ID] == nil || digestOf(sink.objects[n.ID]) != n.ID {
		t.Fatalf("the tree names %v, which the sink does not hold", n)
	}
	if n.ID != sum(strings.Repeat("b", 3<<20)) {
		t.Fatal("the tree does not hold the file's final content")
	}
}

func digestOf(b []byte) [32]byte { return sum(string(b)) }

// changingSink rewrites the file once, right before it reads it again.
type changingSink struct {
	*memSink
	path string
	done bool
}

func (s *changingSink) StoreContent(ctx context.Context, c *Content) error {
	if !s.done {
		s.done = true
		os.WriteFile(s.path, bytes.Repeat([]byte("b"), 3<<20), 0o644)
	}
	return s.memSink.StoreContent(ctx, c)
}

func TestUnreadableFilesAreReportedAndSkipped(t *testing.T) {
	src := t.TempDir()
	writeTree(t, src, map[string]string{"gone": strings.Repeat("g", 300), "stays": strings.Repeat("s", 300), "locked": strings.Repeat("l", 300)})
	testHookBeforeOpen = func(path string) {
		if filepath.Base(path) == "gone" {
			os.Remove(path)
		}
	}
	defer func() { testHookBeforeOpen = nil }()
	wantUnreadable := []string{"gone"}
	if os.Geteuid() != 0 { // root reads mode-000 files; the CLI test covers that case as another user
		os.Chmod(filepath.Join(src, "locked"), 0)
		wantUnreadable = []string{"gone", "locked"}
	}
	sink := newMemSink()
	res := snap(t, src, sink, DefaultOptions())
	if diff := cmp.Diff(wantUnreadable, problemPaths(res.Unreadable)); diff != "" {
		t.Fatalf("unreadable (-want +got):\n%s", diff)
	}
	if !errors.Is(res.Unreadable[0].Err, os.ErrNotExist) {
		t.Errorf("vanished file error: %v", res.Unreadable[0].Err)
	}
	if nodes(t, sink, res.Root)["gone"] != nil {
		t.Fatal("a vanished file is in the tree")
	}
}

func TestFileTruncatedWhileRead(t *testing.T) {
	defer func(old int64) { segmentedMin = old }(segmentedMin)
	segmentedMin = segmentSize
	src := t.TempDir()
	big := filepath.Join(src, "big")
	writeTree(t, src, map[string]string{"big": strings.Repeat("m", 3*segmentSize+5)})
	testHookAfterRead = func(path string, attempt int) {
		if path == big && attempt == 0 {
			// The next segments lie beyond the new end of file: reading
			// them must become a retry, never a digest of what was read.
			os.Truncate(big, 2<<20)
		}
	}
	defer func() { testHookAfterRead = nil }()
	sink := newMemSink()
	res := snap(t, src, sink, DefaultOptions())
	n := nodes(t, sink, res.Root)["big"]
	if len(res.Changed) != 0 || n == nil {
		t.Fatalf("changed %v", res.Changed)
	}
	if n.Size != 2<<20 || n.ID != sum(strings.Repeat("m", 2<<20)) {
		t.Fatalf("after truncation the tree holds size %d, id %s", n.Size, n.ID)
	}
}

func TestStagingDirectory(t *testing.T) {
	src, dst := t.TempDir(), filepath.Join(t.TempDir(), "stage")
	writeTree(t, src, map[string]string{"keep": strings.Repeat("k", 500), "sub/later-deleted": strings.Repeat("d", 500),
		"gone/soon": strings.Repeat("g", 500)})
	opts := DefaultOptions()
	opts.Dst = dst
	res := snap(t, src, newMemSink(), opts)
	if res.ReadRoot != dst {
		t.Fatalf("ReadRoot %s, want the staging dir", res.ReadRoot)
	}
	a, _ := os.Stat(filepath.Join(src, "keep"))
	b, err := os.Stat(filepath.Join(dst, "keep"))
	if err != nil || !os.SameFile(a, b) {
		t.Fatalf("staged file is not a hard link of the source: %v", err)
	}
	// The database deletes a file after the snapshot: the staged copy
	// still has the content the tree describes.
	os.Remove(filepath.Join(src, "sub/later-deleted"))
	data, err := os.ReadFile(filepath.Join(dst, "sub/later-deleted"))
	if err != nil || !bytes.Equal(data, []byte(strings.Repeat("d", 500))) {
		t.Fatalf("staged content lost after the source file was deleted: %v", err)
	}
	// A second run prunes what it staged before and is gone now, and
	// nothing it did not stage: a user's file in the directory stays.
	os.RemoveAll(filepath.Join(src, "gone"))
	writeTree(t, dst, map[string]string{"mine/notes": "a user's file", "sub/also-mine": "x"})
	snap(t, src, newMemSink(), opts)
	for _, gone := range []string{"sub/later-deleted", "gone/soon", "gone"} {
		if _, err := os.Lstat(filepath.Join(dst, gone)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s, staged by the first run and gone from the source, was not pruned", gone)
		}
	}
	for _, kept := range []string{"keep", "mine/notes", "sub/also-mine"} {
		if _, err := os.Lstat(filepath.Join(dst, kept)); err != nil {
			t.Errorf("%s was removed: %v", kept, err)
		}
	}
}

// TestStagingDirectoryNeverDeletesWhatItDoesNotOwn is the audit's H4: a
// staging directory that is the source, lies above or inside it, or holds
// data deltabackup did not stage is refused before anything is touched.
func TestStagingDirectoryNeverDeletesWhatItDoesNotOwn(t *testing.T) {
	top := t.TempDir()
	writeTree(t, top, map[string]string{"var/lib/pg/table": strings.Repeat("t", 500), "var/lib/other/keep": "keep",
		"shared/precious.txt": "precious", "shared/projects/code.go": "work", "data/f": "x"})
	os.Symlink(filepath.Join(top, "var/lib"), filepath.Join(top, "lib-link"))
	for name, c := range map[string]struct{ src, dst string }{
		"the source's parent":       {"var/lib/pg", "var/lib"},
		"the source's grandparent":  {"var/lib/pg", "var"},
		"the source itself":         {"var/lib/pg", "var/lib/pg"},
		"inside the source":         {"var/lib", "var/lib/pg"},
		"a link to the parent":      {"var/lib/pg", "lib-link"},
		"a full unmarked directory": {"data", "shared"},
	} {
		t.Run(name, func(t *testing.T) {
			opts := DefaultOptions()
			opts.Dst = filepath.Join(top, c.dst)
			s, err := New(filepath.Join(top, c.src), opts)
			if err == nil {
				_, err = s.Snapshot(context.Background())
			}
			if err == nil || !strings.Contains(err.Error(), "staging directory") {
				t.Fatalf("staging into %s for %s: %v, want it refused", c.dst, c.src, err)
			}
		})
	}
	for _, p := range []string{"var/lib/pg/table", "var/lib/other/keep", "shared/precious.txt", "shared/projects/code.go", "data/f"} {
		if _, err := os.Stat(filepath.Join(top, p)); err != nil {
			t.Errorf("%s was touched: %v", p, err)
		}
	}
	// An empty directory is taken and marked.
	empty := filepath.Join(top, "empty")
	os.Mkdir(empty, 0o700)
	opts := DefaultOptions()
	opts.Dst = empty
	snap(t, filepath.Join(top, "data"), newMemSink(), opts)
	if _, err := os.Stat(filepath.Join(empty, ".deltabackup-stage")); err != nil {
		t.Fatalf("an empty staging directory was not marked: %v", err)
	}
}

func TestNamesAreStoredAsTheyAre(t *testing.T) {
	src := t.TempDir()
	names := []string{"quote\"d", "back\\slash", "tab\there", "new\nline", "ctl\x01\x1f", "uni-ü-東京-🙂", "not-utf8-\xff\xfe", "del\x7f"}
	for _, n := range names {
		writeTree(t, src, map[string]string{n: "content of " + n})
	}
	os.Symlink("target-\xff", filepath.Join(src, "link"))
	sink := newMemSink()
	res := snap(t, src, sink, DefaultOptions())
	if len(res.Unreadable) != 0 {
		t.Fatalf("names refused: %v", res.Unreadable)
	}
	ns := nodes(t, sink, res.Root)
	for _, n := range names {
		if got := ns[n]; got == nil || string(got.Embedded) != "content of "+n {
			t.Errorf("%q: %+v", n, got)
		}
	}
	if ns["link"].Target != "target-\xff" {
		t.Errorf("symlink target %q", ns["link"].Target)
	}
}
