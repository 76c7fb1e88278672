package peer_test

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/deltabackup/deltabackup/snapshot/digest"

	"github.com/deltabackup/deltabackup/hashstore"
	"github.com/deltabackup/deltabackup/hashstore/faultstore"
	"github.com/deltabackup/deltabackup/hashstore/peer"
	"github.com/deltabackup/deltabackup/hashstore/storetest"
)

func get(t *testing.T, url, rng string) (int, []byte) {
	t.Helper()
	req, _ := http.NewRequest("GET", url, nil)
	if rng != "" {
		req.Header.Set("Range", rng)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, nil // a cut connection: nothing usable was sent
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, body
}

// TestNoUnverifiedByteIsServed is the audit's H1: after the snapshot, a
// served file is replaced by other bytes of the same size and mtime, or
// its directory is swapped for a link to a directory outside the source.
// No request, whole or ranged, may get a byte of the other content.
func TestNoUnverifiedByteIsServed(t *testing.T) {
	for _, how := range []string{"rewritten in place", "directory swapped for a link"} {
		t.Run(how, func(t *testing.T) {
			f := newFixture(t)
			srv := serve(t, peer.ServerOptions{}, f.objects)
			secret := bytes.Repeat([]byte("root:TOPSECRET;"), len(f.content[f.big])/15+1)[:len(f.content[f.big])]
			smallSecret := bytes.Repeat([]byte("S"), len(f.content[f.small[3]]))
			outside := t.TempDir()
			switch how {
			case "rewritten in place":
				for rel, data := range map[string][]byte{"big.bin": secret, "s/03": smallSecret} {
					p := filepath.Join(f.dir, rel)
					fi, _ := os.Stat(p)
					os.WriteFile(p, data, 0o644)
					os.Chtimes(p, fi.ModTime(), fi.ModTime()) // size and mtime as in the snapshot
				}
			default:
				fi, _ := os.Stat(filepath.Join(f.dir, "s/03"))
				os.WriteFile(filepath.Join(outside, "03"), smallSecret, 0o600)
				os.Chtimes(filepath.Join(outside, "03"), fi.ModTime(), fi.ModTime()) // touch -r: size and mtime match
				os.Rename(filepath.Join(f.dir, "s"), filepath.Join(f.dir, "s.old"))
				os.Symlink(outside, filepath.Join(f.dir, "s"))
			}
			for _, c := range []struct {
				hexdigest digest.Digest
				rng       string
			}{{f.big, ""}, {f.big, "bytes=0-1000"}, {f.big, "bytes=100-"}, {f.small[3], ""}, {f.small[3], "bytes=0-10"}} {
				if how != "rewritten in place" && c.hexdigest == f.big {
					continue
				}
				code, body := get(t, srv.URL+"/v1/objects/"+c.hexdigest.String(), c.rng)
				if bytes.Contains(body, []byte("TOPSECRET")) || bytes.Contains(body, []byte("SSSSS")) {
					t.Errorf("GET %s %s: %d with %d bytes of the other content", c.hexdigest.Short(), c.rng, code, len(body))
				}
				if code == http.StatusOK || code == http.StatusPartialContent {
					t.Errorf("GET %s %s: %d for content that is no longer there", c.hexdigest.Short(), c.rng, code)
				}
			}
		})
	}
}

// TestRangesAreParsedStrictlyAndServedFromAVerifiedCopy is the audit's
// L1: an end past any object is clamped (not overflowed), signs are not
// numbers, and ranges of a large object come from one verified copy.
func TestRangesAreParsedStrictlyAndServedFromAVerifiedCopy(t *testing.T) {
	f := newFixture(t)
	srv := serve(t, peer.ServerOptions{}, f.objects)
	want := f.content[f.big]
	code, body := get(t, srv.URL+"/v1/objects/"+f.big.String(), "bytes=0-9223372036854775807")
	if code != http.StatusPartialContent || !bytes.Equal(body, want) {
		t.Fatalf("range to the largest int64: %d, %d bytes", code, len(body))
	}
	for _, rng := range []string{"bytes=+5-", "bytes=-+5", "bytes=5-+9", "bytes= 5-9", "bytes=0x10-"} {
		if code, _ := get(t, srv.URL+"/v1/objects/"+f.big.String(), rng); code != http.StatusRequestedRangeNotSatisfiable {
			t.Errorf("Range %q: %d, want 416", rng, code)
		}
	}
	// The file changes after its verified copy was made: ranges keep
	// coming from the copy, which holds the content asked for.
	os.WriteFile(filepath.Join(f.dir, "big.bin"), bytes.Repeat([]byte{'x'}, len(want)), 0o644)
	for i := range 16 {
		off := int64(i) * int64(len(want)) / 16
		code, body := get(t, srv.URL+"/v1/objects/"+f.big.String(), fmt.Sprintf("bytes=%d-%d", off, off))
		if code != http.StatusPartialContent || len(body) != 1 || body[0] != want[off] {
			t.Fatalf("one byte at %d: %d %v", off, code, body)
		}
	}
}

// TestEveryRequestNeedsTheToken is the audit's M4 and M5: without a token
// a server is refused (or must say NoAuth); every path answers 401 without
// the token, closes the connection after refusing, and a client that keeps
// failing is cut off with 429.
func TestEveryRequestNeedsTheToken(t *testing.T) {
	f := newFixture(t)
	if _, err := peer.NewServer(peer.ServerOptions{}, f.objects); !errors.Is(err, peer.ErrNoToken) {
		t.Fatalf("a server without a token or NoAuth: %v", err)
	}
	srv := serve(t, peer.ServerOptions{Token: "t0ken"}, f.objects)
	for _, p := range []string{"/v1/health", "/v1/objects/" + f.big.String()} {
		if code, _ := get(t, srv.URL+p, ""); code != http.StatusUnauthorized {
			t.Errorf("GET %s without the token: %d", p, code)
		}
	}
	resp, err := http.Post(srv.URL+"/v1/has", "application/json", strings.NewReader(`{"hexdigests":["`+f.big.String()+`"]}`))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized || bytes.Contains(body, []byte(f.big.String())) {
		t.Fatalf("/v1/has without the token: %d %s", resp.StatusCode, body)
	}
	// The connection of a refused request is closed by the server.
	conn, err := net.Dial("tcp", strings.TrimPrefix(srv.URL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n")
	br := bufio.NewReader(conn)
	r, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, r.Body)
	r.Body.Close()
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := br.ReadByte(); !errors.Is(err, io.EOF) {
		t.Fatalf("the connection stayed open after a 401: %v", err)
	}
	// Guessing the token: after a few failures, 429 at once.
	codes := map[int]int{}
	for range 30 {
		req, _ := http.NewRequest("GET", srv.URL+"/v1/health", nil)
		req.Header.Set("Authorization", "Bearer guess")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		codes[resp.StatusCode]++
	}
	if codes[http.StatusTooManyRequests] < 15 {
		t.Fatalf("30 wrong tokens in a row: %v", codes)
	}
}

// TestHasIsRateLimitedPerClient: a client asking about more hexdigests
// than the burst at once is refused.
func TestHasIsRateLimitedPerClient(t *testing.T) {
	f := newFixture(t)
	srv := serve(t, peer.ServerOptions{HasBurst: 10, HasRate: 10}, f.objects)
	hs := make([]string, 11)
	for i := range hs {
		hs[i] = fmt.Sprintf(`"%064x"`, i+1)
	}
	resp, err := http.Post(srv.URL+"/v1/has", "application/json", strings.NewReader(`{"hexdigests":[`+strings.Join(hs, ",")+`]}`))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusTooManyRequests {
		t.Fatalf("11 hexdigests at a burst of 10: %d", resp.StatusCode)
	}
}

// TestConnectionsAreLimited is the audit's M5: connections past the limit
// per client address are closed at once; the others are served.
func TestConnectionsAreLimited(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	limited := peer.LimitListener(ln, 100, 4)
	f := newFixture(t)
	hs := &http.Server{Handler: newServer(t, peer.ServerOptions{}, f.objects).Handler()}
	go hs.Serve(limited)
	defer hs.Close()
	var held []net.Conn
	for range 4 {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, c)
	}
	time.Sleep(100 * time.Millisecond) // accepted
	extra, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	extra.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := extra.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("a fifth connection from one address was kept open: %v", err)
	}
	extra.Close()
	for _, c := range held {
		c.Close()
	}
	time.Sleep(100 * time.Millisecond)
	resp, err := http.Get("http://" + ln.Addr().String() + "/v1/health")
	if err != nil {
		t.Fatalf("after the held connections closed: %v", err)
	}
	resp.Body.Close()
}

