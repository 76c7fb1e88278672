package restore_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/deltabackup/deltabackup/snapshot/digest"
	"github.com/deltabackup/deltabackup/snapshot/treetest"

	"github.com/deltabackup/deltabackup/hashstore"
	"github.com/deltabackup/deltabackup/hashstore/storetest"
	"github.com/deltabackup/deltabackup/restore"
	"github.com/deltabackup/deltabackup/restore/restoretest"
	"github.com/deltabackup/deltabackup/snapshot"
	"github.com/deltabackup/deltabackup/upload"
)

var old = time.Date(2022, 3, 4, 5, 6, 7, 890123456, time.UTC)

// makeTree builds a source tree with every kind of entry a restore must
// reproduce.
func makeTree(t *testing.T) string {
	t.Helper()
	src := t.TempDir()
	r := rand.New(rand.NewPCG(1, 2))
	random := func(n int) []byte {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(r.Uint32())
		}
		return b
	}
	files := map[string][]byte{
		"README":            []byte("tiny"),
		"empty":             nil,
		"bin/tool":          random(70000),
		"data/a/big":        random(3 << 20),
		"data/a/same1":      bytes.Repeat([]byte("same"), 1000),
		"data/b/same2":      bytes.Repeat([]byte("same"), 1000),
		"data/b/deep/x.txt": bytes.Repeat([]byte("text "), 5000),
	}
	for rel, content := range files {
		p := filepath.Join(src, rel)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, content, 0o644); err != nil {
			t.Fatal(err)
		}
		os.Chtimes(p, old, old)
	}
	os.Chmod(filepath.Join(src, "bin/tool"), 0o755)
	os.Chmod(filepath.Join(src, "data/a/big"), 0o600)
	os.Chmod(filepath.Join(src, "data/b/same2"), 0o2640)
	os.MkdirAll(filepath.Join(src, "empty-dir/nested-empty"), 0o750)
	os.Symlink("../README", filepath.Join(src, "data/readme-link"))
	os.Symlink("/absolute/elsewhere", filepath.Join(src, "abs-link"))
	os.Symlink("data/a", filepath.Join(src, "dir-link"))
	os.Chmod(filepath.Join(src, "data/b"), 0o700)
	os.Chmod(src, 0o750)
	for _, d := range []string{"data/b/deep", "data/b", "data/a", "data", "bin", "empty-dir/nested-empty", "empty-dir", "."} {
		os.Chtimes(filepath.Join(src, d), old.Add(time.Hour), old.Add(time.Hour))
	}
	return src
}

type fixture struct {
	store  *hashstore.Store
	mem    *hashstore.Memory
	src    string
	name   string
	root   digest.Digest
	trees  snapshot.TreeReader
	source []restore.Source
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	return newFixtureWith(t, snapshot.DefaultOptions())
}

