package upload_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/deltabackup/deltabackup/hashstore"
	"github.com/deltabackup/deltabackup/restore"
	"github.com/deltabackup/deltabackup/snapshot"
	"github.com/deltabackup/deltabackup/snapshot/treetest"
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

// backup backs src up into store, with the directory cache in cacheDir
// ("" for none).
func backup(t *testing.T, store *hashstore.Store, src, cacheDir string) *upload.Summary {
	t.Helper()
	sum, err := upload.Backup(context.Background(), store, src, snapshot.DefaultOptions(), upload.Options{CacheDir: cacheDir})
	if err != nil {
		t.Fatal(err)
	}
	return sum
}

// restoreTo restores a backup into a new directory and returns it.
func restoreTo(t *testing.T, store *hashstore.Store, rec hashstore.BackupRecord) string {
	t.Helper()
	target := filepath.Join(t.TempDir(), "restored")
	if _, err := restore.Restore(context.Background(), &upload.Trees{Store: store}, rec.Root, target, []restore.Source{restore.StoreSource(store)}, restore.Options{}); err != nil {
		t.Fatalf("restore %s: %v", rec.Name, err)
	}
	return target
}

// files walks a backup into a map of regular file nodes by path.
func files(t *testing.T, store *hashstore.Store, rec hashstore.BackupRecord) map[string]*snapshot.Node {
	t.Helper()
	return treetest.FileNodes(t, &upload.Trees{Store: store}, rec.Root)
}
