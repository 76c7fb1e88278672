package restore

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/deltabackup/deltabackup/snapshot/digest"

	"golang.org/x/sys/unix"

	"github.com/deltabackup/deltabackup/hashstore"
	"github.com/deltabackup/deltabackup/hashstore/storetest"
	"github.com/deltabackup/deltabackup/snapshot"
	"github.com/deltabackup/deltabackup/upload"
)

// smallFileSystem gives a directory that holds at most size bytes: a tmpfs
// when this process may mount one, otherwise writeHook fails writes past
// size with ENOSPC, as a full disk would. grow makes room.
func smallFileSystem(t *testing.T, size int64) (dir string, how string, grow func()) {
	dir = t.TempDir()
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, fmt.Sprintf("size=%d", size)); err == nil {
		t.Cleanup(func() { unix.Unmount(dir, unix.MNT_DETACH) })
		return dir, "tmpfs", func() {
			if err := unix.Mount("tmpfs", dir, "tmpfs", unix.MS_REMOUNT, "size=64m"); err != nil {
				t.Fatal(err)
			}
		}
	}
	var mu sync.Mutex
	var written int64
	writeHook = func(p []byte) error {
		mu.Lock()
		defer mu.Unlock()
		if written+int64(len(p)) > size {
			return syscall.ENOSPC
		}
		written += int64(len(p))
		return nil
	}
	t.Cleanup(func() { writeHook = nil })
	return dir, "write hook (no permission to mount a tmpfs)", func() {
		mu.Lock()
		size = 1 << 40
		mu.Unlock()
	}
}

// TestFullTargetStopsCleanly restores into a target too small for the
// backup: the restore stops with an error that says what happened and
// what to do, leaves no temporary file and no partial file under a final
// name, and once there is room the same restore completes, fetching only
// what is missing.
func TestFullTargetStopsCleanly(t *testing.T) {
	ctx := context.Background()
	src := t.TempDir()
	rng := rand.New(rand.NewPCG(3, 4))
	for i := range 40 {
		size := 2000 + rng.IntN(20000)
		if i%5 == 0 {
			size = 700<<10 + rng.IntN(300<<10)
		}
		if i%10 == 0 {
			size = 2<<20 + rng.IntN(1<<20) // chunked
		}
		data := make([]byte, size)
		for j := range data {
			data[j] = byte(rng.IntN(256))
		}
		p := filepath.Join(src, fmt.Sprintf("d%d/f%02d", i%4, i))
		os.MkdirAll(filepath.Dir(p), 0o755)
		os.WriteFile(p, data, 0o644)
	}
	store, err := hashstore.Init(ctx, hashstore.NewMemory(), storetest.Options(hashstore.Options{}))
	if err != nil {
		t.Fatal(err)
	}
	sum, err := upload.Backup(ctx, store, src, snapshot.DefaultOptions(), upload.Options{})
	if err != nil {
		t.Fatal(err)
	}
	trees, root := &upload.Trees{Store: store}, sum.Record.Root
	total := sum.Record.Stats.TotalBytes
	want := map[string]digest.Digest{}
	chunked := 0
	snapshot.Walk(ctx, trees, root, func(rel string, n *snapshot.Node) error {
		if n.Type == snapshot.TypeFile {
			want[rel], _ = upload.ContentDigest(ctx, store, n)
			if len(n.Chunks) > 0 {
				chunked++
			}
		}
		return nil
	})
	if chunked == 0 {
		t.Fatal("no file was chunked; the test would not see partial chunked files")
	}

	dir, how, grow := smallFileSystem(t, total/2)
	t.Logf("target of %d bytes for a backup of %d, by %s", total/2, total, how)
	target := filepath.Join(dir, "out")
	sources := []Source{StoreSource(store)}
	_, err = Restore(ctx, trees, root, target, sources, Options{Parallel: 4})
	var full *TargetFullError
	if !errors.As(err, &full) || !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("restore into a full target: %v, want a TargetFullError for ENOSPC", err)
	}
	for _, want := range []string{target, "no space left on device", "make room and run the same restore again"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
	kept := 0
	filepath.WalkDir(target, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(target, p)
		if strings.HasPrefix(d.Name(), tempPrefix) {
			t.Errorf("temporary file %s left behind", rel)
			return nil
		}
		data, _ := os.ReadFile(p)
		if digest.Of(data) != want[filepath.ToSlash(rel)] {
			t.Errorf("%s is under its final name with wrong or partial content", rel)
		}
		kept++
		return nil
	})
	if kept == 0 || kept == len(want) {
		t.Fatalf("%d of %d files restored before the target was full; the test did not fill it", kept, len(want))
	}

	grow()
	res, err := Restore(ctx, trees, root, target, sources, Options{Parallel: 4})
	if err != nil {
		t.Fatalf("restore after making room: %v", err)
	}
	if res.FilesUpToDate != int64(kept) {
		t.Errorf("second restore kept %d files, want the %d already restored", res.FilesUpToDate, kept)
	}
	for rel, id := range want {
		data, err := os.ReadFile(filepath.Join(target, rel))
		if err != nil || digest.Of(data) != id {
			t.Errorf("%s after the second restore: %v", rel, err)
		}
	}
}
