package snapshot

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/deltabackup/deltabackup/snapshot/digest"

	"github.com/google/go-cmp/cmp"
)

// old is a fixed mtime well in the past, so fixtures are never "racily
// clean" and the stat cache may keep them.
var old = time.Date(2024, 5, 6, 7, 8, 9, 123456789, time.UTC)

// writeTree creates files (content by relative path) with mode 0644 and an
// old mtime, plus the directories they need.
func writeTree(t *testing.T, root string, files map[string]string) {
	t.Helper()
	for rel, content := range files {
		p := filepath.Join(root, filepath.FromSlash(rel))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Chtimes(p, old, old); err != nil {
			t.Fatal(err)
		}
	}
}

func sum(content string) digest.Digest { return digest.Of([]byte(content)) }

func run(t *testing.T, opts Options) *Result {
	t.Helper()
	s, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	res, err := s.Snapshot(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return res
}

func paths(files []File) []string {
	var out []string
	for _, f := range files {
		out = append(out, f.RelativePath)
	}
	return out
}

func problemPaths(ps []Problem) []string {
	var out []string
	for _, p := range ps {
		out = append(out, p.Path)
	}
	return out
}

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
	if err := syscall.Mkfifo(filepath.Join(src, "fifo"), 0o644); err != nil {
		t.Fatal(err)
	}

	opts := DefaultOptions(src)
	opts.Parallel = 3
	opts.MinDeltaFileSize = 1000
	res := run(t, opts)
	m := res.Manifest

	want := []string{"a.txt", "dir/big.bin", "dir/copy.bin", "dir/sub/at.dat", "dir/sub/z.dat", "empty"}
	if diff := cmp.Diff(want, paths(m.Files)); diff != "" {
		t.Fatalf("files (-want +got):\n%s", diff)
	}
	byPath := map[string]File{}
	for _, f := range m.Files {
		byPath[f.RelativePath] = f
	}
	if f := byPath["a.txt"]; !f.Embedded() || f.ContentB64 != "c21hbGw=" || f.FileSize != 5 {
		t.Errorf("a.txt should be embedded with its content: %+v", f)
	}
	if f := byPath["dir/sub/at.dat"]; !f.Embedded() {
		t.Errorf("a file of exactly 150 bytes should be embedded: %+v", f)
	}
	if f := byPath["dir/sub/z.dat"]; f.Embedded() || f.Hexdigest != sum(strings.Repeat("z", 151)) || !f.ShouldBeBundled {
		t.Errorf("z.dat (151 bytes, under min_delta_file_size): %+v", f)
	}
	if f := byPath["dir/big.bin"]; f.Hexdigest != sum(big) || f.Mode != 0o640 || f.MtimeNs != old.UnixNano() || f.ShouldBeBundled {
		t.Errorf("big.bin: %+v", f)
	}
	if f := byPath["empty"]; !f.Embedded() || f.FileSize != 0 {
		t.Errorf("empty file: %+v", f)
	}
	wantHashes := []Hash{{sum(big), 5000}, {sum(strings.Repeat("z", 151)), 151}}
	if digest.Compare(wantHashes[0].Hexdigest, wantHashes[1].Hexdigest) > 0 {
		wantHashes[0], wantHashes[1] = wantHashes[1], wantHashes[0]
	}
	if diff := cmp.Diff(wantHashes, m.Hashes); diff != "" {
		t.Errorf("hashes: two files with the same content give one hash (-want +got):\n%s", diff)
	}
	wantLinks := []Symlink{{"dangling", "/nonexistent/target"}, {"dir/link", "../a.txt"}, {"dirlink", "dir"}}
	if diff := cmp.Diff(wantLinks, m.Symlinks); diff != "" {
		t.Errorf("symlinks (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"void/deeper"}, m.EmptyDirs); diff != "" {
		t.Errorf("empty dirs (-want +got):\n%s", diff)
	}
	var dirs []string
	for _, d := range m.Dirs {
		dirs = append(dirs, d.RelativePath)
	}
	if diff := cmp.Diff([]string{"dir", "dir/sub", "void", "void/deeper"}, dirs); diff != "" {
		t.Errorf("dirs (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"fifo"}, problemPaths(res.Special)); diff != "" {
		t.Errorf("special files (-want +got):\n%s", diff)
	}
	if res.HashedBytes != 5+2*5000+151+150 || res.HashedFiles != 6 {
		t.Errorf("hashed %d files, %d bytes", res.HashedFiles, res.HashedBytes)
	}
	if err := m.Validate(); err != nil {
		t.Fatal(err)
	}
	data, err := m.Encode()
	if err != nil {
		t.Fatal(err)
	}
	back, err := DecodeManifest(data)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(m, back); diff != "" {
		t.Errorf("manifest JSON round trip (-want +got):\n%s", diff)
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
			opts := DefaultOptions(src)
			opts.Includes, opts.Excludes = c.includes, c.excludes
			res := run(t, opts)
			if diff := cmp.Diff(c.want, paths(res.Manifest.Files)); diff != "" {
				t.Errorf("selected files (-want +got):\n%s", diff)
			}
			for _, d := range res.Manifest.Dirs {
				if c.name == "go files outside vendor" && (d.RelativePath == "data" || d.RelativePath == "vendor") {
					t.Errorf("directory %s holds no selected file but is in the manifest", d.RelativePath)
				}
			}
		})
	}
	if _, err := New(Options{Src: src, Includes: []string{"[unclosed"}}); err == nil {
		t.Error("an invalid glob was accepted")
	}
}

