package hashstore_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
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

// gcTree writes n small files and a few large ones under dir, with
// content depending on version for the files selected by changed.
func gcTree(t *testing.T, dir string, version int, changed func(i int) bool) {
	t.Helper()
	for i := range 300 {
		v := 0
		if changed(i) {
			v = version
		}
		size := 1000 + i*13
		if i%100 <= 1 { // large contents, shared (0) and changed (1) by later backups
			size = 800 << 10
		}
		data := make([]byte, size)
		rand.NewChaCha8([32]byte{byte(i), byte(i >> 8), byte(v)}).Read(data)
		p := filepath.Join(dir, fmt.Sprintf("d%d/f%03d", i%5, i))
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

type gcFixture struct {
	store   *hashstore.Store
	backend hashstore.Backend
	srcs    map[string]string // backup → a copy of its source
}

// newGCFixture makes backups b1..b3: b2 rewrites 80% of the files, b3 a
// few, so forgetting b1 leaves its packs mostly dead.
func newGCFixture(t *testing.T, backend hashstore.Backend) *gcFixture {
	ctx := context.Background()
	store, err := hashstore.Init(ctx, backend, storetest.Options(hashstore.Options{}))
	if err != nil {
		t.Fatal(err)
	}
	f := &gcFixture{store: store, backend: backend, srcs: map[string]string{}}
	changes := []func(int) bool{
		func(int) bool { return false },
		func(i int) bool { return i%5 != 0 },
		func(i int) bool { return i%5 != 0 && i%7 != 0 },
	}
	for n, changed := range changes {
		name := fmt.Sprintf("b%d", n+1)
		src := filepath.Join(t.TempDir(), name)
		gcTree(t, src, n+1, changed)
		if _, err := upload.Backup(ctx, store, src, snapshot.DefaultOptions(), upload.Options{Name: name}); err != nil {
			t.Fatal(err)
		}
		f.srcs[name] = src
	}
	return f
}

func (f *gcFixture) forget(t *testing.T, name string) {
	if err := f.backend.Delete(context.Background(), "backups/"+name+".json"); err != nil {
		t.Fatal(err)
	}
}

// check verifies the repository and restores every remaining backup.
func (f *gcFixture) check(t *testing.T) {
	t.Helper()
	ctx := context.Background()
	store, err := hashstore.Open(ctx, f.backend, storetest.Options(hashstore.Options{})) // a fresh reader, no cached index
	if err != nil {
		t.Fatal(err)
	}
	rep, err := store.Verify(ctx, hashstore.VerifyOptions{Referrer: upload.Referrer{Store: store}, ReadData: true, Parallel: 2})
	if err != nil || !rep.OK() {
		t.Fatalf("verify: %v %v", err, rep.Problems)
	}
	recs, err := store.Backups(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, rec := range recs {
		target := t.TempDir()
		if _, err := restore.Restore(ctx, &upload.Trees{Store: store}, rec.Root, target, []restore.Source{restore.StoreSource(store)}, restore.Options{}); err != nil {
			t.Fatalf("restore %s: %v", rec.Name, err)
		}
		restoretest.CompareTrees(t, f.srcs[rec.Name], target)
	}
}

func countKeys(t *testing.T, b hashstore.Backend, prefix string) (n int, bytes int64) {
	b.List(context.Background(), prefix, func(info hashstore.Info) error {
		n++
		bytes += info.Size
		return nil
	})
	return n, bytes
}

func TestGCDeletesOnlyWhatNoBackupReferences(t *testing.T) {
	ctx := context.Background()
	f := newGCFixture(t, hashstore.NewLocal(filepath.Join(t.TempDir(), "repo")))
	if rep, err := f.store.GC(ctx, hashstore.GCOptions{Referrer: upload.Referrer{Store: f.store}}); err != nil || rep.DeletedObjects+rep.DeletedPacks+rep.RepackedPacks != 0 {
		t.Fatalf("gc with every backup alive: %+v, %v", rep, err)
	}
	f.forget(t, "b1")
	_, before := countKeys(t, f.backend, "")
	// Temporary files of writes that were killed, one old, one recent.
	root := f.backend.(*hashstore.Local).Root()
	oldTemp, newTemp := filepath.Join(root, "objects", ".tmp-killed"), filepath.Join(root, "packs", ".tmp-writing")
	os.WriteFile(oldTemp, []byte("half an object"), 0o600)
	os.WriteFile(newTemp, []byte("being written"), 0o600)
	os.Chtimes(oldTemp, time.Now().Add(-2*time.Hour), time.Now().Add(-2*time.Hour))

	dry, err := f.store.GC(ctx, hashstore.GCOptions{Referrer: upload.Referrer{Store: f.store}, DryRun: true})
	if err != nil {
		t.Fatal(err)
	}
	if _, same := countKeys(t, f.backend, ""); same != before || dry.DeletedBytes == 0 {
		t.Fatalf("dry run: %+v; repository changed from %d to %d bytes", dry, before, same)
	}
	rep, err := f.store.GC(ctx, hashstore.GCOptions{Referrer: upload.Referrer{Store: f.store}})
	if err != nil {
		t.Fatal(err)
	}
	_, after := countKeys(t, f.backend, "")
	t.Logf("gc: %+v; repository %d → %d bytes", rep, before, after)
	if rep.DeletedObjects == 0 || rep.RepackedPacks+rep.DeletedPacks == 0 || after >= before {
		t.Fatalf("gc after forgetting b1 freed nothing: %+v", rep)
	}
	if _, err := os.Stat(oldTemp); err == nil || rep.TempFiles != 1 {
		t.Errorf("an old temporary file was not removed (%d removed)", rep.TempFiles)
	}
	if _, err := os.Stat(newTemp); err != nil {
		t.Errorf("a recent temporary file was removed: %v", err)
	}
	if rep.DeletedObjects != dry.DeletedObjects || rep.RepackedPacks != dry.RepackedPacks || rep.DeletedPacks != dry.DeletedPacks {
		t.Errorf("dry run said %+v, gc did %+v", dry, rep)
	}
	delete(f.srcs, "b1")
	f.check(t)
	if again, err := f.store.GC(ctx, hashstore.GCOptions{Referrer: upload.Referrer{Store: f.store}}); err != nil || again.DeletedObjects+again.DeletedPacks+again.RepackedPacks != 0 {
		t.Fatalf("second gc: %+v, %v", again, err)
	}
}

// gate holds every Put of a key under prefix until opened, and says when
// the first one arrives.
type gate struct {
	hashstore.Backend
	prefix  string
	arrived chan struct{}
	open    chan struct{}
	once    sync.Once
}

func (g *gate) Put(ctx context.Context, key string, r io.Reader, size int64) error {
	if strings.HasPrefix(key, g.prefix) {
		g.once.Do(func() { close(g.arrived) })
		<-g.open
	}
	return g.Backend.Put(ctx, key, r, size)
}

// TestGCNeverDeletesWhatARunningBackupNeeds stops a backup just before it
// writes its record, having found its contents already stored (by a
// forgotten backup, so gc would delete them), and runs gc then. gc runs
// beside the backup: it marks what no record references but deletes
// nothing, since the backup may rely on it. Once the backup is done the
// next gc sweeps: it reads the records again and keeps what the new
// record references, and every backup restores byte for byte.
func TestGCNeverDeletesWhatARunningBackupNeeds(t *testing.T) {
	ctx := context.Background()
	g := &gate{Backend: hashstore.NewMemory(), prefix: "not-yet/", arrived: make(chan struct{}), open: make(chan struct{})}
	f := newGCFixture(t, g)
	f.forget(t, "b1")
	f.forget(t, "b2")
	delete(f.srcs, "b1")
	delete(f.srcs, "b2")

	// b4 has b1's content: objects gc would delete if it ran now.
	src := filepath.Join(t.TempDir(), "b4")
	gcTree(t, src, 1, func(int) bool { return false })
	f.srcs["b4"] = src
	g.prefix = "backups/b4"
	backupDone := make(chan error, 1)
	go func() {
		_, err := upload.Backup(ctx, f.store, src, snapshot.DefaultOptions(), upload.Options{Name: "b4"})
		backupDone <- err
	}()
	<-g.arrived // the backup is about to write its record

	_, before := countKeys(t, g, "")
	rep, err := f.store.GC(ctx, hashstore.GCOptions{Referrer: upload.Referrer{Store: f.store}})
	if err != nil {
		t.Fatalf("gc beside a backup: %v", err)
	}
	t.Logf("gc beside the backup: %+v", rep)
	if rep.MarkedObjects+rep.MarkedPacks == 0 || rep.PendingMarks != 1 || len(rep.WaitingFor) != 1 ||
		!strings.Contains(rep.WaitingFor[0], "shared lock for backup") || rep.DeletedObjects+rep.DeletedPacks != 0 {
		t.Fatalf("gc beside a backup: %+v, want a mark that waits for the backup and nothing deleted", rep)
	}
	if _, after := countKeys(t, g, ""); after < before {
		t.Fatalf("gc beside a backup deleted data: %d → %d bytes", before, after)
	}
	close(g.open)
	if err := <-backupDone; err != nil {
		t.Fatal(err)
	}
	rep, err = f.store.GC(ctx, hashstore.GCOptions{Referrer: upload.Referrer{Store: f.store}})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("gc after the backup: %+v", rep)
	if rep.SweptMarks == 0 || rep.KeptLive == 0 || rep.DeletedBytes == 0 || rep.PendingMarks != 0 {
		t.Fatalf("gc after the backup: %+v, want the mark swept, keeping what b4 references", rep)
	}
	f.check(t)
}

// TestBackupAfterAMarkStoresDoomedContentAgain: a backup that starts
// while a mark waits (here for another backup's lock) takes what the
// mark dooms for absent and stores it again: packed contents into new
// packs, loose ones under their key, saying so on its lock. A sweep
// that runs while that backup still runs deletes the doomed packs but
// leaves the loose objects it stores again, for a later gc; every backup
// restores byte for byte throughout.
func TestBackupAfterAMarkStoresDoomedContentAgain(t *testing.T) {
	ctx := context.Background()
	g := &gate{Backend: hashstore.NewMemory(), prefix: "not-yet/", arrived: make(chan struct{}), open: make(chan struct{})}
	f := newGCFixture(t, g)
	f.forget(t, "b1")
	delete(f.srcs, "b1")
	other := liveLockOfAnotherHost(t, g)
	rep, err := f.store.GC(ctx, hashstore.GCOptions{Referrer: upload.Referrer{Store: f.store}})
	if err != nil || rep.PendingMarks != 1 || rep.MarkedObjects == 0 || rep.DeletedObjects+rep.DeletedPacks != 0 {
		t.Fatalf("gc beside another host's backup: %+v, %v", rep, err)
	}

	src := filepath.Join(t.TempDir(), "b5")
	gcTree(t, src, 1, func(int) bool { return false }) // b1's content, doomed now
	f.srcs["b5"] = src
	g.prefix = "backups/b5"
	store, err := hashstore.Open(ctx, g, storetest.Options(hashstore.Options{}))
	if err != nil {
		t.Fatal(err)
	}
	type result struct {
		sum *upload.Summary
		err error
	}
	done := make(chan result, 1)
	go func() {
		sum, err := upload.Backup(ctx, store, src, snapshot.DefaultOptions(), upload.Options{Name: "b5"})
		done <- result{sum, err}
	}()
	<-g.arrived
	if err := g.Backend.Delete(ctx, other); err != nil { // the other backup ends
		t.Fatal(err)
	}
	rep, err = f.store.GC(ctx, hashstore.GCOptions{Referrer: upload.Referrer{Store: f.store}})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("gc beside a backup that stores doomed content again: %+v", rep)
	// Which packs are wholly dead and which are repacked depends on how
	// the backups' walks grouped objects into packs: the bytes freed tell.
	if rep.SweptMarks != 0 || rep.Deferred == 0 || rep.DeletedBytes == 0 {
		t.Fatalf("gc beside b5: %+v, want doomed packs deleted and loose objects deferred", rep)
	}
	close(g.open)
	res := <-done
	if res.err != nil {
		t.Fatal(res.err)
	}
	if res.sum.UploadedObjects == 0 {
		t.Fatalf("b5 stored nothing: it referenced doomed copies")
	}
	f.check(t)
	rep, err = f.store.GC(ctx, hashstore.GCOptions{Referrer: upload.Referrer{Store: f.store}})
	if err != nil || rep.SweptMarks == 0 || rep.KeptLive == 0 || rep.PendingMarks != 0 {
		t.Fatalf("gc after b5: %+v, %v; want the deferred mark swept, keeping what b5 stored again", rep, err)
	}
	f.check(t)
}

// liveLockOfAnotherHost writes the shared lock of a backup running on
// another host, and returns its key.
func liveLockOfAnotherHost(t *testing.T, b hashstore.Backend) string {
	now := time.Now().UTC().Format(time.RFC3339Nano)
	lock := fmt.Sprintf(`{"kind":"shared","purpose":"backup","host":"elsewhere","pid":4242,"created":%q,"refreshed":%q}`, now, now)
	key := "locks/shared/elsewhere.json"
	if err := b.Put(context.Background(), key, strings.NewReader(lock), int64(len(lock))); err != nil {
		t.Fatal(err)
	}
	return key
}

func TestGCIgnoresAndRemovesStaleLocks(t *testing.T) {
	ctx := context.Background()
	mem := hashstore.NewMemory()
	f := newGCFixture(t, mem)
	old := time.Now().Add(-2 * time.Hour).UTC()
	stale := fmt.Sprintf(`{"kind":"shared","purpose":"backup","host":"gone","pid":1,"created":%q,"refreshed":%q}`, old.Format(time.RFC3339), old.Format(time.RFC3339))
	mem.Put(ctx, "locks/stale.json", strings.NewReader(stale), int64(len(stale)))
	mem.Put(ctx, "locks/garbage.json", strings.NewReader("{"), 1)
	// A fresh lock of a process of this host that has exited (a killed
	// backup) is stale at once.
	gone := exec.Command("true")
	if err := gone.Run(); err != nil {
		t.Fatal(err)
	}
	host, _ := os.Hostname()
	boot, _ := os.ReadFile("/proc/sys/kernel/random/boot_id")
	ns, _ := os.Readlink("/proc/self/ns/pid")
	now := time.Now().UTC().Format(time.RFC3339)
	crashed := fmt.Sprintf(`{"kind":"shared","purpose":"backup","host":%q,"boot_id":%q,"pid_namespace":%q,"pid":%d,"created":%q,"refreshed":%q}`,
		host, strings.TrimSpace(string(boot)), ns, gone.Process.Pid, now, now)
	mem.Put(ctx, "locks/crashed.json", strings.NewReader(crashed), int64(len(crashed)))
	rep, err := f.store.GC(ctx, hashstore.GCOptions{Referrer: upload.Referrer{Store: f.store}})
	if err != nil {
		t.Fatalf("gc with stale locks: %v", err)
	}
	if len(rep.StaleLocks) != 3 {
		t.Fatalf("stale locks removed: %v", rep.StaleLocks)
	}
	if n, _ := countKeys(t, mem, "locks/"); n != 0 {
		t.Fatalf("%d locks left", n)
	}
}

// TestLockOfAnotherPIDNamespaceIsNotJudgedByItsPID is the audit's H3 (a):
// a backup in a container on the host network has the host's name but its
// own PIDs. While it is refreshed, gc must wait for it before deleting
// anything, even when no process of that PID runs in gc's namespace.
func TestLockOfAnotherPIDNamespaceIsNotJudgedByItsPID(t *testing.T) {
	ctx := context.Background()
	gone := exec.Command("true")
	if err := gone.Run(); err != nil {
		t.Fatal(err)
	}
	host, _ := os.Hostname()
	boot, _ := os.ReadFile("/proc/sys/kernel/random/boot_id")
	now := time.Now().UTC().Format(time.RFC3339)
	for i, ns := range []string{"pid:[4026599999]", ""} { // another namespace; a lock that does not say
		lock := fmt.Sprintf(`{"kind":"shared","purpose":"backup","host":%q,"boot_id":%q,"pid_namespace":%q,"pid":%d,"created":%q,"refreshed":%q}`,
			host, strings.TrimSpace(string(boot)), ns, gone.Process.Pid, now, now)
		mem := hashstore.NewMemory()
		f := newGCFixture(t, mem)
		f.forget(t, "b1")
		key := fmt.Sprintf("locks/shared/container-%d.json", i)
		mem.Put(ctx, key, strings.NewReader(lock), int64(len(lock)))
		rep, err := f.store.GC(ctx, hashstore.GCOptions{Referrer: upload.Referrer{Store: f.store}})
		if err != nil || rep.PendingMarks == 0 || !slices.ContainsFunc(rep.WaitingFor, func(w string) bool { return strings.Contains(w, "shared lock for backup") }) {
			t.Fatalf("gc beside a live lock of pid namespace %q: %+v, %v; want a mark that waits for it", ns, rep, err)
		}
	}
}

// TestInterruptedGCLeavesAConsistentRepository fails gc part way at each
// step: a mark that cannot complete its pending deletion, a sweep that
// cannot write its marker, deletes of index files, packs and objects.
// Every backup still restores, and the next gc finishes.
func TestInterruptedGCLeavesAConsistentRepository(t *testing.T) {
	for name, rule := range map[string]faultstore.Rule{
		"mark":    {Op: faultstore.Put, KeyPrefix: "gc/pending/", FailEvery: 2}, // written incomplete, not completed
		"sweep":   {Op: faultstore.Put, KeyPrefix: "gc/2", FailAlways: true},    // the sweep's marker
		"index":   {Op: faultstore.Delete, KeyPrefix: "index/", FailAlways: true},
		"packs":   {Op: faultstore.Delete, KeyPrefix: "packs/", FailAlways: true},
		"objects": {Op: faultstore.Delete, KeyPrefix: "objects/", FailAlways: true},
	} {
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			faulty := faultstore.New(hashstore.NewMemory())
			f := newGCFixture(t, faulty)
			f.forget(t, "b1")
			delete(f.srcs, "b1")
			faulty.AddRule(rule)
			if _, err := f.store.GC(ctx, hashstore.GCOptions{Referrer: upload.Referrer{Store: f.store}}); !errors.Is(err, faultstore.ErrInjected) {
				t.Fatalf("gc failing at its %s: %v", name, err)
			}
			faulty.ClearRules()
			f.check(t)
			if _, err := f.store.GC(ctx, hashstore.GCOptions{Referrer: upload.Referrer{Store: f.store}}); err != nil {
				t.Fatal(err)
			}
			f.check(t)
			if again, err := f.store.GC(ctx, hashstore.GCOptions{Referrer: upload.Referrer{Store: f.store}}); err != nil || again.DeletedObjects+again.DeletedPacks+again.RepackedPacks != 0 {
				t.Fatalf("gc after the interrupted one left work: %+v, %v", again, err)
			}
			if n, _ := countKeys(t, faulty, "gc/pending/"); n != 0 {
				t.Fatalf("%d pending deletions left after the interrupted gc was finished", n)
			}
		})
	}
}

func TestGCRefusesWhenABackupCannotBeRead(t *testing.T) {
	ctx := context.Background()
	mem := hashstore.NewMemory()
	f := newGCFixture(t, mem)
	mem.Put(ctx, "backups/b2.json", strings.NewReader("{"), 1)
	_, err := f.store.GC(ctx, hashstore.GCOptions{Referrer: upload.Referrer{Store: f.store}})
	if err == nil || !strings.Contains(err.Error(), "gc cannot tell what backup b2 references") {
		t.Fatalf("gc with a damaged record: %v", err)
	}
}

// retainingBackend holds chosen keys under retention (as S3 Object Lock
// would): deleting or overwriting one fails.
type retainingBackend struct {
	hashstore.Backend
	mu       sync.Mutex
	retained map[string]bool
}

func (r *retainingBackend) Retains() bool { return true }

func (r *retainingBackend) RetainedUntil(ctx context.Context, key string) (time.Time, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, err := r.Backend.Stat(ctx, key); err != nil {
		return time.Time{}, err
	}
	if r.retained[key] {
		return time.Now().Add(time.Hour), nil
	}
	return time.Time{}, nil
}

func (r *retainingBackend) Delete(ctx context.Context, key string) error {
	r.mu.Lock()
	retained := r.retained[key]
	r.mu.Unlock()
	if retained {
		return fmt.Errorf("delete %s: retained", key)
	}
	return r.Backend.Delete(ctx, key)
}

// TestGCLeavesRetainedKeysAlone: gc after forgetting b1, with one of the
// index files naming b1's packs and one dead pack under retention: the
// retained index file is not rewritten, every pack it names stays (or
// readers would take objects of a deleted pack as stored), the retained
// pack stays, the rest is collected, and every remaining backup verifies
// and restores; a later gc, once nothing is retained, collects the rest.
func TestGCLeavesRetainedKeysAlone(t *testing.T) {
	ctx := context.Background()
	rb := &retainingBackend{Backend: hashstore.NewMemory(), retained: map[string]bool{}}
	f := newGCFixture(t, rb)
	f.forget(t, "b1")
	// b1's first index file and its packs.
	var indexKeys []string
	rb.List(ctx, "index/", func(i hashstore.Info) error { indexKeys = append(indexKeys, i.Key); return nil })
	var packKeys []string
	rb.List(ctx, "packs/", func(i hashstore.Info) error { packKeys = append(packKeys, i.Key); return nil })
	plain, _ := hashstore.Open(ctx, rb, storetest.Options(hashstore.Options{}))
	dry, err := plain.GC(ctx, hashstore.GCOptions{Referrer: upload.Referrer{Store: plain}, DryRun: true})
	if err != nil || dry.DeletedPacks+dry.RepackedPacks == 0 {
		t.Fatalf("the fixture leaves nothing to collect: %+v %v", dry, err)
	}
	for _, k := range indexKeys {
		rb.retained[k] = true // every index file: no pack may go
	}
	store, _ := hashstore.Open(ctx, rb, storetest.Options(hashstore.Options{}))
	rep, err := store.GC(ctx, hashstore.GCOptions{Referrer: upload.Referrer{Store: store}})
	if err != nil {
		t.Fatal(err)
	}
	if rep.DeletedPacks != 0 || rep.RepackedPacks != 0 || rep.RewrittenIndex != 0 || rep.Retained == 0 {
		t.Errorf("gc with every index file retained: %+v", rep)
	}
	var after []string
	rb.List(ctx, "packs/", func(i hashstore.Info) error { after = append(after, i.Key); return nil })
	if len(after) != len(packKeys) {
		t.Errorf("%d packs before gc, %d after, with every index file retained", len(packKeys), len(after))
	}
	f.check(t)
	// Retention over: the next gc collects what it can now.
	rb.retained = map[string]bool{}
	rep, err = store.GC(ctx, hashstore.GCOptions{Referrer: upload.Referrer{Store: store}})
	if err != nil || rep.DeletedPacks+rep.RepackedPacks == 0 || rep.Retained != 0 {
		t.Errorf("gc after retention: %+v %v", rep, err)
	}
	f.check(t)
}