func newFixtureWith(t *testing.T, opts snapshot.Options) *fixture {
	t.Helper()
	ctx := context.Background()
	mem := hashstore.NewMemory()
	store, err := hashstore.Init(ctx, mem, storetest.Options(hashstore.Options{}))
	if err != nil {
		t.Fatal(err)
	}
	src := makeTree(t)
	sum, err := upload.Backup(ctx, store, src, opts, upload.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return &fixture{store: store, mem: mem, src: src, name: sum.Record.Name, root: sum.Record.Root, trees: &upload.Trees{Store: store},
		source: []restore.Source{restore.StoreSource(store)}}
}

func (f *fixture) restore(t *testing.T, target string) (*restore.Result, error) {
	t.Helper()
	return restore.Restore(context.Background(), f.trees, f.root, target, f.source, restore.Options{Parallel: 4})
}

// files returns the backup's regular files by path.
func (f *fixture) files(t *testing.T) map[string]*snapshot.Node {
	t.Helper()
	return treetest.FileNodes(t, f.trees, f.root)
}

// hashes returns the backup's distinct contents.
func (f *fixture) hashes(t *testing.T) []snapshot.Hash {
	t.Helper()
	var out []snapshot.Hash
	if err := snapshot.Hashes(context.Background(), f.trees, f.root, func(h snapshot.Hash) error { out = append(out, h); return nil }); err != nil {
		t.Fatal(err)
	}
	return out
}

func TestRestoreRoundTrip(t *testing.T) {
	f := newFixture(t)
	target := filepath.Join(t.TempDir(), "new")
	res, err := f.restore(t, target)
	if err != nil {
		t.Fatal(err)
	}
	restoretest.CompareTrees(t, f.src, target)
	if res.ObjectsDownloaded != int64(len(f.hashes(t))) {
		t.Errorf("downloaded %d objects, want each of the %d distinct contents once", res.ObjectsDownloaded, len(f.hashes(t)))
	}
	if res.FilesWritten != int64(len(f.files(t))) {
		t.Errorf("wrote %d files, want %d", res.FilesWritten, len(f.files(t)))
	}
}

func TestRestoreResumesAndRepairs(t *testing.T) {
	f := newFixture(t)
	target := t.TempDir()
	if _, err := f.restore(t, target); err != nil {
		t.Fatal(err)
	}
	// Damage the restore: a file removed, one with same size and other
	// content, one truncated, a directory mode and a leftover temp file.
	os.Remove(filepath.Join(target, "bin/tool"))
	big := filepath.Join(target, "data/a/big")
	data, _ := os.ReadFile(big)
	data[100] ^= 1
	os.WriteFile(big, data, 0o600)
	os.Truncate(filepath.Join(target, "data/b/deep/x.txt"), 10)
	os.WriteFile(filepath.Join(target, "data/.deltabackup-tmp-0123456789abcdef"), []byte("partial"), 0o600) // left by an interrupted run
	os.Chmod(filepath.Join(target, "data/b"), 0o500)

	res, err := f.restore(t, target)
	if err != nil {
		t.Fatal(err)
	}
	if res.ObjectsDownloaded != 3 {
		t.Errorf("resume downloaded %d objects, want only the 3 missing or wrong", res.ObjectsDownloaded)
	}
	if res.FilesUpToDate != int64(len(f.files(t)))-3 {
		t.Errorf("resume found %d files up to date, want %d", res.FilesUpToDate, len(f.files(t))-3)
	}
	restoretest.CompareTrees(t, f.src, target)
}

// flipStoredByte damages the stored payload of one object, loose or
// packed, and returns a function that repairs it.
func flipStoredByte(t *testing.T, store *hashstore.Store, mem *hashstore.Memory, hexdigest digest.Digest) (repair func()) {
	t.Helper()
	ctx := context.Background()
	loc, err := store.Locate(ctx, hexdigest)
	if err != nil {
		t.Fatal(err)
	}
	rc, err := mem.Get(ctx, loc.Key)
	if err != nil {
		t.Fatal(err)
	}
	good, _ := io.ReadAll(rc)
	bad := bytes.Clone(good)
	bad[loc.Offset+loc.Length-5] ^= 0x10
	mem.Put(ctx, loc.Key, bytes.NewReader(bad), int64(len(bad)))
	return func() { mem.Put(ctx, loc.Key, bytes.NewReader(good), int64(len(good))) }
}

func TestCorruptObjectFailsOnlyItsFiles(t *testing.T) {
	f := newFixture(t)
	victim := f.files(t)["data/a/same1"]
	repair := flipStoredByte(t, f.store, f.mem, victim.ID)
	target := t.TempDir()
	res, err := f.restore(t, target)
	var inc *restore.IncompleteError
	if !errors.As(err, &inc) {
		t.Fatalf("restore with a corrupt object: %v, want an IncompleteError", err)
	}
	if !errors.Is(err, hashstore.ErrCorrupt) {
		t.Errorf("errors.Is(%v, ErrCorrupt) is false: the failures are not reachable", err)
	}
	var failed []string
	for _, fe := range res.Failed {
		failed = append(failed, fe.Path)
		if !errors.Is(fe.Err, hashstore.ErrCorrupt) || !strings.Contains(fe.Err.Error(), victim.ID.String()) {
			t.Errorf("failure of %s does not name the corrupt object: %v", fe.Path, fe.Err)
		}
	}
	if strings.Join(failed, ",") != "data/a/same1,data/b/same2" {
		t.Fatalf("failed files %v, want both files with the corrupt content", failed)
	}
	for _, rel := range failed {
		if _, err := os.Lstat(filepath.Join(target, rel)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s was written although its content is corrupt", rel)
		}
	}
	entries, _ := os.ReadDir(filepath.Join(target, "data/a"))
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), ".deltabackup-tmp-") {
			t.Errorf("temporary file %s left behind", e.Name())
		}
	}
	if data, err := os.ReadFile(filepath.Join(target, "data/a/big")); err != nil || len(data) != 3<<20 {
		t.Fatalf("an unaffected file was not restored: %v", err)
	}
	// Fix the object and run again: the restore completes.
	repair()
	res, err = f.restore(t, target)
	if err != nil {
		t.Fatal(err)
	}
	if res.ObjectsDownloaded != 1 {
		t.Errorf("second run downloaded %d objects, want 1", res.ObjectsDownloaded)
	}
	restoretest.CompareTrees(t, f.src, target)
}

