package peer_test

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/deltabackup/deltabackup/snapshot/digest"

	"github.com/deltabackup/deltabackup/hashstore"
	"github.com/deltabackup/deltabackup/hashstore/peer"
	"github.com/deltabackup/deltabackup/hashstore/peer/peertest"
	"github.com/deltabackup/deltabackup/hashstore/storetest"
	"github.com/deltabackup/deltabackup/snapshot"
)

type fixture struct {
	dir     string
	objects *snapshot.Objects
	small   []digest.Digest // small files
	big     digest.Digest   // a 3 MiB file
	content map[digest.Digest][]byte
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	f := &fixture{dir: t.TempDir(), content: map[digest.Digest][]byte{}}
	r := rand.New(rand.NewPCG(1, 2))
	write := func(rel string, n int) digest.Digest {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(r.Uint32())
		}
		p := filepath.Join(f.dir, rel)
		os.MkdirAll(filepath.Dir(p), 0o755)
		os.WriteFile(p, b, 0o644)
		old := time.Now().Add(-time.Hour)
		os.Chtimes(p, old, old)
		h := digest.Of(b)
		f.content[h] = b
		return h
	}
	for i := range 20 {
		f.small = append(f.small, write(fmt.Sprintf("s/%02d", i), 500+i*100))
	}
	f.big = write("big.bin", 3<<20)
	index := snapshot.NewObjectIndex()
	opts := snapshot.DefaultOptions()
	opts.OnFile = index.Add
	s, err := snapshot.New(f.dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	res, err := s.Snapshot(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	f.objects, err = snapshot.NewObjects(res.ReadRoot, index)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.objects.Close() })
	return f
}

// newServer makes a server; without a token in opts it serves without
// authentication, as tests of other things than authentication want.
func newServer(t *testing.T, opts peer.ServerOptions, providers ...peer.Provider) *peer.Server {
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

func serve(t *testing.T, opts peer.ServerOptions, providers ...peer.Provider) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(newServer(t, opts, providers...).Handler())
	t.Cleanup(srv.Close)
	return srv
}

