package upload_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/deltabackup/deltabackup/hashstore"
	"github.com/deltabackup/deltabackup/hashstore/faultstore"
	"github.com/deltabackup/deltabackup/hashstore/storetest"
	"github.com/deltabackup/deltabackup/restore"
	"github.com/deltabackup/deltabackup/restore/restoretest"
	"github.com/deltabackup/deltabackup/snapshot"
	"github.com/deltabackup/deltabackup/upload"
)

func faultySource(t *testing.T) string {
	src := t.TempDir()
	for i := range 60 {
		size := 400 + i*50
		if i%15 == 0 {
			size = 700 << 10 // loose objects, streamed
		}
		write(t, src, fmt.Sprintf("d%d/f%02d", i%3, i), strings.Repeat(fmt.Sprintf("%d ", i), size/3))
	}
	return src
}

// TestBackupThroughFlakyStorage: every third call of each operation fails,
// puts are torn off part way, bodies break off, calls are slow; with
// retries the backup completes and restores byte for byte.
func TestBackupThroughFlakyStorage(t *testing.T) {
	ctx := context.Background()
	src := faultySource(t)
	mem := hashstore.NewMemory()
	f := faultstore.New(mem)
	policy := hashstore.RetryPolicy{MaxAttempts: 30, InitialBackoff: time.Millisecond, MaxBackoff: 5 * time.Millisecond, MaxElapsed: time.Minute}
	store, err := hashstore.Init(ctx, hashstore.WithRetry(f, policy), storetest.Options(hashstore.Options{}))
	if err != nil {
		t.Fatal(err)
	}
	for _, op := range []faultstore.Op{faultstore.Put, faultstore.Get, faultstore.GetRange, faultstore.Stat, faultstore.List} {
		f.AddRule(faultstore.Rule{Op: op, FailEvery: 3})
	}
	f.ShortWrites(5)
	f.CutBodiesAfter(1000)
	f.Delay(200 * time.Microsecond)
	sum, err := upload.Backup(ctx, store, src, snapshot.DefaultOptions(), upload.Options{})
	if err != nil {
		t.Fatalf("backup through flaky storage: %v", err)
	}
	target := t.TempDir()
	if _, err := restore.Restore(ctx, &upload.Trees{Store: store}, sum.Record.Root, target, []restore.Source{restore.StoreSource(store)}, restore.Options{}); err != nil {
		t.Fatalf("restore through flaky storage: %v", err)
	}
	restoretest.CompareTrees(t, src, target)
	stored := 0
	mem.List(ctx, "", func(hashstore.Info) error { stored++; return nil })
	if f.Calls(faultstore.Put) < int64(stored)*3/2 {
		t.Fatalf("%d puts for %d keys stored: the faults were not injected", f.Calls(faultstore.Put), stored)
	}
}

// TestCancelledBackupLeavesNoRecord cancels a backup while it uploads to
// slow storage: it returns promptly with context.Canceled, writes no
// record, and the rerun completes.
func TestCancelledBackupLeavesNoRecord(t *testing.T) {
	src := faultySource(t)
	f := faultstore.New(hashstore.NewMemory())
	store, err := hashstore.Init(context.Background(), f, storetest.Options(hashstore.Options{}))
	if err != nil {
		t.Fatal(err)
	}
	f.Delay(20 * time.Millisecond)
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(100*time.Millisecond, cancel)
	start := time.Now()
	_, err = upload.Backup(ctx, store, src, snapshot.DefaultOptions(), upload.Options{})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled backup: %v", err)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("cancelled backup took %v to return", took)
	}
	f.Delay(0)
	if recs, err := store.Backups(context.Background()); err != nil || len(recs) != 0 {
		t.Fatalf("a cancelled backup left records %v (%v)", recs, err)
	}
	sum, err := upload.Backup(context.Background(), store, src, snapshot.DefaultOptions(), upload.Options{})
	if err != nil {
		t.Fatal(err)
	}
	restoretest.CompareTrees(t, src, restoreTo(t, store, sum.Record))
}
