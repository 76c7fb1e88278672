package upload_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/deltabackup/deltabackup/snapshot/digest"

	"github.com/deltabackup/deltabackup/hashstore"
	"github.com/deltabackup/deltabackup/restore"
	"github.com/deltabackup/deltabackup/snapshot"
	"github.com/deltabackup/deltabackup/upload"
)

var old = time.Date(2023, 1, 2, 3, 4, 5, 0, time.UTC)

func write(t *testing.T, root, rel, content string) {
	t.Helper()
	p := filepath.Join(root, rel)
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

func backup(t *testing.T, store *hashstore.Store, src string, cache *snapshot.StatCache) *upload.Summary {
	t.Helper()
	opts := snapshot.DefaultOptions(src)
	opts.Cache = cache
	sum, err := upload.Backup(context.Background(), store, opts, upload.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return sum
}

func TestIncrementalUploadsOnlyWhatChanged(t *testing.T) {
	ctx := context.Background()
	store, err := hashstore.Init(ctx, hashstore.NewMemory(), hashstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	src := t.TempDir()
	for i, c := range []string{"a", "b", "c", "d", "e"} {
		write(t, src, "dir/"+c, strings.Repeat(c, 1000*(i+1)))
	}
	write(t, src, "dup", strings.Repeat("a", 1000)) // same content as dir/a
	write(t, src, "tiny", "embedded")
	time.Sleep(250 * time.Millisecond) // past the stat cache's racy window
	cache := snapshot.NewMemoryStatCache()

	first := backup(t, store, src, cache)
	if got := first.Upload.UploadedObjects; got != 5 {
		t.Fatalf("first backup uploaded %d objects, want 5 distinct contents", got)
	}
	if first.Upload.UploadedContentBytes != 15000 {
		t.Fatalf("first backup uploaded %d content bytes, want 15000", first.Upload.UploadedContentBytes)
	}
	if first.Upload.UploadedBytes >= 15000 {
		t.Fatalf("repetitive content stored in %d bytes: not compressed", first.Upload.UploadedBytes)
	}

	second := backup(t, store, src, cache)
	if second.Upload.UploadedObjects != 0 || second.Snapshot.HashedBytes != 0 || second.Upload.PresentObjects != 5 {
		t.Fatalf("no-change backup: uploaded %d objects, hashed %d bytes, present %d; want 0, 0, 5",
			second.Upload.UploadedObjects, second.Snapshot.HashedBytes, second.Upload.PresentObjects)
	}
	if second.Upload.Record.Name == first.Upload.Record.Name {
		t.Fatal("two backups got the same name")
	}

	write(t, src, "dir/b", strings.Repeat("B", 2000))               // changed
	write(t, src, "dir/c", strings.Repeat("a", 1000))               // changed to an existing content
	write(t, src, "new", strings.Repeat("n", 700))                  // added
	os.Remove(filepath.Join(src, "dir/e"))                          // deleted
	os.Chtimes(filepath.Join(src, "dir/d"), time.Now(), time.Now()) // touched, same content
	time.Sleep(250 * time.Millisecond)
	third := backup(t, store, src, cache)
	if third.Upload.UploadedObjects != 2 {
		t.Fatalf("after changes uploaded %d objects, want 2 (dir/b and new)", third.Upload.UploadedObjects)
	}
	if third.Snapshot.HashedBytes != 2000+1000+700+4000 {
		t.Fatalf("after changes hashed %d bytes, want only the 4 changed or touched files", third.Snapshot.HashedBytes)
	}

	// Every record restores to the state it was taken from.
	_, m, err := restore.LoadManifest(ctx, store, third.Upload.Record.Name, hashstore.BackupFilter{})
	if err != nil {
		t.Fatal(err)
	}
	target := t.TempDir()
	if _, err := restore.Restore(ctx, m, []restore.Source{restore.StoreSource(store)}, restore.Options{Target: target}); err != nil {
		t.Fatal(err)
	}
	for rel, want := range map[string]string{"dir/b": strings.Repeat("B", 2000), "dir/c": strings.Repeat("a", 1000), "new": strings.Repeat("n", 700), "tiny": "embedded"} {
		got, err := os.ReadFile(filepath.Join(target, rel))
		if err != nil || string(got) != want {
			t.Fatalf("restored %s differs: %v", rel, err)
		}
	}
	if _, err := os.Stat(filepath.Join(target, "dir/e")); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("a deleted file came back")
	}
	for _, f := range m.Files {
		if !f.Embedded() && f.StoredFileSize <= 0 {
			t.Fatalf("%s has no stored_file_size", f.RelativePath)
		}
	}
}

func TestFileChangedAfterHashingIsNotStoredUnderItsKey(t *testing.T) {
	ctx := context.Background()
	store, _ := hashstore.Init(ctx, hashstore.NewMemory(), hashstore.Options{})
	src := t.TempDir()
	write(t, src, "changes", strings.Repeat("1", 3000))
	write(t, src, "twin-a", strings.Repeat("2", 3000))
	write(t, src, "twin-b", strings.Repeat("2", 3000))
	write(t, src, "steady", strings.Repeat("3", 3000))
	s, err := snapshot.New(snapshot.DefaultOptions(src))
	if err != nil {
		t.Fatal(err)
	}
	snap, err := s.Snapshot(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// Between hashing and upload: one file is rewritten, and one of two
	// files with the same content is too (the other can stand in).
	os.WriteFile(filepath.Join(src, "changes"), []byte(strings.Repeat("X", 3000)), 0o644)
	os.WriteFile(filepath.Join(src, "twin-a"), []byte(strings.Repeat("Y", 3000)), 0o644)

	res, err := upload.Upload(ctx, store, snap, upload.Options{})
	if err != nil {
		t.Fatal(err)
	}
	var changed []string
	for _, p := range res.Changed {
		changed = append(changed, p.Path)
	}
	// twin-a changed too, but twin-b still had the content, so the backup
	// holds twin-a as it was when hashed: consistent, nothing to report.
	if strings.Join(changed, ",") != "changes" {
		t.Fatalf("changed = %v, want [changes]", changed)
	}
	_, m, err := restore.LoadManifest(ctx, store, res.Record.Name, hashstore.BackupFilter{})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, f := range m.Files {
		got = append(got, f.RelativePath)
	}
	if strings.Join(got, ",") != "steady,twin-a,twin-b" {
		t.Fatalf("manifest files %v: the file whose content could not be stored must be left out, the twins kept", got)
	}
	// Nothing is stored under the key of the content that changed.
	if _, err := store.Get(ctx, digest.Of([]byte(strings.Repeat("1", 3000)))); !errors.Is(err, hashstore.ErrNotFound) {
		t.Fatalf("an object exists for content that could not be read back: %v", err)
	}
	target := t.TempDir()
	if _, err := restore.Restore(ctx, m, []restore.Source{restore.StoreSource(store)}, restore.Options{Target: target}); err != nil {
		t.Fatal(err)
	}
	for _, twin := range []string{"twin-a", "twin-b"} {
		data, _ := os.ReadFile(filepath.Join(target, twin))
		if string(data) != strings.Repeat("2", 3000) {
			t.Fatalf("%s restored with the wrong content", twin)
		}
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
	for _, prefix := range []string{"objects/", "backups/"} {
		t.Run(prefix, func(t *testing.T) {
			b := &failingBackend{Backend: hashstore.NewMemory()}
			store, err := hashstore.Init(ctx, b, hashstore.Options{})
			if err != nil {
				t.Fatal(err)
			}
			b.failPrefix = prefix
			_, err = upload.Backup(ctx, store, snapshot.DefaultOptions(src), upload.Options{})
			if err == nil || !strings.Contains(err.Error(), "injected storage failure") {
				t.Fatalf("backup with failing storage: %v", err)
			}
			b.failPrefix = ""
			records, err := store.Backups(ctx)
			if err != nil || len(records) != 0 {
				t.Fatalf("a failed backup left records %v (%v)", records, err)
			}
			// Storage is back: the rerun completes.
			sum, err := upload.Backup(ctx, store, snapshot.DefaultOptions(src), upload.Options{})
			if err != nil {
				t.Fatal(err)
			}
			if sum.Upload.Record.Stats.Files != 20 {
				t.Fatalf("rerun recorded %d files", sum.Upload.Record.Stats.Files)
			}
		})
	}
}

func TestExplicitNameMustBeFree(t *testing.T) {
	ctx := context.Background()
	store, _ := hashstore.Init(ctx, hashstore.NewMemory(), hashstore.Options{})
	src := t.TempDir()
	write(t, src, "a", strings.Repeat("a", 400))
	opts := upload.Options{Name: "nightly-1"}
	if _, err := upload.Backup(ctx, store, snapshot.DefaultOptions(src), opts); err != nil {
		t.Fatal(err)
	}
	if _, err := upload.Backup(ctx, store, snapshot.DefaultOptions(src), opts); !errors.Is(err, hashstore.ErrBackupExists) {
		t.Fatalf("second backup with the same name: %v, want ErrBackupExists", err)
	}
	_ = bytes.MinRead
}
