package upload_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/deltabackup/deltabackup/hashstore"
	"github.com/deltabackup/deltabackup/hashstore/storetest"
	"github.com/deltabackup/deltabackup/restore/restoretest"
	"github.com/deltabackup/deltabackup/snapshot"
	"github.com/deltabackup/deltabackup/snapshot/digest"
	"github.com/deltabackup/deltabackup/upload"
)

func TestIncrementalUploadsOnlyWhatChanged(t *testing.T) {
	ctx := context.Background()
	store, err := hashstore.Init(ctx, hashstore.NewMemory(), storetest.Options(hashstore.Options{}))
	if err != nil {
		t.Fatal(err)
	}
	src := t.TempDir()
	for i, c := range []string{"a", "b", "c", "d", "e"} {
		write(t, src, "dir/"+c, strings.Repeat(c, 1000*(i+1)))
	}
	write(t, src, "dup", strings.Repeat("a", 1000)) // same content as dir/a
	write(t, src, "tiny", "embedded")
	time.Sleep(250 * time.Millisecond) // past the cache's racy window
	cacheDir := t.TempDir()

	first := backup(t, store, src, cacheDir)
	if first.UploadedObjects != 5 || first.TreesStored != 2 {
		t.Fatalf("first backup stored %d objects and %d trees, want 5 distinct contents and 2 trees", first.UploadedObjects, first.TreesStored)
	}
	if first.UploadedContentBytes != 15000 {
		t.Fatalf("first backup uploaded %d content bytes, want 15000", first.UploadedContentBytes)
	}
	if first.UploadedBytes >= 15000 {
		t.Fatalf("repetitive content stored in %d bytes: not compressed", first.UploadedBytes)
	}

	second := backup(t, store, src, cacheDir)
	if second.UploadedObjects != 0 || second.TreesStored != 0 || second.Snapshot.Stats.HashedBytes != 0 {
		t.Fatalf("no-change backup: stored %d objects and %d trees, hashed %d bytes; want nothing",
			second.UploadedObjects, second.TreesStored, second.Snapshot.Stats.HashedBytes)
	}
	if second.Record.Root != first.Record.Root || second.Record.Name == first.Record.Name {
		t.Fatalf("no-change backup: root %s (want %s), name %s", second.Record.Root, first.Record.Root, second.Record.Name)
	}
	if second.Record.Parent != first.Record.Name {
		t.Fatalf("parent %q, want the first backup", second.Record.Parent)
	}

	write(t, src, "dir/b", strings.Repeat("B", 2000))               // changed
	write(t, src, "dir/c", strings.Repeat("a", 1000))               // changed to an existing content
	write(t, src, "new", strings.Repeat("n", 700))                  // added
	os.Remove(filepath.Join(src, "dir/e"))                          // deleted
	os.Chtimes(filepath.Join(src, "dir/d"), time.Now(), time.Now()) // touched, same content
	time.Sleep(250 * time.Millisecond)
	third := backup(t, store, src, cacheDir)
	if third.UploadedObjects != 2 || third.TreesStored != 2 {
		t.Fatalf("after changes stored %d objects and %d trees, want 2 (dir/b and new) and 2", third.UploadedObjects, third.TreesStored)
	}
	if third.Snapshot.Stats.HashedBytes != 2000+1000+700+4000 {
		t.Fatalf("after changes hashed %d bytes, want only the 4 changed or touched files", third.Snapshot.Stats.HashedBytes)
	}
	// Every record restores to the state it was taken from.
	target := restoreTo(t, store, third.Record)
	restoretest.CompareTrees(t, src, target)
	first1 := restoreTo(t, store, first.Record)
	if data, _ := os.ReadFile(filepath.Join(first1, "dir/e")); string(data) != strings.Repeat("e", 5000) {
		t.Fatal("the first backup lost a file a later one deleted")
	}
}

