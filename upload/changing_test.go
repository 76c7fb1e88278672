package upload_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/deltabackup/deltabackup/snapshot/digest"

	"github.com/deltabackup/deltabackup/hashstore"
	"github.com/deltabackup/deltabackup/hashstore/storetest"
	"github.com/deltabackup/deltabackup/snapshot"
	"github.com/deltabackup/deltabackup/upload"
)

// contentID is the id of a file node's whole content, embedded or not.
func contentID(t *testing.T, store *hashstore.Store, n *snapshot.Node) digest.Digest {
	t.Helper()
	if n.IsEmbedded() {
		return digest.Of(n.Embedded)
	}
	id, err := upload.ContentDigest(context.Background(), store, n)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// storm rewrites, appends to, truncates, deletes and replaces (rename
// over) files while backups run, and remembers what it did.
type storm struct {
	root string
	rng  *rand.Rand
	mu   sync.Mutex
	// versions holds every content a path ever had, for paths changed only
	// atomically (rename over, delete); touched every path changed at all.
	versions   map[string]map[digest.Digest]bool
	inPlace    map[string]bool
	touched    map[string]bool
	operations map[string]int
}

func stormContent(rel string, version, size int) []byte {
	data := make([]byte, size)
	var seed [32]byte
	copy(seed[:], fmt.Sprintf("%s@%d", rel, version))
	rand.NewChaCha8(seed).Read(data)
	return data
}

func (s *storm) remember(rel string, data []byte) {
	if s.versions[rel] == nil {
		s.versions[rel] = map[digest.Digest]bool{}
	}
	s.versions[rel][digest.Of(data)] = true
}

// step makes one random change to one of files.
func (s *storm) step(files []string, version int) {
	rel := files[s.rng.IntN(len(files))]
	p := filepath.Join(s.root, rel)
	size := 200 + s.rng.IntN(3000)
	if s.rng.IntN(4) == 0 {
		size = 600<<10 + s.rng.IntN(1<<20) // read again at upload, not packed
	}
	op := []string{"rewrite", "append", "truncate", "delete", "rename over"}[s.rng.IntN(5)]
	s.mu.Lock()
	s.touched[rel] = true
	s.touched[rel+".new"] = true // the replacement, briefly in the tree
	// The replacement is written in place before it is renamed: a
	// snapshot may see it at any stage of that write.
	s.inPlace[rel+".new"] = true
	s.operations[op]++
	if op != "delete" && op != "rename over" {
		s.inPlace[rel] = true
	}
	s.mu.Unlock()
	switch op {
	case "rewrite":
		os.WriteFile(p, stormContent(rel, version, size), 0o644)
	case "append":
		if f, err := os.OpenFile(p, os.O_APPEND|os.O_WRONLY, 0); err == nil {
			f.Write(stormContent(rel, version, 1+size/10))
			f.Close()
		}
	case "truncate":
		if fi, err := os.Stat(p); err == nil {
			os.Truncate(p, fi.Size()/2)
		}
	case "delete":
		os.Remove(p)
	case "rename over":
		data := stormContent(rel, version, size)
		s.mu.Lock()
		s.remember(rel, data)
		s.mu.Unlock()
		tmp := p + ".new"
		os.WriteFile(tmp, data, 0o644)
		os.Rename(tmp, p)
	}
}

// TestChangingSourceNeverStoresWrongContent runs backups while files are
// rewritten, appended to, truncated, deleted and replaced. Every object
// must hash to its key, every restored file to its manifest entry, files
// nobody touched must be backed up as they are, a file replaced atomically
// must be backed up as one of its versions, and changes must be reported
// only for files that were changed.
func TestChangingSourceNeverStoresWrongContent(t *testing.T) {
	ctx := context.Background()
	store, err := hashstore.Init(ctx, hashstore.NewLocal(filepath.Join(t.TempDir(), "repo")), storetest.Options(hashstore.Options{}))
	if err != nil {
		t.Fatal(err)
	}
	src := t.TempDir()
	s := &storm{root: src, rng: rand.New(rand.NewPCG(1, 2)), versions: map[string]map[digest.Digest]bool{},
		inPlace: map[string]bool{}, touched: map[string]bool{}, operations: map[string]int{}}
	var all, stormed []string
	for i := range 120 {
		rel := fmt.Sprintf("d%d/f%03d", i%6, i)
		size := 300 + i*37
		if i%10 == 0 {
			size = 700 << 10
		}
		data := stormContent(rel, 0, size)
		if err := os.MkdirAll(filepath.Dir(filepath.Join(src, rel)), 0o755); err != nil {
			t.Fatal(err)
		}
		os.WriteFile(filepath.Join(src, rel), data, 0o644)
		s.remember(rel, data)
		all = append(all, rel)
		if i%2 == 0 { // half the files are never touched
			stormed = append(stormed, rel)
		}
	}
	time.Sleep(250 * time.Millisecond) // past the stat cache's racy window

	reported := map[string]bool{}
	cacheDir := t.TempDir()
	for round := range 6 {
		stop := make(chan struct{})
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer wg.Done()
			for v := 1; ; v++ {
				select {
				case <-stop:
					return
				default:
				}
				s.step(stormed, round*1_000_000+v)
			}
		}()
		opts := snapshot.DefaultOptions()
		opts.Parallel = 2
		sum, err := upload.Backup(ctx, store, src, opts, upload.Options{CacheDir: cacheDir})
		close(stop)
		wg.Wait()
		if err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		for _, p := range append(sum.Snapshot.Changed, sum.Snapshot.Unreadable...) {
			reported[p.Path] = true
			if !s.touched[p.Path] {
				t.Errorf("round %d: %s reported (%v) but nobody changed it", round, p.Path, p.Err)
			}
		}
		rec := sum.Record
		inBackup := files(t, store, rec)
		for rel, f := range inBackup {
			if s.touched[rel] && !s.inPlace[rel] && !s.versions[rel][contentID(t, store, f)] {
				t.Errorf("round %d: %s, only ever replaced whole, is in the backup with content it never had", round, rel)
			}
		}
		for _, rel := range all {
			if s.touched[rel] {
				continue
			}
			f, ok := inBackup[rel]
			if !ok || !s.versions[rel][contentID(t, store, f)] {
				t.Errorf("round %d: untouched %s is not in the backup as it is", round, rel)
			}
		}
		// Every object hashes to its key...
		rep, err := store.Verify(ctx, hashstore.VerifyOptions{Referrer: upload.Referrer{Store: store}, Backups: []string{rec.Name}, ReadData: true, Parallel: 2})
		if err != nil || !rep.OK() {
			t.Fatalf("round %d: verify: %v %v", round, err, rep.Problems)
		}
		// ...and every file restores to content that hashes to its entry.
		target := restoreTo(t, store, rec)
		for rel, f := range inBackup {
			data, err := os.ReadFile(filepath.Join(target, rel))
			if err != nil || int64(len(data)) != f.Size || digest.Of(data) != contentID(t, store, f) {
				t.Errorf("round %d: %s restored wrong: %v", round, rel, err)
			}
		}
		// Put the deleted files back for the next round.
		for _, rel := range stormed {
			p := filepath.Join(src, rel)
			if _, err := os.Stat(p); err != nil {
				data := stormContent(rel, -round, 500)
				s.remember(rel, data)
				os.WriteFile(p, data, 0o644)
			}
		}
	}
	t.Logf("operations %v; %d files reported changed or vanished", s.operations, len(reported))
	if len(reported) == 0 {
		t.Log("no change was caught mid-read this time; the content checks above still ran")
	}
}