// TestMissingObjectIsNamed: a chunk of a chunked file is gone; the file
// fails, named with the chunk, and nothing else does.
func TestMissingObjectIsNamed(t *testing.T) {
	opts := snapshot.DefaultOptions()
	opts.MinDeltaFileSize = 64 << 10 // chunks are loose objects
	f := newFixtureWith(t, opts)
	var h digest.Digest
	for _, hash := range f.hashes(t) {
		if hash.Size >= opts.MinDeltaFileSize {
			h = hash.Hexdigest // a loose object, which can be deleted alone
		}
	}
	if h.IsZero() {
		t.Fatal("no loose object to delete")
	}
	f.mem.Delete(context.Background(), f.store.ObjectKey(h))
	res, err := f.restore(t, t.TempDir())
	if err == nil || len(res.Failed) == 0 {
		t.Fatal("restore with a missing object succeeded")
	}
	if !strings.Contains(res.Failed[0].Err.Error(), "in none of the sources") || res.Failed[0].ID != h {
		t.Fatalf("failure: %v", res.Failed[0])
	}
}

// TestHostileTreesWriteNothing: a repository holding hand-made trees
// (a name "..", "/" in a name, a hard-link group whose names disagree, a
// tree that references itself) is refused before anything is written.
func TestHostileTreesWriteNothing(t *testing.T) {
	ctx := context.Background()
	content := digest.Of([]byte(strings.Repeat("x", 400)))
	file := func(name string, n snapshot.Node) snapshot.Node {
		n.Name, n.Type = name, snapshot.TypeFile
		if n.ID.IsZero() && n.Embedded == nil {
			n.Embedded = []byte{}
		}
		return n
	}
	cases := map[string]func(store *hashstore.Store) digest.Digest{
		// The names are patched into valid encodings, as a hostile writer
		// would: the decoder must refuse them.
		"dot dot": func(s *hashstore.Store) digest.Digest {
			return putPatched(t, s, &snapshot.Tree{Nodes: []snapshot.Node{file("xx", snapshot.Node{})}}, "xx", "..")
		},
		"slash in a name": func(s *hashstore.Store) digest.Digest {
			return putPatched(t, s, &snapshot.Tree{Nodes: []snapshot.Node{file("axb", snapshot.Node{})}}, "axb", "a/b")
		},
		"deep dot dot": func(s *hashstore.Store) digest.Digest {
			sub := putPatched(t, s, &snapshot.Tree{Nodes: []snapshot.Node{file("ok", snapshot.Node{}), file("zz", snapshot.Node{})}}, "zz", "..")
			return putTree(t, s, &snapshot.Tree{Nodes: []snapshot.Node{file("a", snapshot.Node{Size: 2, Embedded: []byte("hi")}), {Name: "d", Type: snapshot.TypeDir, Subtree: sub}}})
		},
		"hard links that disagree": func(s *hashstore.Store) digest.Digest {
			return putTree(t, s, &snapshot.Tree{Nodes: []snapshot.Node{
				file("a", snapshot.Node{Size: 400, ID: content, LinkDev: 1, LinkIno: 7}),
				file("b", snapshot.Node{Size: 2, Embedded: []byte("hi"), LinkDev: 1, LinkIno: 7}),
			}})
		},
	}
	for name, build := range cases {
		t.Run(name, func(t *testing.T) {
			parent := t.TempDir()
			target := filepath.Join(parent, "target")
			store, _ := hashstore.Init(ctx, hashstore.NewMemory(), storetest.Options(hashstore.Options{}))
			root := build(store)
			_, err := restore.Restore(ctx, &upload.Trees{Store: store}, root, target, []restore.Source{restore.StoreSource(store)}, restore.Options{})
			if err == nil || !strings.Contains(err.Error(), "refusing to restore") {
				t.Fatalf("hostile tree: %v, want a refusal", err)
			}
			if entries, _ := os.ReadDir(parent); len(entries) != 0 {
				t.Fatalf("something was written: %v", entries)
			}
		})
	}
}

