package restore_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/deltabackup/deltabackup/hashstore"
	"github.com/deltabackup/deltabackup/hashstore/peer"
	"github.com/deltabackup/deltabackup/hashstore/peer/peertest"
	"github.com/deltabackup/deltabackup/hashstore/storetest"
	"github.com/deltabackup/deltabackup/restore"
	"github.com/deltabackup/deltabackup/restore/restoretest"
	"github.com/deltabackup/deltabackup/snapshot"
	"github.com/deltabackup/deltabackup/snapshot/digest"
	"github.com/deltabackup/deltabackup/upload"
)

// peerFixture is a data directory, a repository holding its backup, and
// the snapshot a peer serving the same directory would use.
type peerFixture struct {
	src     string
	store   *hashstore.Store
	mem     *hashstore.Memory
	root    digest.Digest
	trees   snapshot.TreeReader
	objects *snapshot.Objects
	// warnings counts what the last restore warned about: a restore from
	// healthy sources warns about nothing.
	warnings atomic.Int64
}

// newPeerFixture writes many files of similar sizes (so bytes can be
// balanced), a few large ones and some small ones, and backs them up.
func newPeerFixture(t testing.TB) *peerFixture {
	t.Helper()
	src := t.TempDir()
	r := rand.New(rand.NewPCG(9, 9))
	old := time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)
	write := func(rel string, n int) {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(r.Uint32())
		}
		p := filepath.Join(src, rel)
		os.MkdirAll(filepath.Dir(p), 0o755)
		os.WriteFile(p, b, 0o644)
		os.Chtimes(p, old, old)
	}
	for i := range 120 {
		write(fmt.Sprintf("d%d/f%03d", i%6, i), 100_000+r.IntN(100_000))
	}
	for i := range 4 {
		write(fmt.Sprintf("large/%d", i), 2<<20+r.IntN(1<<20))
	}
	for i := range 40 {
		write(fmt.Sprintf("small/%02d", i), 200+r.IntN(2000))
	}
	ctx := context.Background()
	mem := hashstore.NewMemory()
	store, _ := hashstore.Init(ctx, mem, storetest.Options(hashstore.Options{}))
	opts := snapshot.DefaultOptions()
	opts.MinDeltaFileSize = 64 << 10 // the ~150 KB files are loose objects: more to balance
	sum, err := upload.Backup(ctx, store, src, opts, upload.Options{})
	if err != nil {
		t.Fatal(err)
	}
	index := snapshot.NewObjectIndex()
	served := snapshot.DefaultOptions()
	served.OnFile = index.Add
	if served.Chunking, err = upload.RepositoryChunking(store); err != nil {
		t.Fatal(err)
	}
	s, _ := snapshot.New(src, served)
	res, err := s.Snapshot(ctx)
	if err != nil {
		t.Fatal(err)
	}
	objects, err := snapshot.NewObjects(res.ReadRoot, index)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { objects.Close() })
	return &peerFixture{src: src, store: store, mem: mem, root: sum.Record.Root, trees: &upload.Trees{Store: store}, objects: objects}
}

func (f *peerFixture) peer(t testing.TB, opts peer.ServerOptions, wrap func(http.Handler) http.Handler) (*peer.Client, *httptest.Server) {
	t.Helper()
	return f.serve(t, newServer(t, opts, f.objects), wrap)
}

