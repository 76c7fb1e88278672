package restore

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/deltabackup/deltabackup/hashstore"
	"github.com/deltabackup/deltabackup/hashstore/storetest"
	"github.com/deltabackup/deltabackup/snapshot"
	"github.com/deltabackup/deltabackup/snapshot/digest"
	"github.com/deltabackup/deltabackup/upload"
)

// backupTree writes files (path → content, mode) under a new source, backs
// it up into a memory repository and returns the store and the root tree.
func backupTree(t *testing.T, files map[string]string, modes map[string]os.FileMode) (*hashstore.Store, digest.Digest) {
	t.Helper()
	ctx := context.Background()
	src := t.TempDir()
	for rel, content := range files {
		p := filepath.Join(src, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		if m, ok := modes[rel]; ok {
			if err := os.Chmod(p, m); err != nil {
				t.Fatal(err)
			}
		}
	}
	store, err := hashstore.Init(ctx, hashstore.NewMemory(), storetest.Options(hashstore.Options{}))
	if err != nil {
		t.Fatal(err)
	}
	sum, err := upload.Backup(ctx, store, src, snapshot.DefaultOptions(), upload.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return store, sum.Record.Root
}

// restoreInto restores root from store into target.
func restoreInto(store *hashstore.Store, root digest.Digest, target string, opts Options) (*Result, error) {
	return Restore(context.Background(), &upload.Trees{Store: store}, root, target, []Source{StoreSource(store)}, opts)
}

// TestRestoreNeverWritesThroughASwappedDirectory is the audit's M2: while
// a root restore runs, a user swaps a directory they own in the target for
// a symbolic link to another user's directory (inside the target). No file
// may land there; the file below the link is refused instead.
func TestRestoreNeverWritesThroughASwappedDirectory(t *testing.T) {
	attackerKey := "ssh-ed25519 AAAA" + strings.Repeat("k", 300) + " attacker"
	store, m := backupTree(t, map[string]string{
		"aaa-first":                  "tiny", // embedded: written before every object
		"home/u/sub/authorized_keys": attackerKey,
		"home/v/.ssh/known_hosts":    strings.Repeat("h", 400),
	}, nil)
	target := t.TempDir()
	var once sync.Once
	swapped := false
	writeHook = func(p []byte) error {
		if len(p) < 300 {
			return nil // the embedded file: the directories may not exist yet
		}
		once.Do(func() {
			sub := filepath.Join(target, "home/u/sub")
			if err := os.Rename(sub, sub+".orig"); err != nil {
				t.Error(err)
			}
			if err := os.Symlink("../v/.ssh", sub); err != nil {
				t.Error(err)
			}
			swapped = true
		})
		return nil
	}
	defer func() { writeHook = nil }()
	_, err := restoreInto(store, m, target, Options{Parallel: 1, PerSource: 1})
	var incomplete *IncompleteError
	if err != nil && !errors.As(err, &incomplete) {
		t.Fatal(err)
	}
	if !swapped {
		t.Fatal("the directory was never swapped: the test proves nothing")
	}
	if data, err := os.ReadFile(filepath.Join(target, "home/v/.ssh/authorized_keys")); err == nil {
		t.Fatalf("the restore wrote through the swapped directory into another user's .ssh: %q", data[:20])
	}
	entries, _ := os.ReadDir(filepath.Join(target, "home/v/.ssh"))
	for _, e := range entries {
		if e.Name() != "known_hosts" {
			t.Errorf("home/v/.ssh has %s, which the backup does not put there", e.Name())
		}
	}
}

// TestSetuidIsNotRestoredWithoutItsOwner is the audit's H2: setuid and
// setgid come back only together with the recorded owner, so a user's
// setuid program restored by root stays that user's, and one whose owner
// cannot be restored loses the bits instead of becoming the restoring
// user's (root's) setuid program.
func TestSetuidIsNotRestoredWithoutItsOwner(t *testing.T) {
	ctx := context.Background()
	store, _ := hashstore.Init(ctx, hashstore.NewMemory(), storetest.Options(hashstore.Options{}))
	content := strings.Repeat("E", 3000)
	id := digest.Of([]byte(content))
	if _, err := store.PutBytes(ctx, id, []byte(content)); err != nil {
		t.Fatal(err)
	}
	tr := &snapshot.Tree{Nodes: []snapshot.Node{
		{Name: "g", Type: snapshot.TypeFile, Mode: 0o2750, UID: 4242, GID: 4343, Size: 3000, ID: id},
		{Name: "myid", Type: snapshot.TypeFile, Mode: 0o4755, UID: 4242, GID: 4343, Size: 3000, ID: id},
	}}
	data, _ := tr.Encode()
	root := digest.Of(data)
	store.PutBytes(ctx, root, data)
	for _, asRoot := range []bool{false, true} {
		if asRoot && os.Geteuid() != 0 {
			continue
		}
		geteuid = func() int {
			if asRoot {
				return 0
			}
			return 4000 // someone else than the owner
		}
		for i, fresh := range []bool{true, false} {
			target := filepath.Join(t.TempDir(), "t")
			if !fresh {
				// Up to date already, with the bits set.
				if _, err := restoreInto(store, root, target, Options{}); err != nil {
					t.Fatal(err)
				}
				os.Chmod(filepath.Join(target, "myid"), 0o755|os.ModeSetuid)
				os.Chmod(filepath.Join(target, "g"), 0o750|os.ModeSetgid)
			}
			if _, err := restoreInto(store, root, target, Options{}); err != nil {
				t.Fatal(err)
			}
			for rel, bits := range map[string]os.FileMode{"myid": 0o755 | os.ModeSetuid, "g": 0o750 | os.ModeSetgid} {
				want := bits
				if !asRoot {
					want = bits.Perm()
				}
				var st unix.Stat_t
				unix.Lstat(filepath.Join(target, rel), &st)
				fi, _ := os.Lstat(filepath.Join(target, rel))
				if fi.Mode() != want {
					t.Errorf("as root %v, run %d: %s restored with mode %v, want %v", asRoot, i, rel, fi.Mode(), want)
				}
				if asRoot && (st.Uid != 4242 || st.Gid != 4343) {
					t.Errorf("as root, %s owned by %d:%d, want 4242:4343", rel, st.Uid, st.Gid)
				}
			}
		}
	}
	geteuid = os.Geteuid
}

// TestHardLinkInTargetIsReplacedNotChanged is the audit's L3: a file in
// the target that is a hard link to a file elsewhere, with the content the
// backup has, must not get the backup's mode or mtime in place (that would
// change the file outside the target); it is replaced by a file of its own.
func TestHardLinkInTargetIsReplacedNotChanged(t *testing.T) {
	content := strings.Repeat("T", 2000)
	store, m := backupTree(t, map[string]string{"bin/tool": content}, map[string]os.FileMode{"bin/tool": 0o700})
	top := t.TempDir()
	target, outside := filepath.Join(top, "target"), filepath.Join(top, "outside")
	os.MkdirAll(filepath.Join(target, "bin"), 0o755)
	os.MkdirAll(outside, 0o755)
	os.WriteFile(filepath.Join(outside, "tool"), []byte(content), 0o644)
	if err := os.Link(filepath.Join(outside, "tool"), filepath.Join(target, "bin/tool")); err != nil {
		t.Fatal(err)
	}
	before, _ := os.Stat(filepath.Join(outside, "tool"))
	if _, err := restoreInto(store, m, target, Options{}); err != nil {
		t.Fatal(err)
	}
	after, _ := os.Stat(filepath.Join(outside, "tool"))
	if after.Mode() != before.Mode() || !after.ModTime().Equal(before.ModTime()) {
		t.Errorf("the file outside the target changed: mode %v → %v, mtime %v → %v", before.Mode(), after.Mode(), before.ModTime(), after.ModTime())
	}
	restored, _ := os.Stat(filepath.Join(target, "bin/tool"))
	if os.SameFile(restored, after) || restored.Mode() != 0o700 {
		t.Errorf("bin/tool is still the outside file, or has mode %v", restored.Mode())
	}
}

// blockingSource serves one object: its first bytes, then nothing until
// released, so a test can look at the target mid-transfer.
type blockingSource struct {
	store   *hashstore.Store
	once    sync.Once
	reached chan struct{}
	release chan struct{}
}

func (b *blockingSource) String() string { return "blocking source" }
func (b *blockingSource) Missing(ctx context.Context, h []digest.Digest) ([]digest.Digest, error) {
	return nil, nil
}
func (b *blockingSource) Get(ctx context.Context, h digest.Digest) (io.ReadCloser, error) {
	rc, err := b.store.Get(ctx, h)
	if err != nil {
		return nil, err
	}
	return &blockingReader{r: rc, b: b}, nil
}

type blockingReader struct {
	r    io.ReadCloser
	b    *blockingSource
	read int
}

func (r *blockingReader) Read(p []byte) (int, error) {
	if r.read >= 1<<20 {
		r.b.once.Do(func() { close(r.b.reached) })
		<-r.b.release
		return 0, errors.New("source gave up")
	}
	n, err := r.r.Read(p[:min(len(p), 1<<20-r.read)])
	r.read += n
	return n, err
}
func (r *blockingReader) Close() error { return r.r.Close() }

// TestPreallocationFollowsVerifiedBytes is the audit's L4: a tree may
// claim any size for a content. Blocks are reserved only a step ahead of
// the bytes that arrived, so a lying tree cannot fill the target.
func TestPreallocationFollowsVerifiedBytes(t *testing.T) {
	ctx := context.Background()
	store, _ := hashstore.Init(ctx, hashstore.NewMemory(), storetest.Options(hashstore.Options{}))
	content := []byte(strings.Repeat("x", 2<<20))
	id := digest.Of(content)
	store.PutBytes(ctx, id, content)
	// The forged tree claims 1.5 GB for the 2 MiB content.
	data, _ := (&snapshot.Tree{Nodes: []snapshot.Node{{Name: "big", Type: snapshot.TypeFile, Mode: 0o644, Size: 1_500_000_000, ID: id}}}).Encode()
	root := digest.Of(data)
	store.PutBytes(ctx, root, data)
	target := t.TempDir()
	src := &blockingSource{store: store, reached: make(chan struct{}), release: make(chan struct{})}
	done := make(chan error, 1)
	go func() {
		_, err := Restore(ctx, &upload.Trees{Store: store}, root, target, []Source{src}, Options{})
		done <- err
	}()
	<-src.reached
	var reserved int64
	entries, _ := os.ReadDir(target)
	for _, e := range entries {
		var st unix.Stat_t
		if unix.Stat(filepath.Join(target, e.Name()), &st) == nil {
			reserved += st.Blocks * 512
		}
	}
	close(src.release)
	<-done
	if reserved > 200<<20 {
		t.Fatalf("%d MB reserved in the target after 1 MiB arrived", reserved>>20)
	}
}

// TestUsersFilesNamedLikeTemporariesAreKept is the audit's L6: restore
// removes the temporary files an interrupted run left, not a user's file
// whose name merely starts the same way.
func TestUsersFilesNamedLikeTemporariesAreKept(t *testing.T) {
	store, m := backupTree(t, map[string]string{"docs/readme": strings.Repeat("r", 500)}, nil)
	target := t.TempDir()
	os.MkdirAll(filepath.Join(target, "docs"), 0o755)
	mine := filepath.Join(target, "docs/.deltabackup-tmp-mynotes")
	os.WriteFile(mine, []byte("mine"), 0o644)
	if _, err := restoreInto(store, m, target, Options{}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(mine); err != nil {
		t.Fatalf("the user's file was removed: %v", err)
	}
}