// putTree stores a tree as a backup writes it.
func putTree(t *testing.T, s *hashstore.Store, tr *snapshot.Tree) digest.Digest {
	t.Helper()
	data, err := tr.Encode()
	if err != nil {
		t.Fatal(err)
	}
	id := digest.Of(data)
	if _, err := s.PutBytes(context.Background(), id, data); err != nil {
		t.Fatal(err)
	}
	return id
}

// putPatched stores the encoding of tr with the bytes from replaced by to
// (as long): a tree no honest writer makes.
func putPatched(t *testing.T, s *hashstore.Store, tr *snapshot.Tree, from, to string) digest.Digest {
	t.Helper()
	data, err := tr.Encode()
	if err != nil {
		t.Fatal(err)
	}
	data = bytes.Replace(data, []byte(from), []byte(to), 1)
	id := digest.Of(data)
	if _, err := s.PutBytes(context.Background(), id, data); err != nil {
		t.Fatal(err)
	}
	return id
}

func TestExistingSymlinkInTargetIsNotFollowed(t *testing.T) {
	f := newFixture(t)
	outside := t.TempDir()
	target := t.TempDir()
	// A target left with symlinks where the backup has directories, one
	// pointing outside and one inside the target.
	os.Symlink(outside, filepath.Join(target, "data"))
	os.Mkdir(filepath.Join(target, "elsewhere"), 0o755)
	os.Symlink("elsewhere", filepath.Join(target, "bin"))
	if _, err := f.restore(t, target); err != nil {
		t.Fatal(err)
	}
	if entries, _ := os.ReadDir(outside); len(entries) != 0 {
		t.Fatalf("restore wrote through a symlink to outside the target: %v", entries)
	}
	if entries, _ := os.ReadDir(filepath.Join(target, "elsewhere")); len(entries) != 0 {
		t.Fatalf("restore wrote through a symlink in the target: %v", entries)
	}
	os.Remove(filepath.Join(target, "elsewhere"))
	if _, err := f.restore(t, target); err != nil { // puts the target's mtime back
		t.Fatal(err)
	}
	restoretest.CompareTrees(t, f.src, target)
}

// fakeSource holds some hashes, serves them from a store and counts bytes.
type fakeSource struct {
	name  string
	holds map[digest.Digest]bool
	store *hashstore.Store
	fail  bool
	lie   bool // serve other bytes than asked for, unverified
}

func (s *fakeSource) String() string { return s.name }

func (s *fakeSource) Missing(ctx context.Context, hs []digest.Digest) ([]digest.Digest, error) {
	var out []digest.Digest
	for _, h := range hs {
		if !s.holds[h] {
			out = append(out, h)
		}
	}
	return out, nil
}

func (s *fakeSource) Get(ctx context.Context, h digest.Digest) (io.ReadCloser, error) {
	if s.fail {
		return nil, fmt.Errorf("%s: connection refused", s.name)
	}
	if !s.holds[h] {
		return nil, hashstore.ErrNotFound
	}
	if s.lie {
		data, err := s.store.ReadAll(ctx, h, 1<<30)
		if err != nil {
			return nil, err
		}
		data[len(data)/2] ^= 1
		return io.NopCloser(bytes.NewReader(data)), nil
	}
	return s.store.Get(ctx, h)
}

