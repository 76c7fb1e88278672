package upload_test

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	"github.com/deltabackup/deltabackup/hashstore"
	"github.com/deltabackup/deltabackup/restore"
	"github.com/deltabackup/deltabackup/restore/restoretest"
	"github.com/deltabackup/deltabackup/snapshot"
	"github.com/deltabackup/deltabackup/upload"
)

// TestIncrementalBackupTrustsOnlyAPresentBase: an incremental backup does
// not look up the contents of its base backup while that backup's record
// exists, records the same stored sizes as a full backup, and looks up
// everything again once the base was forgotten and collected.
func TestIncrementalBackupTrustsOnlyAPresentBase(t *testing.T) {
	ctx := context.Background()
	src := t.TempDir()
	for i := range 40 {
		write(t, src, fmt.Sprintf("d%d/f%02d", i%4, i), strings.Repeat(fmt.Sprintf("%d ", i), 300+i*10))
	}
	write(t, src, "big", strings.Repeat("large content ", 60000))
	store, _ := hashstore.Init(ctx, hashstore.NewMemory(), nil)
	first, err := upload.Backup(ctx, store, snapshot.DefaultOptions(src), upload.Options{Name: "b1"})
	if err != nil {
		t.Fatal(err)
	}
	write(t, src, "d0/f00", "changed content, long enough to be stored as an object of its own in a pack")
	write(t, src, "d1/copy", strings.Repeat("5 ", 350)) // the content of d1/f05: known through the base

	incremental := func(name string) *upload.Summary {
		opts := snapshot.DefaultOptions(src)
		opts.Base, opts.Dirty = first.Snapshot.Manifest, []string{"d0/f00", "d1/copy"}
		sum, err := upload.Backup(ctx, store, opts, upload.Options{Name: name, Base: &first.Upload.Record})
		if err != nil {
			t.Fatal(err)
		}
		return sum
	}
	sum := incremental("b2")
	full, err := upload.Backup(ctx, store, snapshot.DefaultOptions(src), upload.Options{Name: "b3"})
	if err != nil {
		t.Fatal(err)
	}
	got, want := sum.Snapshot.Manifest.Files, full.Snapshot.Manifest.Files
	if len(got) != len(want) {
		t.Fatalf("%d files, a full backup has %d", len(got), len(want))
	}
	for i := range got {
		if got[i].RelativePath != want[i].RelativePath || got[i].Hexdigest != want[i].Hexdigest || got[i].StoredFileSize != want[i].StoredFileSize {
			t.Errorf("%s: incremental %+v, full %+v", got[i].RelativePath, got[i], want[i])
		}
	}

	// Forget every backup and collect: the base's objects are gone, and
	// an incremental backup from it must store them again.
	for _, name := range []string{"b1", "b2", "b3"} {
		store.DeleteBackup(ctx, name)
	}
	if _, err := store.GC(ctx, hashstore.GCOptions{}); err != nil {
		t.Fatal(err)
	}
	again := incremental("b4")
	if again.Upload.UploadedObjects < 40 {
		t.Fatalf("after the base was collected, the incremental backup stored only %d objects", again.Upload.UploadedObjects)
	}
	target := filepath.Join(t.TempDir(), "out")
	if _, err := restore.Restore(ctx, again.Snapshot.Manifest, []restore.Source{restore.StoreSource(store)}, restore.Options{Target: target}); err != nil {
		t.Fatal(err)
	}
	restoretest.CompareTrees(t, src, target)
}
