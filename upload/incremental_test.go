package upload_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/deltabackup/deltabackup/snapshot/digest"

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
	store, _ := hashstore.Init(ctx, hashstore.NewMemory(), hashstore.Options{})
	first, err := upload.Backup(ctx, store, snapshot.DefaultOptions(src), upload.Options{Name: "b1"})
	if err != nil {
		t.Fatal(err)
	}
	write(t, src, "d0/f00", "changed content, long enough to be stored as an object of its own in a pack")
	write(t, src, "d1/copy", strings.Repeat("5 ", 350)) // the content of d1/f05: known through the base

	incremental := func(name string) *upload.Summary {
		opts := snapshot.DefaultOptions(src)
		opts.Base, opts.Dirty = first.Snapshot.Manifest, []string{"d0/f00", "d1/copy"}
		sum, err := upload.Backup(ctx, store, opts, upload.Options{Name: name, Base: first.Base()})
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
	if _, err := store.GC(ctx, hashstore.GCOptions{Referrer: upload.Referrer{Store: store}}); err != nil {
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

// TestIncrementalManifestChain: backups that start from the previous one
// store incremental manifests, a whole one again after DefaultMaxChainDepth;
// every backup of the chain reads back as the manifest it was taken as and
// restores; gc keeps the bases of a backup whose base records were
// forgotten, verify names a base that is missing, and copy takes the chain.
func TestIncrementalManifestChain(t *testing.T) {
	ctx := context.Background()
	src := t.TempDir()
	for i := range 200 {
		write(t, src, fmt.Sprintf("d%d/f%03d", i%5, i), strings.Repeat(fmt.Sprintf("%d ", i), 100+i))
	}
	backend := hashstore.NewMemory()
	store, _ := hashstore.Init(ctx, backend, hashstore.Options{})
	cache := snapshot.NewMemoryStatCache()
	opts := snapshot.DefaultOptions(src)
	opts.Cache = cache
	prev, err := upload.Backup(ctx, store, opts, upload.Options{Name: "b00"})
	if err != nil {
		t.Fatal(err)
	}
	fullBytes := prev.Upload.ManifestBytes
	var records []hashstore.BackupRecord
	for i := 1; i <= upload.DefaultMaxChainDepth+3; i++ {
		changed := fmt.Sprintf("d%d/f%03d", i%5, i*7%200)
		added := fmt.Sprintf("new/n%02d", i)
		write(t, src, changed, fmt.Sprintf("version %d of this file, long enough for an object of its own", i))
		write(t, src, added, strings.Repeat(fmt.Sprintf("added %d ", i), 40))
		dirty := []string{changed, added}
		if i%3 == 0 {
			gone := fmt.Sprintf("new/n%02d", i-1)
			os.Remove(filepath.Join(src, gone))
			dirty = append(dirty, gone)
		}
		o := opts
		o.Base, o.Dirty = prev.Snapshot.Manifest, dirty
		sum, err := upload.Backup(ctx, store, o, upload.Options{Name: fmt.Sprintf("b%02d", i), Base: prev.Base(), KeepStatCacheInMemory: true})
		if err != nil {
			t.Fatal(err)
		}
		wantIncremental := i != upload.DefaultMaxChainDepth+1
		if sum.Upload.Incremental != wantIncremental {
			t.Fatalf("backup %d: incremental manifest %v, want %v (chain depth of the base %d)", i, sum.Upload.Incremental, wantIncremental, prev.Snapshot.Manifest.ChainDepth)
		}
		if wantIncremental && sum.Upload.ManifestBytes*10 > fullBytes {
			t.Fatalf("backup %d: incremental manifest of %d bytes for 2 changed files; the whole one has %d", i, sum.Upload.ManifestBytes, fullBytes)
		}
		m, err := snapshot.LoadManifest(ctx, store, sum.Upload.Record.Root, nil)
		if err != nil {
			t.Fatalf("backup %d: %v", i, err)
		}
		if got, want := m.Files, sum.Snapshot.Manifest.Files; !reflect.DeepEqual(got, want) || !reflect.DeepEqual(m.Hashes, sum.Snapshot.Manifest.Hashes) {
			t.Fatalf("backup %d reads back as %d files, was taken as %d", i, len(got), len(want))
		}
		records = append(records, sum.Upload.Record)
		prev = sum
	}
	last := records[len(records)-1]
	restoreEquals(t, store, last.Name, src)

	other, _ := hashstore.Init(ctx, hashstore.NewMemory(), hashstore.Options{})
	if _, err := hashstore.Copy(ctx, store, other, hashstore.CopyOptions{Referrer: upload.Referrer{Store: store}, Backups: []string{last.Name}}); err != nil {
		t.Fatal(err)
	}
	restoreEquals(t, other, last.Name, src)

	for _, rec := range append(records[:len(records)-1], prev.Upload.Record) {
		if rec.Name != last.Name {
			store.DeleteBackup(ctx, rec.Name)
		}
	}
	store.DeleteBackup(ctx, "b00")
	if _, err := store.GC(ctx, hashstore.GCOptions{Referrer: upload.Referrer{Store: store}}); err != nil {
		t.Fatal(err)
	}
	restoreEquals(t, store, last.Name, src)
	rep, err := store.Verify(ctx, hashstore.VerifyOptions{Referrer: upload.Referrer{Store: store}, ReadData: true})
	if err != nil || len(rep.Problems) > 0 {
		t.Fatalf("verify after gc: %v %+v", err, rep)
	}

	// The last backup's base manifest lost: verify and readers name it.
	chain, err := chainOf(ctx, store, last)
	if err != nil || len(chain) < 2 {
		t.Fatalf("chain of the last backup: %v, %v", chain, err)
	}
	backend.Delete(ctx, hashstore.ObjectKey(chain[1]))
	if _, err := snapshot.LoadManifest(ctx, store, last.Root, nil); err == nil || !strings.Contains(err.Error(), chain[1].String()) {
		t.Fatalf("reading a backup whose base manifest is gone: %v; want an error naming %s", err, chain[1])
	}
	rep, err = store.Verify(ctx, hashstore.VerifyOptions{Referrer: upload.Referrer{Store: store}})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Problems) == 0 || rep.Problems[0].ID != chain[1] || rep.Problems[0].Backup != last.Name {
		t.Fatalf("verify with a base manifest missing: %+v", rep.Problems)
	}
}

// TestIncrementalManifestLeavesOutAFileThatChangedAfterHashing: a file of
// the base that changed after the incremental snapshot hashed it is left
// out of the backup, and its base version does not show through.
func TestIncrementalManifestLeavesOutAFileThatChangedAfterHashing(t *testing.T) {
	ctx := context.Background()
	src := t.TempDir()
	write(t, src, "changes", strings.Repeat("1", 3000))
	write(t, src, "steady", strings.Repeat("3", 3000))
	for i := range 10 {
		write(t, src, fmt.Sprintf("other/%d", i), strings.Repeat(fmt.Sprint(i), 1000))
	}
	store, _ := hashstore.Init(ctx, hashstore.NewMemory(), hashstore.Options{})
	first, err := upload.Backup(ctx, store, snapshot.DefaultOptions(src), upload.Options{})
	if err != nil {
		t.Fatal(err)
	}
	write(t, src, "changes", strings.Repeat("2", 3000))
	opts := snapshot.DefaultOptions(src)
	opts.Base, opts.Dirty = first.Snapshot.Manifest, []string{"changes"}
	s, _ := snapshot.New(opts)
	snap, err := s.Snapshot(ctx)
	if err != nil {
		t.Fatal(err)
	}
	write(t, src, "changes", strings.Repeat("X", 3000))
	res, err := upload.Upload(ctx, store, snap, upload.Options{Base: first.Base()})
	if err != nil {
		t.Fatal(err)
	}
	if !res.Incremental || len(res.Changed) != 1 || res.Changed[0].Path != "changes" {
		t.Fatalf("incremental %v, changed %v; want an incremental manifest without 'changes'", res.Incremental, res.Changed)
	}
	_, m, err := restore.LoadManifest(ctx, store, res.Record.Name, hashstore.BackupFilter{})
	if err != nil {
		t.Fatal(err)
	}
	if len(m.Files) != 11 || m.Files[0].RelativePath == "changes" || !reflect.DeepEqual(m.Files, snap.Manifest.Files) {
		t.Fatalf("backup holds %d files (first %s); want the 11 others, as in memory", len(m.Files), m.Files[0].RelativePath)
	}
}

// TestCheckpointManifest: incremental manifests build on a checkpoint
// (a whole manifest stored between backups) and restore; a checkpoint
// that gc removed before any backup used it makes the next backup store
// its whole manifest instead.
func TestCheckpointManifest(t *testing.T) {
	ctx := context.Background()
	src := t.TempDir()
	for i := range 50 {
		write(t, src, fmt.Sprintf("d%d/f%02d", i%3, i), strings.Repeat(fmt.Sprintf("%d ", i), 100+i))
	}
	store, _ := hashstore.Init(ctx, hashstore.NewMemory(), hashstore.Options{})
	prev, err := upload.Backup(ctx, store, snapshot.DefaultOptions(src), upload.Options{})
	if err != nil {
		t.Fatal(err)
	}
	step := func(i int, key digest.Digest) *upload.Summary {
		t.Helper()
		rel := fmt.Sprintf("d0/f%02d", i*3)
		write(t, src, rel, fmt.Sprintf("version %d, long enough to be stored as an object", i))
		o := snapshot.DefaultOptions(src)
		o.Base, o.Dirty = prev.Snapshot.Manifest, []string{rel}
		sum, err := upload.Backup(ctx, store, o, upload.Options{Base: baseWith(prev, key)})
		if err != nil {
			t.Fatal(err)
		}
		prev = sum
		return sum
	}
	step(1, digest.Digest{})
	step(2, digest.Digest{})
	key, _, err := upload.StoreManifest(ctx, store, prev.Snapshot.Manifest, upload.Options{})
	if err != nil {
		t.Fatal(err)
	}
	sum := step(3, key)
	chain, err := chainOf(ctx, store, sum.Upload.Record)
	if err != nil || !sum.Upload.Incremental || len(chain) != 2 || chain[1] != key {
		t.Fatalf("backup on a checkpoint: incremental %v, chain %v, %v", sum.Upload.Incremental, chain, err)
	}
	// A checkpoint nobody used yet is garbage to gc.
	key, _, err = upload.StoreManifest(ctx, store, prev.Snapshot.Manifest, upload.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := store.GC(ctx, hashstore.GCOptions{Referrer: upload.Referrer{Store: store}}); err != nil {
		t.Fatal(err)
	}
	if sum := step(4, key); sum.Upload.Incremental {
		t.Fatal("an incremental manifest was built on a checkpoint gc had removed")
	}
	sum = step(5, digest.Digest{})
	if !sum.Upload.Incremental || sum.Snapshot.Manifest.ChainDepth != 1 {
		t.Fatalf("after a whole manifest: incremental %v, depth %d", sum.Upload.Incremental, sum.Snapshot.Manifest.ChainDepth)
	}
	restoreEquals(t, store, "latest", src)
}

// restoreEquals restores backup name from store and compares it with src.
func restoreEquals(t *testing.T, store *hashstore.Store, name, src string) {
	t.Helper()
	ctx := context.Background()
	_, m, err := restore.LoadManifest(ctx, store, name, hashstore.BackupFilter{})
	if err != nil {
		t.Fatal(err)
	}
	target := filepath.Join(t.TempDir(), "out")
	if _, err := restore.Restore(ctx, m, []restore.Source{restore.StoreSource(store)}, restore.Options{Target: target}); err != nil {
		t.Fatal(err)
	}
	restoretest.CompareTrees(t, src, target)
}

// TestLongLivedStoreSeesGC: a Store kept across backups (as watch keeps
// it) must not take a content for stored after another process's gc
// removed it: the next backup stores it again and restores.
func TestLongLivedStoreSeesGC(t *testing.T) {
	ctx := context.Background()
	src := t.TempDir()
	old := strings.Repeat("the old content of x, small enough for a pack ", 20)
	write(t, src, "x", old)
	write(t, src, "y", strings.Repeat("steady ", 100))
	backend := hashstore.NewMemory()
	long, _ := hashstore.Init(ctx, backend, hashstore.Options{})
	if _, err := upload.Backup(ctx, long, snapshot.DefaultOptions(src), upload.Options{Name: "b1"}); err != nil {
		t.Fatal(err)
	}
	write(t, src, "x", "new content of x, also long enough to be stored in a pack and not embedded")
	if _, err := upload.Backup(ctx, long, snapshot.DefaultOptions(src), upload.Options{Name: "b2"}); err != nil {
		t.Fatal(err)
	}
	other, err := hashstore.Open(ctx, backend, hashstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	other.DeleteBackup(ctx, "b1")
	if _, err := other.GC(ctx, hashstore.GCOptions{Referrer: upload.Referrer{Store: other}}); err != nil {
		t.Fatal(err)
	}
	if has, _ := other.Has(ctx, digest.Of([]byte(old))); has {
		t.Fatal("gc kept the old content; the test needs it gone")
	}
	write(t, src, "x", old)
	sum, err := upload.Backup(ctx, long, snapshot.DefaultOptions(src), upload.Options{Name: "b3"})
	if err != nil {
		t.Fatal(err)
	}
	if sum.Upload.UploadedObjects != 1 {
		t.Fatalf("stored %d objects; the old content, removed by gc, must be stored again", sum.Upload.UploadedObjects)
	}
	// other, open since before long's last backup, sees its new pack.
	if rep, err := other.Verify(ctx, hashstore.VerifyOptions{Referrer: upload.Referrer{Store: other}}); err != nil || len(rep.Problems) > 0 {
		t.Fatalf("verify: %v %+v", err, rep.Problems)
	}
}

// chainOf returns the manifest objects a backup's manifest reads, its own
// first.
func chainOf(ctx context.Context, store *hashstore.Store, rec hashstore.BackupRecord) ([]digest.Digest, error) {
	var chain []digest.Digest
	_, err := snapshot.LoadManifest(ctx, store, rec.Root, func(id digest.Digest) { chain = append(chain, id) })
	return chain, err
}

// baseWith is the base of sum, stored as the checkpoint key when set.
func baseWith(sum *upload.Summary, key digest.Digest) *upload.Base {
	b := sum.Base()
	b.ManifestID = key
	return b
}