func TestStatCacheSkipsUnchangedFiles(t *testing.T) {
	src := t.TempDir()
	files := map[string]string{"a": strings.Repeat("a", 1000), "b": strings.Repeat("b", 2000), "tiny": "t", "c/d": strings.Repeat("d", 300)}
	writeTree(t, src, files)
	time.Sleep(2 * racyWindow) // ctime is "now": let it age so the cache may keep the entries
	cachePath := filepath.Join(t.TempDir(), "cache")
	snap := func() *Result {
		c, err := OpenStatCache(cachePath)
		if err != nil {
			t.Fatal(err)
		}
		opts := DefaultOptions(src)
		opts.Cache = c
		res := run(t, opts)
		if err := c.Save(); err != nil {
			t.Fatal(err)
		}
		return res
	}
	first := snap()
	if first.HashedBytes != 3301 {
		t.Fatalf("first run hashed %d bytes, want 3301", first.HashedBytes)
	}
	second := snap()
	if second.HashedBytes != 0 || second.HashedFiles != 0 || second.CachedFiles != 4 {
		t.Fatalf("no-change run hashed %d files, %d bytes (cached %d), want 0, 0 (4)", second.HashedFiles, second.HashedBytes, second.CachedFiles)
	}
	second.Manifest.Start, second.Manifest.End = first.Manifest.Start, first.Manifest.End
	if diff := cmp.Diff(first.Manifest, second.Manifest); diff != "" {
		t.Fatalf("manifest from the cache differs (-first +second):\n%s", diff)
	}

	// Same size and mtime, different content: ctime gives it away.
	p := filepath.Join(src, "b")
	os.WriteFile(p, []byte(strings.Repeat("B", 2000)), 0o644)
	os.Chtimes(p, old, old)
	time.Sleep(2 * racyWindow) // let ctime age past the racy window
	third := snap()
	if third.HashedBytes != 2000 || third.HashedFiles != 1 {
		t.Fatalf("after rewriting one file, hashed %d files, %d bytes; want 1, 2000", third.HashedFiles, third.HashedBytes)
	}
	for _, f := range third.Manifest.Files {
		if f.RelativePath == "b" && f.Hexdigest != sum(strings.Repeat("B", 2000)) {
			t.Fatal("rewritten file kept its old hexdigest")
		}
	}

	// A damaged cache file costs a re-read, never a wrong answer.
	data, _ := os.ReadFile(cachePath)
	data[len(data)-3] ^= 0xff
	os.WriteFile(cachePath, data, 0o600)
	c, err := OpenStatCache(cachePath)
	if err == nil {
		t.Fatal("a damaged cache file opened without an error")
	}
	opts := DefaultOptions(src)
	opts.Cache = c
	if res := run(t, opts); res.HashedBytes != 3301 {
		t.Fatalf("with a damaged cache, hashed %d bytes, want all 3301", res.HashedBytes)
	}
}