func client(t *testing.T, url, token string) *peer.Client {
	t.Helper()
	c, err := peer.NewClient(url, peer.ClientOptions{Token: token, IdleTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func readAll(rc io.ReadCloser, err error) ([]byte, error) {
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	return io.ReadAll(rc)
}

func TestProtocol(t *testing.T) {
	f := newFixture(t)
	srv := serve(t, peer.ServerOptions{Node: "n1"}, f.objects)
	c := client(t, srv.URL, "")
	ctx := context.Background()

	h, err := c.Health(ctx)
	if err != nil || h.Status != "ok" || h.Node != "n1" || h.Objects != 21 {
		t.Fatalf("health %+v, %v", h, err)
	}
	unknown := digest.Of([]byte("nobody has this"))
	missing, err := c.Missing(ctx, append([]digest.Digest{unknown}, f.small...))
	if err != nil || len(missing) != 1 || missing[0] != unknown {
		t.Fatalf("missing = %v, %v", missing, err)
	}
	got, err := readAll(c.Get(ctx, f.big))
	if err != nil || !bytes.Equal(got, f.content[f.big]) {
		t.Fatalf("get big: %d bytes, %v", len(got), err)
	}
	got, err = readAll(c.GetRange(ctx, f.big, 1<<20, 1000))
	if err != nil || !bytes.Equal(got, f.content[f.big][1<<20:1<<20+1000]) {
		t.Fatalf("ranged get: %d bytes, %v", len(got), err)
	}
	if _, err := c.Get(ctx, unknown); !errors.Is(err, hashstore.ErrNotFound) {
		t.Fatalf("get of an unknown hash: %v", err)
	}
	seen := map[digest.Digest]bool{}
	err = c.GetMany(ctx, append([]digest.Digest{unknown}, f.small...), func(h digest.Digest, r io.Reader, err error) error {
		seen[h] = true
		if h == unknown {
			if !errors.Is(err, hashstore.ErrNotFound) {
				t.Errorf("unknown in a batch: %v", err)
			}
			return nil
		}
		data, rerr := io.ReadAll(r)
		if err != nil || rerr != nil || !bytes.Equal(data, f.content[h]) {
			t.Errorf("batch object %s: %v %v", h, err, rerr)
		}
		return nil
	})
	if err != nil || len(seen) != 21 {
		t.Fatalf("GetMany: %v, %d objects", err, len(seen))
	}
}

func TestNothingButObjectsIsServed(t *testing.T) {
	f := newFixture(t)
	srv := serve(t, peer.ServerOptions{}, f.objects)
	for _, path := range []string{
		"/", "/v1", "/v1/objects/", "/v1/objects/../../etc/passwd", "/v1/objects/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
		"/etc/passwd", "/v1/objects/" + strings.Repeat("g", 64), "/v1/objects/" + strings.ToUpper(f.big.String()),
		"/v1/objects/" + f.big.String() + "/x", "/big.bin", "/s/01", "/v1/list", "/debug/pprof/",
	} {
		resp, err := http.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusNotFound || len(body) > 32 {
			t.Errorf("GET %s: %d %q, want a bare 404", path, resp.StatusCode, body)
		}
	}
	resp, err := http.Post(srv.URL+"/v1/objects/"+f.big.String(), "application/json", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("POST to an object: %d", resp.StatusCode)
	}
	resp, _ = http.Post(srv.URL+"/v1/has", "application/json", strings.NewReader(`{"hexdigests":["../etc/passwd"]}`))
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest {
		t.Errorf("has with a path: %d", resp.StatusCode)
	}
}

func TestTokenRequired(t *testing.T) {
	f := newFixture(t)
	srv := serve(t, peer.ServerOptions{Token: "s3cret-token"}, f.objects)
	ctx := context.Background()
	for _, token := range []string{"", "guessed-xyzzy"} {
		_, err := client(t, srv.URL, token).Health(ctx)
		var perm *hashstore.PermanentError
		if err == nil || !errors.As(err, &perm) || !strings.Contains(err.Error(), "token") {
			t.Fatalf("token %q: %v", token, err)
		}
		if strings.Contains(err.Error(), "s3cret-token") || strings.Contains(err.Error(), "xyzzy") {
			t.Fatalf("a token appears in the error: %v", err)
		}
		if _, err := client(t, srv.URL, token).Get(ctx, f.big); err == nil {
			t.Fatalf("token %q: object served", token)
		}
	}
	got, err := readAll(client(t, srv.URL, "s3cret-token").Get(ctx, f.big))
	if err != nil || !bytes.Equal(got, f.content[f.big]) {
		t.Fatalf("with the token: %v", err)
	}
}

func TestChangedFilesAreNotServedWrong(t *testing.T) {
	f := newFixture(t)
	srv := serve(t, peer.ServerOptions{}, f.objects)
	c := client(t, srv.URL, "")
	ctx := context.Background()
	// Rewritten with the same size and mtime: only the bytes tell.
	p := filepath.Join(f.dir, "big.bin")
	fi, _ := os.Stat(p)
	data := bytes.Clone(f.content[f.big])
	data[len(data)-1] ^= 1
	os.WriteFile(p, data, 0o644)
	os.Chtimes(p, fi.ModTime(), fi.ModTime())
	got, err := readAll(c.Get(ctx, f.big))
	if err == nil {
		t.Fatalf("a changed file was served as %s (%d bytes)", f.big, len(got))
	}
	small := filepath.Join(f.dir, "s/03")
	fi, _ = os.Stat(small)
	sd := bytes.Clone(f.content[f.small[3]])
	sd[0] ^= 1
	os.WriteFile(small, sd, 0o644)
	os.Chtimes(small, fi.ModTime(), fi.ModTime())
	c.GetMany(ctx, []digest.Digest{f.small[3], f.small[4]}, func(h digest.Digest, r io.Reader, err error) error {
		switch h {
		case f.small[3]:
			if err == nil {
				t.Error("a changed small file was served")
			}
		case f.small[4]:
			if b, rerr := io.ReadAll(r); err != nil || rerr != nil || !bytes.Equal(b, f.content[h]) {
				t.Errorf("an unchanged file next to it: %v %v", err, rerr)
			}
		}
		return nil
	})
	// A different size or mtime: not available at all.
	os.WriteFile(small, []byte("short"), 0o644)
	if _, err := c.Get(ctx, f.small[3]); !errors.Is(err, hashstore.ErrNotFound) {
		t.Fatalf("a file of another size: %v", err)
	}
}

func TestWrongBytesAreRejected(t *testing.T) {
	f := newFixture(t)
	srv := httptest.NewServer(peertest.Lying(newServer(t, peer.ServerOptions{NoAuth: true}, f.objects).Handler()))
	t.Cleanup(srv.Close)
	c := client(t, srv.URL, "")
	ctx := context.Background()
	if _, err := readAll(c.Get(ctx, f.big)); !errors.Is(err, hashstore.ErrCorrupt) {
		t.Fatalf("corrupt object: %v, want ErrCorrupt", err)
	}
	bad := 0
	c.GetMany(ctx, f.small, func(h digest.Digest, r io.Reader, err error) error {
		if err == nil {
			_, err = io.ReadAll(r)
		}
		if errors.Is(err, hashstore.ErrCorrupt) {
			bad++
		}
		return nil
	})
	if bad != len(f.small) {
		t.Fatalf("%d of %d corrupt batch objects detected", bad, len(f.small))
	}
}

func TestStoreProvider(t *testing.T) {
	ctx := context.Background()
	store, _ := hashstore.Init(ctx, hashstore.NewMemory(), storetest.Options(hashstore.Options{}))
	content := bytes.Repeat([]byte("from the repository "), 5000)
	h := digest.Of(content)
	store.Put(ctx, h, bytes.NewReader(content), int64(len(content)))
	srv := serve(t, peer.ServerOptions{}, peer.StoreProvider{Store: store})
	c := client(t, srv.URL, "")
	if missing, err := c.Missing(ctx, []digest.Digest{h}); err != nil || len(missing) != 0 {
		t.Fatalf("missing %v, %v", missing, err)
	}
	got, err := readAll(c.Get(ctx, h))
	if err != nil || !bytes.Equal(got, content) {
		t.Fatalf("get from the repository: %v", err)
	}
}

func FuzzDecodeFrames(f *testing.F) {
	want := []digest.Digest{digest.Of([]byte("a")), digest.Of([]byte("bb"))}
	var good bytes.Buffer
	good.WriteString("DBP1")
	for i, h := range want {
		good.Write(h[:])
		if i == 0 {
			good.Write([]byte{0, 0, 0, 0, 0, 0, 0, 0, 1})
			good.WriteString("a")
		} else {
			good.WriteByte(1)
		}
	}
	f.Add(good.Bytes())
	f.Add([]byte("DBP1"))
	f.Add([]byte("HTTP/1.1 200 OK"))
	f.Fuzz(func(t *testing.T, data []byte) {
		peer.DecodeFrames(bufio.NewReader(bytes.NewReader(data)), want, func(h digest.Digest, r io.Reader, err error) error {
			if err != nil {
				return nil
			}
			got, rerr := io.ReadAll(r)
			if rerr == nil && digest.Of(got) != h {
				t.Fatalf("accepted %d bytes as %s", len(got), h)
			}
			return nil
		})
	})
}

// cutAfter passes a response through until n body bytes, then breaks the
// connection, like a reset in the middle of a transfer.
type cutAfter struct {
	http.ResponseWriter
	n int
}

func (c *cutAfter) Write(p []byte) (int, error) {
	if len(p) > c.n {
		c.ResponseWriter.Write(p[:c.n])
		c.ResponseWriter.(http.Flusher).Flush()
		panic(http.ErrAbortHandler)
	}
	c.n -= len(p)
	return c.ResponseWriter.Write(p)
}

func (c *cutAfter) Flush() { c.ResponseWriter.(http.Flusher).Flush() }

func TestBrokenTransferResumesWithRange(t *testing.T) {
	f := newFixture(t)
	h := newServer(t, peer.ServerOptions{}, f.objects).Handler()
	var ranges []string
	cuts := 0
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !strings.HasPrefix(r.URL.Path, "/v1/objects/") {
			h.ServeHTTP(w, r)
			return
		}
		ranges = append(ranges, r.Header.Get("Range"))
		if cuts < 2 { // 700 kB into each of the first two responses
			cuts++
			w = &cutAfter{ResponseWriter: w, n: 700_000}
		}
		h.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	got, err := readAll(client(t, srv.URL, "").Get(context.Background(), f.big))
	if err != nil || !bytes.Equal(got, f.content[f.big]) {
		t.Fatalf("get through two resets: %d bytes, %v", len(got), err)
	}
	want := []string{"", "bytes=700000-", "bytes=1400000-"}
	if fmt.Sprint(ranges) != fmt.Sprint(want) {
		t.Fatalf("requests asked for ranges %q, want %q", ranges, want)
	}

	// A third reset is one too many: the error reaches the reader, and
	// nothing unverified is handed out as the object.
	cuts, ranges = -1, nil
	_, err = readAll(client(t, srv.URL, "").Get(context.Background(), f.big))
	if err == nil || len(ranges) != 3 {
		t.Fatalf("get through three resets: %v after %d requests", err, len(ranges))
	}
}

// TestStoreProviderSeesLaterBackups: a server keeps its repository open;
// objects another process packs into it later are served once asked for
// (the pack index is read again on a miss).
func TestStoreProviderSeesLaterBackups(t *testing.T) {
	ctx := context.Background()
	backend := hashstore.NewMemory()
	served, _ := hashstore.Init(ctx, backend, storetest.Options(hashstore.Options{}))
	srv := serve(t, peer.ServerOptions{}, peer.StoreProvider{Store: served, ReloadAfter: time.Nanosecond})
	c := client(t, srv.URL, "")
	content := bytes.Repeat([]byte("packed later by a backup "), 40)
	h := digest.Of(content)
	if missing, err := c.Missing(ctx, []digest.Digest{h}); err != nil || len(missing) != 1 {
		t.Fatalf("before the backup: missing %v, %v", missing, err)
	}
	writer, _ := hashstore.Open(ctx, backend, storetest.Options(hashstore.Options{}))
	err := writer.WithPacker(ctx, 0, func(ctx context.Context, pk *hashstore.Packer) error {
		_, err := pk.Add(ctx, h, content)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if missing, err := c.Missing(ctx, []digest.Digest{h}); err != nil || len(missing) != 0 {
		t.Fatalf("after the backup: missing %v, %v", missing, err)
	}
	got, err := readAll(c.Get(ctx, h))
	if err != nil || !bytes.Equal(got, content) {
		t.Fatalf("get of an object packed after the server started: %v", err)
	}
}
