package restore_test

import (
	"bytes"
	"context"
	"math/rand/v2"
	"os"
	"path"
	"path/filepath"
	"testing"
	"time"

	"github.com/deltabackup/deltabackup/hashstore"
	"github.com/deltabackup/deltabackup/hashstore/storetest"
	"github.com/deltabackup/deltabackup/restore"
	"github.com/deltabackup/deltabackup/restore/restoretest"
	"github.com/deltabackup/deltabackup/snapshot"
	"github.com/deltabackup/deltabackup/snapshot/digest"
	"github.com/deltabackup/deltabackup/upload"
)

// chunkedFixture backs up a large random file and a sparse file with
// 3 MiB of data: both chunked.
func chunkedFixture(t *testing.T) (*fixture, *snapshot.Node) {
	t.Helper()
	ctx := context.Background()
	src := t.TempDir()
	data := make([]byte, 8<<20)
	rand.NewChaCha8([32]byte{5}).Read(data)
	if err := os.WriteFile(filepath.Join(src, "table"), data, 0o640); err != nil {
		t.Fatal(err)
	}
	f, err := os.Create(filepath.Join(src, "sparse"))
	if err != nil {
		t.Fatal(err)
	}
	f.Truncate(64 << 20)
	f.WriteAt(data[:1<<20], 4<<20)
	f.WriteAt(data[1<<20:3<<20], 40<<20)
	f.Close()
	mem := hashstore.NewMemory()
	store, err := hashstore.Init(ctx, mem, storetest.Options(hashstore.Options{}))
	if err != nil {
		t.Fatal(err)
	}
	sum, err := upload.Backup(ctx, store, src, snapshot.DefaultOptions(), upload.Options{})
	if err != nil {
		t.Fatal(err)
	}
	fx := &fixture{store: store, mem: mem, src: src, name: sum.Record.Name, root: sum.Record.Root, trees: &upload.Trees{Store: store},
		source: []restore.Source{restore.StoreSource(store)}}
	files := fx.files(t)
	for _, name := range []string{"table", "sparse"} {
		if len(files[name].Chunks) < 10 {
			t.Fatalf("%s was not chunked: %d chunks", name, len(files[name].Chunks))
		}
	}
	if !files["sparse"].Sparse {
		t.Fatal("the sparse file was not recorded sparse")
	}
	return fx, files["table"]
}

// TestChunkedFileFromThreeSources: one large chunked file is fetched from
// every source at once, the bytes balanced, and restores byte for byte
// with its holes.
func TestChunkedFileFromThreeSources(t *testing.T) {
	f, _ := chunkedFixture(t)
	sources := []restore.Source{
		&fakeSource{name: "a", holds: f.allHashes(t), store: f.store},
		&fakeSource{name: "b", holds: f.allHashes(t), store: f.store},
		&fakeSource{name: "c", holds: f.allHashes(t), store: f.store},
	}
	target := t.TempDir()
	res, err := restore.Restore(context.Background(), f.trees, f.root, target, sources, restore.Options{Parallel: 4})
	if err != nil {
		t.Fatal(err)
	}
	restoretest.CompareTrees(t, f.src, target)
	// The plan gives each source a third. A source that runs ahead takes
	// work over from the others, so what each fetched varies with timing
	// (here all three are the same memory), but the file came from more
	// than one.
	var planned int64
	for _, b := range res.Plan.Bytes {
		planned += b
	}
	fetching := 0
	for i := range sources {
		if b := res.Plan.Bytes[i]; b < planned/4 {
			t.Errorf("source %d was planned %d of %d bytes: the chunks were not spread", i, b, planned)
		}
		if res.BytesPerSource[i] > 0 {
			fetching++
		}
	}
	if fetching < 2 {
		t.Errorf("one source delivered everything: %v", res.BytesPerSource)
	}
}

// TestChunkedRestoreKeepsWhatIsRight: a damaged restored file and the
// partial file of an interrupted restore are completed by fetching only
// the chunks they lack.
func TestChunkedRestoreKeepsWhatIsRight(t *testing.T) {
	f, table := chunkedFixture(t)
	target := t.TempDir()
	if _, err := f.restore(t, target); err != nil {
		t.Fatal(err)
	}
	full, _ := os.ReadFile(filepath.Join(target, "table"))

	t.Run("damaged file", func(t *testing.T) {
		damaged := bytes.Clone(full)
		copy(damaged[3<<20:], make([]byte, 300<<10)) // about three chunks
		os.WriteFile(filepath.Join(target, "table"), damaged, 0o640)
		res, err := f.restore(t, target)
		if err != nil {
			t.Fatal(err)
		}
		restoretest.CompareTrees(t, f.src, target)
		if res.BytesDownloaded == 0 || res.BytesDownloaded > 2<<20 || res.ObjectsDownloaded > 8 {
			t.Fatalf("fetched %d objects, %d bytes to mend 300 KiB of an 8 MiB file", res.ObjectsDownloaded, res.BytesDownloaded)
		}
	})

	t.Run("interrupted restore", func(t *testing.T) {
		// What an interrupted run leaves: the partial file under its
		// resume name, the first half written, and no final file.
		partial := bytes.Clone(full)
		clear(partial[4<<20:])
		name := filepath.Join(target, path.Base(restore.ResumeName("table", table)))
		os.WriteFile(name, partial, 0o600)
		old := time.Now().Add(-time.Hour)
		os.Chtimes(name, old, old)
		os.Remove(filepath.Join(target, "table"))
		res, err := f.restore(t, target)
		if err != nil {
			t.Fatal(err)
		}
		restoretest.CompareTrees(t, f.src, target)
		if res.BytesDownloaded > 5<<20 || res.BytesDownloaded < 3<<20 {
			t.Fatalf("fetched %d bytes to finish a file half written", res.BytesDownloaded)
		}
		if _, err := os.Stat(name); !os.IsNotExist(err) {
			t.Fatalf("the partial file is still there: %v", err)
		}
	})
}

// allHashes is every content the backup needs.
func (f *fixture) allHashes(t *testing.T) map[digest.Digest]bool {
	all := map[digest.Digest]bool{}
	for _, h := range f.hashes(t) {
		all[h.Hexdigest] = true
	}
	return all
}