// TestClientRefusesRedirects is the audit's L8: a peer answering with a
// redirect must not get the token sent elsewhere.
func TestClientRefusesRedirects(t *testing.T) {
	got := make(chan string, 4)
	other := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got <- r.Header.Get("Authorization")
	}))
	defer other.Close()
	evil := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, other.URL+r.URL.Path, http.StatusTemporaryRedirect)
	}))
	defer evil.Close()
	c := client(t, evil.URL, "secret-peer-token")
	if _, err := c.Health(context.Background()); err == nil {
		t.Fatal("a redirect was followed")
	}
	select {
	case auth := <-got:
		t.Fatalf("the token went to the redirect's target: %q", auth)
	default:
	}
}

// TestHealthNamesNoPaths is the audit's L7: token holders learn the
// node's name and object count, not local paths.
func TestHealthNamesNoPaths(t *testing.T) {
	f := newFixture(t)
	srv := serve(t, peer.ServerOptions{Node: "db-1"}, f.objects)
	_, body := get(t, srv.URL+"/v1/health", "")
	if bytes.Contains(body, []byte(f.dir)) || !bytes.Contains(body, []byte("db-1")) {
		t.Fatalf("health: %s", body)
	}
}

// TestHasDoesNotListTheRepositoryPerRequest is the audit's L2: unknown
// hexdigests asked of a repository peer made it list every loose object
// per request (on S3, one request per 1,000 objects, for every call any
// token holder makes).
func TestHasDoesNotListTheRepositoryPerRequest(t *testing.T) {
	ctx := context.Background()
	faulty := faultstore.New(hashstore.NewMemory())
	store, err := hashstore.Init(ctx, faulty, storetest.Options(hashstore.Options{}))
	if err != nil {
		t.Fatal(err)
	}
	for i := range 1500 {
		data := []byte(fmt.Sprintf("object %d", i))
		if _, err := store.PutBytes(ctx, digest.Of(data), data); err != nil {
			t.Fatal(err)
		}
	}
	unknown := make([]digest.Digest, 5000)
	for i := range unknown {
		unknown[i] = digest.Of([]byte(fmt.Sprintf("unknown %d", i)))
	}
	p := peer.StoreProvider{Store: store}
	if _, err := p.Has(ctx, unknown); err != nil {
		t.Fatal(err)
	}
	before := faulty.Calls(faultstore.List)
	for range 3 {
		if _, err := p.Has(ctx, unknown); err != nil {
			t.Fatal(err)
		}
	}
	if n := faulty.Calls(faultstore.List) - before; n > 0 {
		t.Fatalf("three more /v1/has of unknown objects listed the repository %d times", n)
	}
}