func TestRecentlyModifiedFilesAreNotCached(t *testing.T) {
	src := t.TempDir()
	os.WriteFile(filepath.Join(src, "fresh"), []byte(strings.Repeat("f", 500)), 0o644)
	cache := NewMemoryStatCache()
	opts := DefaultOptions(src)
	opts.Cache = cache
	run(t, opts)
	if cache.Len() != 0 {
		t.Fatal("a file modified just now was cached; a second write in the same timestamp tick would go unnoticed")
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
		res := run(t, DefaultOptions(src))
		if len(res.Changed) != 0 {
			t.Fatalf("changed: %v", res.Changed)
		}
		for _, f := range res.Manifest.Files {
			if f.RelativePath == "db" && f.Hexdigest != sum(strings.Repeat("2", 4<<20)) {
				t.Fatal("the manifest records a hash that is not of the file's settled content")
			}
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
		opts := DefaultOptions(src)
		opts.ChangeRetries = 2
		res := run(t, opts)
		if diff := cmp.Diff([]string{"db"}, problemPaths(res.Changed)); diff != "" {
			t.Fatalf("changed (-want +got):\n%s", diff)
		}
		if n != 3 {
			t.Errorf("read %d times, want 1 + 2 retries", n)
		}
		if diff := cmp.Diff([]string{"calm"}, paths(res.Manifest.Files)); diff != "" {
			t.Fatalf("a file that kept changing must not be in the manifest (-want +got):\n%s", diff)
		}
		if !errors.Is(res.Changed[0].Err, ErrChangedWhileReading) {
			t.Fatalf("error %v", res.Changed[0].Err)
		}
	})
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
	res := run(t, DefaultOptions(src))
	if diff := cmp.Diff(wantUnreadable, problemPaths(res.Unreadable)); diff != "" {
		t.Fatalf("unreadable (-want +got):\n%s", diff)
	}
	if !errors.Is(res.Unreadable[0].Err, os.ErrNotExist) {
		t.Errorf("vanished file error: %v", res.Unreadable[0].Err)
	}
	for _, f := range res.Manifest.Files {
		if f.RelativePath == "gone" {
			t.Fatal("a vanished file is in the manifest")
		}
	}
}

func TestStagingDirectory(t *testing.T) {
	src, dst := t.TempDir(), filepath.Join(t.TempDir(), "stage")
	writeTree(t, src, map[string]string{"keep": strings.Repeat("k", 500), "sub/later-deleted": strings.Repeat("d", 500),
		"gone/soon": strings.Repeat("g", 500)})
	opts := DefaultOptions(src)
	opts.Dst = dst
	res := run(t, opts)
	if res.ReadRoot != dst {
		t.Fatalf("ReadRoot %s, want the staging dir", res.ReadRoot)
	}
	a, _ := os.Stat(filepath.Join(src, "keep"))
	b, err := os.Stat(filepath.Join(dst, "keep"))
	if err != nil || !os.SameFile(a, b) {
		t.Fatalf("staged file is not a hard link of the source: %v", err)
	}
	// The database deletes a file after the snapshot: the staged copy
	// still has the content the manifest describes.
	os.Remove(filepath.Join(src, "sub/later-deleted"))
	data, err := os.ReadFile(filepath.Join(dst, "sub/later-deleted"))
	if err != nil || !bytes.Equal(data, []byte(strings.Repeat("d", 500))) {
		t.Fatalf("staged content lost after the source file was deleted: %v", err)
	}
	// A second run prunes what it staged before and is gone now, and
	// nothing it did not stage: a user's file in the directory stays.
	os.RemoveAll(filepath.Join(src, "gone"))
	writeTree(t, dst, map[string]string{"mine/notes": "a user's file", "sub/also-mine": "x"})
	run(t, opts)
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
			opts := DefaultOptions(filepath.Join(top, c.src))
			opts.Dst = filepath.Join(top, c.dst)
			s, err := New(opts)
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
	opts := DefaultOptions(filepath.Join(top, "data"))
	opts.Dst = empty
	run(t, opts)
	if _, err := os.Stat(filepath.Join(empty, ".deltabackup-stage")); err != nil {
		t.Fatalf("an empty staging directory was not marked: %v", err)
	}
}

