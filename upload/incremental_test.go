package upload_test

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/deltabackup/deltabackup/hashstore"
	"github.com/deltabackup/deltabackup/hashstore/storetest"
	"github.com/deltabackup/deltabackup/restore/restoretest"
	"github.com/deltabackup/deltabackup/snapshot"
	"github.com/deltabackup/deltabackup/snapshot/digest"
	"github.com/deltabackup/deltabackup/upload"
)

// TestIncrementalBackupWritesOnlyTheChangedPath: with a base and the one
// path that changed, the backup reads one file, stores the trees on the
// way to it, and restores to the whole tree.
func TestIncrementalBackupWritesOnlyTheChangedPath(t *testing.T) {
	ctx := context.Background()
	store, _ := hashstore.Init(ctx, hashstore.NewMemory(), storetest.Options(hashstore.Options{}))
	src := t.TempDir()
	for i := range 100 {
		write(t, src, fmt.Sprintf("d%d/s%d/f%d", i%5, i%3, i), strings.Repeat(fmt.Sprint(i), 300+i))
	}
	first := backup(t, store, src, "")
	write(t, src, "d2/s1/f7", "new content of f7")
	sum, err := upload.Backup(ctx, store, src, snapshot.DefaultOptions(), upload.Options{Base: first.Base(), Dirty: []string{"d2/s1/f7"}})
	if err != nil {
		t.Fatal(err)
	}
	if !sum.Incremental || sum.Snapshot.Stats.HashedFiles != 1 || sum.TreesStored != 3 {
		t.Fatalf("incremental backup: incremental %v, hashed %d files, stored %d trees; want true, 1, 3",
			sum.Incremental, sum.Snapshot.Stats.HashedFiles, sum.TreesStored)
	}
	if sum.Record.Parent != first.Record.Name || sum.Record.Stats.Files != 100 {
		t.Fatalf("record %+v", sum.Record)
	}
	restoretest.CompareTrees(t, src, restoreTo(t, store, sum.Record))
}

// TestIncrementalBackupTrustsOnlyAPresentBase: when the base's record is
// gone (forgotten, maybe collected), the backup scans the whole source.
func TestIncrementalBackupTrustsOnlyAPresentBase(t *testing.T) {
	ctx := context.Background()
	store, _ := hashstore.Init(ctx, hashstore.NewMemory(), storetest.Options(hashstore.Options{}))
	src := t.TempDir()
	write(t, src, "a", strings.Repeat("a", 500))
	write(t, src, "b", strings.Repeat("b", 500))
	first := backup(t, store, src, "")
	if err := store.DeleteBackup(ctx, first.Record.Name); err != nil {
		t.Fatal(err)
	}
	if _, err := store.GC(ctx, hashstore.GCOptions{Referrer: upload.Referrer{Store: store}}); err != nil {
		t.Fatal(err)
	}
	write(t, src, "b", strings.Repeat("B", 500))
	sum, err := upload.Backup(ctx, store, src, snapshot.DefaultOptions(), upload.Options{Base: first.Base(), Dirty: []string{"b"}})
	if err != nil {
		t.Fatal(err)
	}
	if sum.Incremental || sum.Snapshot.Stats.HashedFiles != 2 {
		t.Fatalf("with its base gone the backup was incremental %v and hashed %d files", sum.Incremental, sum.Snapshot.Stats.HashedFiles)
	}
	restoretest.CompareTrees(t, src, restoreTo(t, store, sum.Record))
}

// TestLongLivedStoreSeesGC: a Store kept across backups (as watch keeps
// it) must not take a content for stored after another process's gc
// removed it: the next backup stores it again and restores.
func TestLongLivedStoreSeesGC(t *testing.T) {
	ctx := context.Background()
	src := t.TempDir()
	oldContent := strings.Repeat("the old content of x, small enough for a pack ", 20)
	write(t, src, "x", oldContent)
	write(t, src, "y", strings.Repeat("steady ", 100))
	backend := hashstore.NewMemory()
	long, _ := hashstore.Init(ctx, backend, storetest.Options(hashstore.Options{}))
	cacheDir := t.TempDir()
	b1, err := upload.Backup(ctx, long, src, snapshot.DefaultOptions(), upload.Options{Name: "b1", CacheDir: cacheDir})
	if err != nil {
		t.Fatal(err)
	}
	write(t, src, "x", "new content of x, also long enough to be stored in a pack and not embedded")
	if _, err := upload.Backup(ctx, long, src, snapshot.DefaultOptions(), upload.Options{Name: "b2", CacheDir: cacheDir}); err != nil {
		t.Fatal(err)
	}
	other, err := hashstore.Open(ctx, backend, storetest.Options(hashstore.Options{}))
	if err != nil {
		t.Fatal(err)
	}
	other.DeleteBackup(ctx, "b1")
	if _, err := other.GC(ctx, hashstore.GCOptions{Referrer: upload.Referrer{Store: other}}); err != nil {
		t.Fatal(err)
	}
	if has, _ := other.Has(ctx, digest.Of([]byte(oldContent))); has {
		t.Fatal("gc kept the old content; the test needs it gone")
	}
	if has, _ := other.Has(ctx, b1.Record.Root); has {
		t.Fatal("gc kept b1's root tree; the test needs it gone")
	}
	write(t, src, "x", oldContent)
	sum, err := upload.Backup(ctx, long, src, snapshot.DefaultOptions(), upload.Options{Name: "b3", CacheDir: cacheDir})
	if err != nil {
		t.Fatal(err)
	}
	if sum.UploadedObjects != 1 || sum.Record.Root != b1.Record.Root {
		t.Fatalf("stored %d objects, root %s; the old content, removed by gc, must be stored again under b1's root %s",
			sum.UploadedObjects, sum.Record.Root, b1.Record.Root)
	}
	// other, open since before long's last backup, sees its new pack.
	if rep, err := other.Verify(ctx, hashstore.VerifyOptions{Referrer: upload.Referrer{Store: other}}); err != nil || len(rep.Problems) > 0 {
		t.Fatalf("verify: %v %+v", err, rep.Problems)
	}
	restoretest.CompareTrees(t, src, restoreTo(t, long, sum.Record))
}