// failingBackend fails every Put whose key starts with failPrefix once
// armed.
type failingBackend struct {
	hashstore.Backend
	failPrefix string
	puts       atomic.Int64
}

func (f *failingBackend) Put(ctx context.Context, key string, r io.Reader, size int64) error {
	f.puts.Add(1)
	if f.failPrefix != "" && strings.HasPrefix(key, f.failPrefix) {
		io.Copy(io.Discard, r)
		return errors.New("injected storage failure")
	}
	return f.Backend.Put(ctx, key, r, size)
}

func TestStorageFailureLeavesNoRecord(t *testing.T) {
	ctx := context.Background()
	src := t.TempDir()
	for i := range 20 {
		write(t, src, "f"+strings.Repeat("x", i), strings.Repeat(string(rune('a'+i)), 500+i))
	}
	write(t, src, "big", strings.Repeat("B", 700<<10))
	for _, prefix := range []string{"objects/", "packs/", "backups/"} {
		t.Run(prefix, func(t *testing.T) {
			b := &failingBackend{Backend: hashstore.NewMemory()}
			store, err := hashstore.Init(ctx, b, storetest.Options(hashstore.Options{}))
			if err != nil {
				t.Fatal(err)
			}
			b.failPrefix = prefix
			_, err = upload.Backup(ctx, store, src, snapshot.DefaultOptions(), upload.Options{})
			if err == nil || !strings.Contains(err.Error(), "injected storage failure") {
				t.Fatalf("backup with failing storage: %v", err)
			}
			b.failPrefix = ""
			records, err := store.Backups(ctx)
			if err != nil || len(records) != 0 {
				t.Fatalf("a failed backup left records %v (%v)", records, err)
			}
			// Storage is back: the rerun completes.
			sum, err := upload.Backup(ctx, store, src, snapshot.DefaultOptions(), upload.Options{})
			if err != nil {
				t.Fatal(err)
			}
			if sum.Record.Stats.Files != 21 {
				t.Fatalf("rerun recorded %d files", sum.Record.Stats.Files)
			}
			restoretest.CompareTrees(t, src, restoreTo(t, store, sum.Record))
		})
	}
}

func TestExplicitNameMustBeFree(t *testing.T) {
	ctx := context.Background()
	store, _ := hashstore.Init(ctx, hashstore.NewMemory(), storetest.Options(hashstore.Options{}))
	src := t.TempDir()
	write(t, src, "a", strings.Repeat("a", 400))
	opts := upload.Options{Name: "nightly-1", Tags: []string{"nightly", "db"}}
	sum, err := upload.Backup(ctx, store, src, snapshot.DefaultOptions(), opts)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(sum.Record.Tags, ",") != "nightly,db" {
		t.Fatalf("tags %v", sum.Record.Tags)
	}
	if _, err := upload.Backup(ctx, store, src, snapshot.DefaultOptions(), opts); !errors.Is(err, hashstore.ErrBackupExists) {
		t.Fatalf("second backup with the same name: %v, want ErrBackupExists", err)
	}
}