func TestManifestValidation(t *testing.T) {
	h := sum(strings.Repeat("x", 500))
	base := func() *Manifest {
		return &Manifest{
			Version: ManifestVersion, HashAlgorithm: HashAlgorithm,
			Files: []File{
				{RelativePath: "a/b", FileSize: 500, Hexdigest: h, Mode: 0o644},
				{RelativePath: "c", FileSize: 2, ContentB64: "aGk="},
			},
			Hashes: []Hash{{h, 500}},
		}
	}
	if err := base().Validate(); err != nil {
		t.Fatalf("valid manifest refused: %v", err)
	}
	cases := map[string]struct {
		edit func(m *Manifest)
		want string
	}{
		"absolute path":      {func(m *Manifest) { m.Files[0].RelativePath = "/etc/passwd" }, "absolute"},
		"dot dot":            {func(m *Manifest) { m.Files[0].RelativePath = "../escape" }, "'..'"},
		"inner dot dot":      {func(m *Manifest) { m.Files[0].RelativePath = "a/../../b" }, "not clean"},
		"not clean":          {func(m *Manifest) { m.Files[0].RelativePath = "a//b" }, "not clean"},
		"dot":                {func(m *Manifest) { m.EmptyDirs = []string{"."} }, "not clean"},
		"NUL":                {func(m *Manifest) { m.Files[0].RelativePath = "a/b\x00c" }, "NUL"},
		"invalid UTF-8":      {func(m *Manifest) { m.Files[0].RelativePath = "a/\xff" }, "UTF-8"},
		"duplicate":          {func(m *Manifest) { m.Symlinks = []Symlink{{"c", "x"}} }, "twice"},
		"below a file":       {func(m *Manifest) { m.EmptyDirs = []string{"c/d"} }, "lies below file"},
		"below a symlink":    {func(m *Manifest) { m.Symlinks = []Symlink{{"a", "/"}} }, "lies below symlink"},
		"dir below a file":   {func(m *Manifest) { m.Dirs = []Dir{{RelativePath: "c/sub", Mode: 0o755}} }, "lies below file"},
		"unsorted":           {func(m *Manifest) { m.Files[0], m.Files[1] = m.Files[1], m.Files[0] }, "not sorted"},
		"negative size":      {func(m *Manifest) { m.Files[1].FileSize = -1 }, "invalid size"},
		"huge size":          {func(m *Manifest) { m.Files[0].FileSize = 1 << 62 }, "invalid size"},
		"hash not listed":    {func(m *Manifest) { m.Hashes = nil }, "not listed"},
		"size disagrees":     {func(m *Manifest) { m.Hashes[0].Size = 7 }, "differs"},
		"embedded size":      {func(m *Manifest) { m.Files[1].FileSize = 3 }, "embedded content is 2 bytes"},
		"bad base64":         {func(m *Manifest) { m.Files[1].ContentB64 = "!!" }, "content_b64"},
		"huge embedded":      {func(m *Manifest) { m.Files[1].ContentB64 = strings.Repeat("A", 2<<20); m.Files[1].FileSize = 3 << 19 }, "exceeds"},
		"version":            {func(m *Manifest) { m.Version = 2 }, "version 2"},
		"mode":               {func(m *Manifest) { m.Files[0].Mode = 0o170000 }, "invalid mode"},
		"empty symlink":      {func(m *Manifest) { m.Symlinks = []Symlink{{"l", ""}} }, "invalid target"},
		"chunks":             {func(m *Manifest) { m.Files[0].Chunks = []Hash{{h, 1}} }, "chunks"},
		"duplicate hash":     {func(m *Manifest) { m.Hashes = append(m.Hashes, m.Hashes[0]) }, "listed twice"},
		"dir is a file":      {func(m *Manifest) { m.Dirs = []Dir{{RelativePath: "c"}} }, "also a file"},
		"dir escapes":        {func(m *Manifest) { m.Dirs = []Dir{{RelativePath: "../up"}} }, "'..'"},
		"empty path":         {func(m *Manifest) { m.Files[0].RelativePath = "" }, "empty path"},
		"both hash and data": {func(m *Manifest) { m.Files[0].ContentB64 = "aGk=" }, "both"},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			m := base()
			c.edit(m)
			err := m.Validate()
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("Validate() = %v, want an error containing %q", err, c.want)
			}
		})
	}
	for name, data := range map[string]string{
		"not JSON":      "{",
		"trailing data": `{"version":1,"hash_algorithm":"blake3"} {}`,
		"unknown field": `{"version":1,"hash_algorithm":"blake3","evil":1}`,
		"deep nesting":  `{"files":` + strings.Repeat("[", 100000) + strings.Repeat("]", 100000) + `}`,
		"duplicate key": `{"version":1,"version":1,"hash_algorithm":"blake3"}`,
		"invalid UTF-8": "{\"version\":1,\"hash_algorithm\":\"blake3\",\"node\":\"\xff\"}",
		"wrong case":    `{"Version":1,"hash_algorithm":"blake3"}`,
		// A hexdigest has one spelling: 64 lower-case hex digits.
		"bad hexdigest":  `{"version":1,"hash_algorithm":"blake3","files":[{"relative_path":"a","file_size":1,"mtime_ns":0,"mode":420,"hexdigest":"../../x","stored_file_size":0,"should_be_bundled":false}]}`,
		"upper-case hex": `{"version":1,"hash_algorithm":"blake3","hashes":[{"hexdigest":"` + strings.ToUpper(h.String()) + `","size":500}]}`,
	} {
		if _, err := DecodeManifest([]byte(data)); err == nil {
			t.Errorf("DecodeManifest accepted %s", name)
		}
	}
}