func TestPlanBalancesBytesAcrossSources(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	var needed []snapshot.Hash
	for i := range 2000 {
		needed = append(needed, snapshot.Hash{Hexdigest: digest.Of([]byte(fmt.Sprint(i))), Size: int64(r.IntN(1 << 20))})
	}
	all := map[digest.Digest]bool{}
	for _, h := range needed {
		all[h.Hexdigest] = true
	}
	sources := []restore.Source{&fakeSource{name: "a", holds: all}, &fakeSource{name: "b", holds: all}, &fakeSource{name: "c", holds: all}}
	plan, err := restore.MakePlan(context.Background(), sources, needed)
	if err != nil {
		t.Fatal(err)
	}
	var total, lo, hi int64 = 0, 1 << 62, 0
	for _, b := range plan.Bytes {
		total += b
		lo, hi = min(lo, b), max(hi, b)
	}
	if float64(hi-lo) > 0.01*float64(total)/3 {
		t.Fatalf("bytes per source %v are not balanced", plan.Bytes)
	}
	// A content only one source holds goes to that source.
	only := map[digest.Digest]bool{needed[0].Hexdigest: true}
	sources = append(sources, &fakeSource{name: "d", holds: only})
	sources[0].(*fakeSource).holds = map[digest.Digest]bool{}
	sources[1].(*fakeSource).holds = map[digest.Digest]bool{}
	sources[2].(*fakeSource).holds = map[digest.Digest]bool{}
	plan, _ = restore.MakePlan(context.Background(), sources, needed[:2])
	if got := plan.Holders[needed[0].Hexdigest]; len(got) != 1 || got[0] != 3 {
		t.Fatalf("holders of a content only d has: %v", got)
	}
	if len(plan.Unavailable) != 1 || plan.Unavailable[0] != needed[1] {
		t.Fatalf("unavailable: %v", plan.Unavailable)
	}
}

func TestFailoverToAnotherSource(t *testing.T) {
	f := newFixture(t)
	all := map[digest.Digest]bool{}
	for _, h := range f.hashes(t) {
		all[h.Hexdigest] = true
	}
	broken := &fakeSource{name: "broken", holds: all, fail: true}
	good := &fakeSource{name: "good", holds: all, store: f.store}
	target := t.TempDir()
	res, err := restore.Restore(context.Background(), f.trees, f.root, target, []restore.Source{broken, good}, restore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if res.BytesPerSource[0] != 0 || res.BytesPerSource[1] == 0 {
		t.Fatalf("bytes per source %v", res.BytesPerSource)
	}
	restoretest.CompareTrees(t, f.src, target)
}

func TestReadOnlyDirectories(t *testing.T) {
	// A read-only directory in the backup must not stop files below it from
	// being restored, on a first run or a resumed one.
	f := newFixture(t)
	os.Chmod(filepath.Join(f.src, "data/b/deep"), 0o555)
	defer os.Chmod(filepath.Join(f.src, "data/b/deep"), 0o755)
	ctx := context.Background()
	sum, err := upload.Backup(ctx, f.store, f.src, snapshot.DefaultOptions(), upload.Options{})
	if err != nil {
		t.Fatal(err)
	}
	target := t.TempDir()
	for range 2 {
		if _, err := restore.Restore(ctx, f.trees, sum.Record.Root, target, f.source, restore.Options{}); err != nil {
			t.Fatal(err)
		}
	}
	fi, _ := os.Stat(filepath.Join(target, "data/b/deep"))
	if fi.Mode().Perm() != 0o555 {
		t.Fatalf("directory mode %v, want r-xr-xr-x", fi.Mode().Perm())
	}
	os.Chmod(filepath.Join(target, "data/b/deep"), 0o755)
}

func TestLyingSourceIsCaught(t *testing.T) {
	f := newFixture(t)
	all := map[digest.Digest]bool{}
	for _, h := range f.hashes(t) {
		all[h.Hexdigest] = true
	}
	liar := &fakeSource{name: "liar", holds: all, lie: true, store: f.store}
	target := t.TempDir()
	res, err := restore.Restore(context.Background(), f.trees, f.root, target, []restore.Source{liar}, restore.Options{})
	if err == nil {
		t.Fatal("restore from a source that sends wrong bytes succeeded")
	}
	for _, fe := range res.Failed {
		if !errors.Is(fe.Err, hashstore.ErrCorrupt) {
			t.Errorf("%s: %v, want a corruption error", fe.Path, fe.Err)
		}
	}
	if len(res.Failed) != len(f.files(t))-2 { // all but the two embedded files
		t.Fatalf("%d files failed, want %d", len(res.Failed), len(f.files(t))-2)
	}
	// With an honest second source, every file is restored from it.
	honest := &fakeSource{name: "honest", holds: all, store: f.store}
	res, err = restore.Restore(context.Background(), f.trees, f.root, target, []restore.Source{liar, honest}, restore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if res.BytesPerSource[0] != 0 {
		t.Fatalf("%d bytes were kept from the lying source", res.BytesPerSource[0])
	}
	restoretest.CompareTrees(t, f.src, target)
}