// newServer makes a peer server; without a token in opts it serves
// without authentication.
func newServer(t testing.TB, opts peer.ServerOptions, providers ...peer.Provider) *peer.Server {
	t.Helper()
	if opts.Token == "" {
		opts.NoAuth = true
	}
	s, err := peer.NewServer(opts, providers...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s
}

// repositoryPeer serves the fixture's repository over the peer protocol,
// so it is exactly as fast as a live peer.
func (f *peerFixture) repositoryPeer(t testing.TB) *peer.Client {
	t.Helper()
	c, _ := f.serve(t, newServer(t, peer.ServerOptions{}, peer.StoreProvider{Store: f.store}), nil)
	return c
}

func (f *peerFixture) serve(t testing.TB, s *peer.Server, wrap func(http.Handler) http.Handler) (*peer.Client, *httptest.Server) {
	t.Helper()
	h := s.Handler()
	if wrap != nil {
		h = wrap(h)
	}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	c, err := peer.NewClient(srv.URL, peer.ClientOptions{IdleTimeout: 3 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	return c, srv
}

func (f *peerFixture) restore(t testing.TB, sources []restore.Source) (*restore.Result, string, error) {
	t.Helper()
	target := filepath.Join(t.TempDir(), "out")
	f.warnings.Store(0)
	res, err := restore.Restore(context.Background(), f.trees, f.root, target, sources, restore.Options{PerSource: 4, Logger: testLogger(t, &f.warnings)})
	return res, target, err
}

func TestRestoreFromThreePeersAndRepository(t *testing.T) {
	f := newPeerFixture(t)
	// Equally fast sources: the repository is served over the same
	// protocol as the peers, so the work stays where the plan put it.
	sources := []restore.Source{f.repositoryPeer(t)}
	for range 3 {
		c, _ := f.peer(t, peer.ServerOptions{}, nil)
		sources = append(sources, c)
	}
	res, target, err := f.restore(t, sources)
	if err != nil {
		t.Fatal(err)
	}
	restoretest.CompareTrees(t, f.src, target)
	var total, lo, hi int64 = 0, 1 << 62, 0
	for _, b := range res.Plan.Bytes {
		total += b
		lo, hi = min(lo, b), max(hi, b)
	}
	if float64(hi-lo) > 0.1*float64(total)/4 {
		t.Errorf("planned bytes per source %v are not within 10%% of each other", res.Plan.Bytes)
	}
	for i, b := range res.BytesPerSource {
		if b == 0 {
			t.Errorf("source %s delivered nothing (plan %v, fetched %v)", sources[i], res.Plan.Bytes, res.BytesPerSource)
		}
	}
	if n := f.warnings.Load(); n != 0 {
		t.Errorf("a restore from healthy sources logged %d warnings", n)
	}
	t.Logf("planned %v, fetched %v", res.Plan.Bytes, res.BytesPerSource)
}

func TestFastRepositoryTakesOverPeersWork(t *testing.T) {
	f := newPeerFixture(t)
	// An in-memory repository is far faster than any peer over HTTP: it
	// steals from the peers' queues, and the restore is still whole.
	sources := []restore.Source{restore.StoreSource(f.store)}
	for range 3 {
		c, _ := f.peer(t, peer.ServerOptions{Throttle: 4 << 20}, nil)
		sources = append(sources, c)
	}
	res, target, err := f.restore(t, sources)
	if err != nil {
		t.Fatal(err)
	}
	restoretest.CompareTrees(t, f.src, target)
	if res.BytesPerSource[0] <= res.Plan.Bytes[0] {
		t.Fatalf("the fast repository fetched only %d of its planned %d bytes; it should have taken over peers' work (fetched %v)",
			res.BytesPerSource[0], res.Plan.Bytes[0], res.BytesPerSource)
	}
	if n := f.warnings.Load(); n != 0 {
		t.Errorf("copies and take-overs among healthy sources logged %d warnings", n)
	}
	t.Logf("planned %v, fetched %v", res.Plan.Bytes, res.BytesPerSource)
}

func TestSlowPeerHandsItsWorkToOthers(t *testing.T) {
	f := newPeerFixture(t)
	slow, _ := f.peer(t, peer.ServerOptions{Throttle: 100 << 10}, nil)
	fast1, _ := f.peer(t, peer.ServerOptions{}, nil)
	fast2, _ := f.peer(t, peer.ServerOptions{}, nil)
	res, target, err := f.restore(t, []restore.Source{slow, fast1, fast2})
	if err != nil {
		t.Fatal(err)
	}
	restoretest.CompareTrees(t, f.src, target)
	if res.BytesPerSource[0] >= res.Plan.Bytes[0]/2 {
		t.Fatalf("the slow peer delivered %d of the %d bytes planned for it; the fast ones should have taken most of it (fetched %v)",
			res.BytesPerSource[0], res.Plan.Bytes[0], res.BytesPerSource)
	}
	if n := f.warnings.Load(); n != 0 {
		t.Errorf("a slow but healthy peer caused %d warnings", n)
	}
	t.Logf("planned %v, fetched %v", res.Plan.Bytes, res.BytesPerSource)
}

func TestPeerKilledMidRestore(t *testing.T) {
	f := newPeerFixture(t)
	var requests atomic.Int64
	var srv *httptest.Server
	victim, srv := f.peer(t, peer.ServerOptions{Throttle: 2 << 20}, func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path != "/v1/has" && requests.Add(1) == 3 {
				go func() { srv.CloseClientConnections(); srv.Listener.Close() }()
			}
			h.ServeHTTP(w, r)
		})
	})
	other, _ := f.peer(t, peer.ServerOptions{}, nil)
	res, target, err := f.restore(t, []restore.Source{victim, other, restore.StoreSource(f.store)})
	if err != nil {
		t.Fatalf("restore with a peer killed midway: %v", err)
	}
	restoretest.CompareTrees(t, f.src, target)
	if res.BytesPerSource[0] >= res.Plan.Bytes[0] {
		t.Fatalf("the killed peer delivered everything planned for it: %v of %v", res.BytesPerSource, res.Plan.Bytes)
	}
	t.Logf("planned %v, fetched %v", res.Plan.Bytes, res.BytesPerSource)
}

func TestPeerSendingWrongBytesIsRejected(t *testing.T) {
	f := newPeerFixture(t)
	liar, _ := f.peer(t, peer.ServerOptions{}, peertest.Lying)
	honest, _ := f.peer(t, peer.ServerOptions{}, nil)
	res, target, err := f.restore(t, []restore.Source{liar, honest})
	if err != nil {
		t.Fatal(err)
	}
	restoretest.CompareTrees(t, f.src, target)
	if res.BytesPerSource[0] != 0 {
		t.Fatalf("%d bytes from the lying peer were kept", res.BytesPerSource[0])
	}
}