func TestFileTruncatedWhileMapped(t *testing.T) {
	src := t.TempDir()
	big := filepath.Join(src, "big")
	writeTree(t, src, map[string]string{"big": strings.Repeat("m", 3*mmapWindow+5)})
	testHookAfterRead = func(path string, attempt int) {
		if path == big && attempt == 0 {
			// The next window lies beyond the new end of file: touching it
			// raises SIGBUS, which must become a retry, not a crash.
			os.Truncate(big, 2<<20)
		}
	}
	defer func() { testHookAfterRead = nil }()
	res := run(t, DefaultOptions(src))
	if len(res.Changed) != 0 || len(res.Manifest.Files) != 1 {
		t.Fatalf("changed %v, files %v", res.Changed, paths(res.Manifest.Files))
	}
	if f := res.Manifest.Files[0]; f.FileSize != 2<<20 || f.Hexdigest != sum(strings.Repeat("m", 2<<20)) {
		t.Fatalf("after truncation the manifest holds size %d, hexdigest %s", f.FileSize, f.Hexdigest)
	}
}

func TestManifestJSONRoundTripsEveryString(t *testing.T) {
	tricky := []string{`quote"d`, `back\slash`, "tab\there", "new\nline", "ctl\x01\x1f", "uni-ü-東京-🙂", "sep\u2028\u2029", "<html>&amp;", "del\x7f"}
	h := sum(strings.Repeat("x", 400))
	m := &Manifest{Version: ManifestVersion, HashAlgorithm: HashAlgorithm, RootGlobs: []string{"**", `a"b`}, ExcludeGlobs: []string{},
		Start: time.Date(2026, 1, 2, 3, 4, 5, 6, time.UTC), End: time.Date(2026, 1, 2, 3, 4, 6, 0, time.FixedZone("x", 3600)), Node: "nöde\"1",
		Root: &Dir{RelativePath: ".", Mode: 0o700, MtimeNs: -5}}
	for i, s := range tricky {
		m.Files = append(m.Files, File{RelativePath: fmt.Sprintf("%02d-%s", i, s), FileSize: 400, MtimeNs: int64(-i), Mode: 0o4755, Hexdigest: h, StoredFileSize: 7, ShouldBeBundled: i%2 == 0})
		m.Symlinks = append(m.Symlinks, Symlink{RelativePath: fmt.Sprintf("l%02d", i), Target: s})
		m.Dirs = append(m.Dirs, Dir{RelativePath: fmt.Sprintf("d%02d-%s", i, s), Mode: 0o755})
	}
	m.Files = append(m.Files, File{RelativePath: "zz-embedded", FileSize: 2, ContentB64: "aGk="})
	m.EmptyDirs = []string{"e1"}
	m.SetHashes()
	if err := m.Validate(); err != nil {
		t.Fatal(err)
	}
	data, err := m.Encode()
	if err != nil {
		t.Fatal(err)
	}
	if !json.Valid(data) {
		t.Fatalf("not valid JSON: %s", data)
	}
	back, err := DecodeManifest(data)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(m, back, cmp.Comparer(func(a, b time.Time) bool { return a.Equal(b) })); diff != "" {
		t.Fatalf("round trip (-want +got):\n%s", diff)
	}
	// encoding/json reads what the standard encoder would have written.
	var std Manifest
	std1, _ := json.Marshal(m)
	json.Unmarshal(std1, &std)
	if diff := cmp.Diff(&std, back, cmp.Comparer(func(a, b time.Time) bool { return a.Equal(b) })); diff != "" {
		t.Fatalf("differs from encoding/json (-std +ours):\n%s", diff)
	}
}

func TestSymlinkWithInvalidUTF8TargetIsReported(t *testing.T) {
	src := t.TempDir()
	writeTree(t, src, map[string]string{"ok": "fine"})
	os.Symlink("bad-\xff-target", filepath.Join(src, "bad-link"))
	res := run(t, DefaultOptions(src))
	if diff := cmp.Diff([]string{"bad-link"}, problemPaths(res.Unreadable)); diff != "" {
		t.Fatalf("unreadable (-want +got):\n%s", diff)
	}
	if len(res.Manifest.Symlinks) != 0 {
		t.Fatal("a symlink whose target JSON would change was stored")
	}
}

func TestWriteJSONEqualsEncode(t *testing.T) {
	m := benchManifest(3000) // well over the 64 KiB a piece
	var buf bytes.Buffer
	if err := m.WriteJSON(&buf); err != nil {
		t.Fatal(err)
	}
	whole, _ := m.Encode()
	if !bytes.Equal(buf.Bytes(), whole) {
		t.Fatalf("streamed encoding (%d bytes) differs from the whole encoding (%d bytes)", buf.Len(), len(whole))
	}
}