// TestContentChangedAfterHashingIsReadAgain: a large file changes
// between its hash and the second read that stores it; the backup never
// stores the new bytes under the old id, reads the file again, and
// records what it stored.
//
// The contents are random, so they are stored raw and the store reads
// only its sample (1 MiB) and a segment ahead of the upload: the rewrite
// when the upload starts lands in the middle of the second read. (A
// compressible content may be read whole before the upload starts; its
// read then saw one version and the test would prove nothing.)
func TestContentChangedAfterHashingIsReadAgain(t *testing.T) {
	ctx := context.Background()
	src := t.TempDir()
	const size = 8 << 20
	before, after := stormContent("big", 1, size), stormContent("big", 2, size)
	write(t, src, "big", string(before))
	write(t, src, "steady", strings.Repeat("3", 3000))
	b := &rewritingBackend{Backend: hashstore.NewMemory(), path: filepath.Join(src, "big"), content: after}
	// Whole files only: a chunked file is read once, its chunks stored
	// from the bytes hashed (TestFileChangingWhileChunked).
	store, _ := hashstore.Init(ctx, b, storetest.Options(hashstore.Options{Chunking: &hashstore.ChunkingConfig{}}))
	sum, err := upload.Backup(ctx, store, src, snapshot.DefaultOptions(), upload.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if !b.rewrote {
		t.Fatal("the file was not rewritten during the upload; the test proves nothing")
	}
	n := files(t, store, sum.Record)["big"]
	if n == nil || n.ID != digest.Of(after) {
		t.Fatalf("big recorded as %+v, want its new content", n)
	}
	if has, _ := store.Has(ctx, digest.Of(before)); has {
		t.Fatal("an object is stored under the id of a content no longer in the file")
	}
	restoretest.CompareTrees(t, src, restoreTo(t, store, sum.Record))
}

// rewritingBackend rewrites path with content once, when the first loose
// object's upload starts.
type rewritingBackend struct {
	hashstore.Backend
	path    string
	content []byte
	rewrote bool
}

func (b *rewritingBackend) Put(ctx context.Context, key string, r io.Reader, size int64) error {
	if strings.HasPrefix(key, "objects/") && !b.rewrote {
		b.rewrote = true
		if err := os.WriteFile(b.path, b.content, 0o644); err != nil {
			return err
		}
	}
	return b.Backend.Put(ctx, key, r, size)
}

// slowIndexBackend answers reads of index files late and with an error.
type slowIndexBackend struct {
	hashstore.Backend
	delay time.Duration
}

func (b *slowIndexBackend) Get(ctx context.Context, key string) (io.ReadCloser, error) {
	if strings.HasPrefix(key, "index/") {
		time.Sleep(b.delay)
		return nil, errors.New("injected index read failure")
	}
	return b.Backend.Get(ctx, key)
}

// The walk does not wait for the pack index: what it finds before the
// index is read waits in memory. If the index then cannot be read, the
// backup fails and writes no record, rather than leaving what waited
// unstored.
func TestUnreadableIndexFailsTheBackup(t *testing.T) {
	ctx := context.Background()
	src := t.TempDir()
	for i := range 10 {
		write(t, src, fmt.Sprintf("d%d/f", i), strings.Repeat(string(rune('a'+i)), 700))
	}
	mem := hashstore.NewMemory()
	store, err := hashstore.Init(ctx, mem, storetest.Options(hashstore.Options{}))
	if err != nil {
		t.Fatal(err)
	}
	first := backup(t, store, src, "")
	for i := range 10 {
		write(t, src, fmt.Sprintf("d%d/f", i), strings.Repeat(string(rune('A'+i)), 900))
	}
	// A second process: its index is read from storage, slowly enough
	// that the walk ends first.
	slow := &slowIndexBackend{Backend: mem, delay: time.Second}
	store2, err := hashstore.Open(ctx, slow, storetest.Options(hashstore.Options{}))
	if err != nil {
		t.Fatal(err)
	}
	_, err = upload.Backup(ctx, store2, src, snapshot.DefaultOptions(), upload.Options{})
	if err == nil || !strings.Contains(err.Error(), "injected index read failure") {
		t.Fatalf("backup with an unreadable index: %v", err)
	}
	records, err := store.Backups(ctx)
	if err != nil || len(records) != 1 || records[0].Name != first.Record.Name {
		t.Fatalf("records after the failed backup: %v (%v)", records, err)
	}
	// With the index readable the same backup stores the new contents.
	slow.delay = 0
	sum, err := upload.Backup(ctx, store, src, snapshot.DefaultOptions(), upload.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if sum.UploadedObjects != 10 {
		t.Fatalf("uploaded %d objects, want the 10 changed files", sum.UploadedObjects)
	}
	restoretest.CompareTrees(t, src, restoreTo(t, store, sum.Record))
}