func TestObjectOnlyADeadPeerHeld(t *testing.T) {
	f := newPeerFixture(t)
	// The repository lost one large object; only a peer holds it, and that
	// peer dies right after telling the planner so.
	var lost snapshot.Hash
	snapshot.Hashes(context.Background(), f.trees, f.root, func(h snapshot.Hash) error {
		if h.Size > lost.Size {
			lost = h // a chunk of a large file, or a loose ~150 KB file
		}
		return nil
	})
	f.mem.Delete(context.Background(), f.store.ObjectKey(lost.Hexdigest))
	var srv *httptest.Server
	var gone atomic.Bool
	dead, srv := f.peer(t, peer.ServerOptions{}, func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if gone.Load() {
				// Dead: a request that still reaches it gets its
				// connection dropped, never an answer.
				if conn, _, err := http.NewResponseController(w).Hijack(); err == nil {
					conn.Close()
				}
				return
			}
			h.ServeHTTP(w, r)
			if r.URL.Path == "/v1/has" {
				gone.Store(true)
				go func() { srv.CloseClientConnections(); srv.Listener.Close() }()
			}
		})
	})
	res, target, err := f.restore(t, []restore.Source{restore.StoreSource(f.store), dead})
	var inc *restore.IncompleteError
	if !errors.As(err, &inc) {
		t.Fatalf("restore without the only holder: %v", err)
	}
	if len(res.Failed) != 1 || res.Failed[0].ID != lost.Hexdigest {
		t.Fatalf("failed %v, want only the file of %s", res.Failed, lost.Hexdigest)
	}
	msg := res.Failed[0].Err.Error()
	if !strings.Contains(msg, lost.Hexdigest.String()) || !strings.Contains(msg, dead.String()) {
		t.Fatalf("the error does not say what is missing and where it was expected: %s", msg)
	}
	restoretest.CompareTrees(t, f.src, target, res.Failed[0].Path)
}

func TestDeadPeerAtPlanningIsLeftOut(t *testing.T) {
	f := newPeerFixture(t)
	dead, srv := f.peer(t, peer.ServerOptions{}, nil)
	srv.Close()
	res, target, err := f.restore(t, []restore.Source{dead, restore.StoreSource(f.store)})
	if err != nil {
		t.Fatal(err)
	}
	restoretest.CompareTrees(t, f.src, target)
	if res.Plan.SourceErrors[0] == nil || res.BytesPerSource[0] != 0 {
		t.Fatalf("a dead peer was planned with: %v, fetched %v", res.Plan.SourceErrors, res.BytesPerSource)
	}
}

// testLogger logs through t.Log, with debug messages when
// DELTABACKUP_TEST_DEBUG is set, and counts warnings.
func testLogger(t testing.TB, warnings *atomic.Int64) *slog.Logger {
	level := slog.LevelWarn
	if os.Getenv("DELTABACKUP_TEST_DEBUG") != "" {
		level = slog.LevelDebug
	}
	return slog.New(countingHandler{slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: level}), warnings})
}

// countingHandler counts the records at warning level and above.
type countingHandler struct {
	slog.Handler
	warnings *atomic.Int64
}

func (h countingHandler) Handle(ctx context.Context, r slog.Record) error {
	if r.Level >= slog.LevelWarn {
		h.warnings.Add(1)
	}
	return h.Handler.Handle(ctx, r)
}

func (h countingHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	return countingHandler{h.Handler.WithAttrs(attrs), h.warnings}
}

func (h countingHandler) WithGroup(name string) slog.Handler {
	return countingHandler{h.Handler.WithGroup(name), h.warnings}
}

type tWriter struct{ t testing.TB }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

// BenchmarkRestoreFromPeers restores the fixture from 1, 2 and 3 peers
// over loopback HTTP and reports MB/s in total and per source.
func BenchmarkRestoreFromPeers(b *testing.B) {
	f := newPeerFixture(b)
	var peers []restore.Source
	for range 3 {
		c, _ := f.peer(b, peer.ServerOptions{}, nil)
		peers = append(peers, c)
	}
	for n := 1; n <= 3; n++ {
		b.Run(fmt.Sprintf("peers=%d", n), func(b *testing.B) {
			var total int64
			perSource := make([]int64, n)
			var elapsed time.Duration
			for b.Loop() {
				target := filepath.Join(b.TempDir(), "out")
				start := time.Now()
				res, err := restore.Restore(context.Background(), f.trees, f.root, target, peers[:n], restore.Options{})
				elapsed += time.Since(start)
				if err != nil {
					b.Fatal(err)
				}
				total = res.BytesDownloaded
				for i, v := range res.BytesPerSource {
					perSource[i] += v
				}
			}
			b.SetBytes(total)
			for i, v := range perSource {
				b.ReportMetric(float64(v)/1e6/elapsed.Seconds(), fmt.Sprintf("MB/s-source%d", i+1))
			}
		})
	}
}
