package hashstore_test

import (
	"context"
	"path/filepath"
	"strings"
	"testing"

	"github.com/deltabackup/deltabackup/hashstore"
	"github.com/deltabackup/deltabackup/hashstore/storetest"
	"github.com/deltabackup/deltabackup/snapshot"
	"github.com/deltabackup/deltabackup/upload"
)

func TestCopyOnlyWhatTheTargetLacks(t *testing.T) {
	ctx := context.Background()
	f := newGCFixture(t, hashstore.NewLocal(filepath.Join(t.TempDir(), "from")))
	target := hashstore.NewMemory()
	to, err := hashstore.Init(ctx, target, storetest.Options(hashstore.Options{}))
	if err != nil {
		t.Fatal(err)
	}
	first, err := hashstore.Copy(ctx, f.store, to, hashstore.CopyOptions{Referrer: upload.Referrer{Store: f.store}, Backups: []string{"b1"}})
	if err != nil {
		t.Fatal(err)
	}
	var planned int
	var copiedBytes int64
	rest, err := hashstore.Copy(ctx, f.store, to, hashstore.CopyOptions{Referrer: upload.Referrer{Store: f.store},
		Planned: func(objects int, _ int64) { planned += objects },
		Copied:  func(n int64) { copiedBytes += n },
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("b1: %+v; the rest: %+v", first, rest)
	if len(first.Copied) != 1 || len(rest.Copied) != 2 || len(rest.Present) != 1 || rest.Present[0] != "b1" {
		t.Fatalf("copied %v then %v (present %v)", first.Copied, rest.Copied, rest.Present)
	}
	if rest.PresentObjects == 0 || rest.Objects >= first.Objects*2 || planned != rest.Objects || copiedBytes != rest.Bytes {
		t.Fatalf("the second copy did not skip what the target had: %+v (planned %d, progress %d bytes)", rest, planned, copiedBytes)
	}
	again, err := hashstore.Copy(ctx, f.store, to, hashstore.CopyOptions{Referrer: upload.Referrer{Store: f.store}})
	if err != nil || again.Objects != 0 || len(again.Present) != 3 {
		t.Fatalf("third copy: %+v, %v", again, err)
	}
	(&gcFixture{store: to, backend: target, srcs: f.srcs}).check(t)

	// A different backup under a taken name is refused, not merged.
	src := filepath.Join(t.TempDir(), "other")
	gcTree(t, src, 9, func(i int) bool { return i == 1 })
	other, _ := hashstore.Init(ctx, hashstore.NewMemory(), storetest.Options(hashstore.Options{}))
	if _, err := upload.Backup(ctx, other, src, snapshot.DefaultOptions(), upload.Options{Name: "b2"}); err != nil {
		t.Fatal(err)
	}
	_, err = hashstore.Copy(ctx, f.store, other, hashstore.CopyOptions{Referrer: upload.Referrer{Store: f.store}, Backups: []string{"b2"}})
	if err == nil || !strings.Contains(err.Error(), "the target has a different backup of that name") {
		t.Fatalf("copy over a different backup of the same name: %v", err)
	}
}

func TestStats(t *testing.T) {
	ctx := context.Background()
	f := newGCFixture(t, hashstore.NewMemory())
	st, err := f.store.Stats(ctx, upload.Referrer{Store: f.store})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%+v", st)
	if st.Backups != 3 || len(st.PerBackup) != 3 || st.Packs == 0 || st.LooseObjects == 0 || st.IndexFiles == 0 {
		t.Fatalf("stats: %+v", st)
	}
	var logical int64
	for _, b := range st.PerBackup {
		logical += b.TotalBytes
		if b.Files != 300 || b.UniqueBytes <= 0 {
			t.Errorf("backup %+v", b)
		}
	}
	// The three backups share a fifth of their files: stored data is well
	// under the sum of their sizes.
	if st.LogicalBytes != logical || st.DedupRatio < 1.1 || st.ContentBytes >= st.LogicalBytes {
		t.Fatalf("sharing not seen: %+v", st)
	}
	// Forgetting b1 and collecting frees about what stats called unique
	// to it (packs whose live share stays above the threshold are kept).
	var unique int64
	for _, b := range st.PerBackup {
		if b.Name == "b1" {
			unique = b.UniqueBytes
		}
	}
	f.forget(t, "b1")
	rep, err := f.store.GC(ctx, hashstore.GCOptions{Referrer: upload.Referrer{Store: f.store}, RepackBelow: 0.99})
	if err != nil {
		t.Fatal(err)
	}
	if rep.DeletedBytes < unique*9/10 {
		t.Fatalf("gc freed %d bytes, stats said %d were unique to b1", rep.DeletedBytes, unique)
	}
}
