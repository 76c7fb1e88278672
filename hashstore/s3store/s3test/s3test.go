package s3test

import (
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/deltabackup/deltabackup/hashstore/s3store"
)

// Endpoint returns the S3 server the tests use. Outside CI, with no server
// configured, the test is skipped and says how to get one; in CI (CI set)
// a missing server fails the test: the S3 tests must never silently not
// run there.
func Endpoint(t testing.TB) string {
	t.Helper()
	endpoint := os.Getenv("DELTABACKUP_S3_ENDPOINT")
	if endpoint == "" {
		if os.Getenv("CI") != "" {
			t.Fatal("CI is set but DELTABACKUP_S3_ENDPOINT is not: .ci/run starts the S3 server these tests need")
		}
		t.Skip("no S3 server: run .ci/run, which starts one, or set DELTABACKUP_S3_ENDPOINT and AWS credentials")
	}
	return endpoint
}

var bucketSeq atomic.Int64

// NewBucket returns a bucket name no other test uses.
func NewBucket(t testing.TB) string {
	var b strings.Builder
	for _, r := range strings.ToLower(t.Name()) {
		if r >= 'a' && r <= 'z' || r >= '0' && r <= '9' {
			b.WriteRune(r)
		} else {
			b.WriteByte('-')
		}
	}
	name := strings.Trim(b.String(), "-")
	suffix := fmt.Sprintf("-%d-%d", time.Now().UnixNano()%1e9, bucketSeq.Add(1))
	if len(name)+len(suffix) > 63 {
		name = name[:63-len(suffix)]
	}
	return strings.Trim(name, "-") + suffix
}

// Config returns a configuration for a new bucket on the test server,
// created when the backend opens.
func Config(t testing.TB) s3store.Config {
	t.Helper()
	return s3store.Config{Bucket: NewBucket(t), Endpoint: Endpoint(t), CreateBucket: true, ReadTimeout: 20 * time.Second}
}

// Proxy forwards TCP connections to an upstream address and can reset a
// share of them in the middle of a request or response.
type Proxy struct {
	Addr     string
	upstream string
	ln       net.Listener
	// resetRate is the share (in millionths) of connections reset.
	resetRate atomic.Int64
	resets    atomic.Int64
	conns     atomic.Int64
	// sinceSet counts connections since the rate was last set.
	sinceSet atomic.Int64
	wg       sync.WaitGroup
	// mu guards live, the connections open in either direction, which
	// the proxy closes when the test ends rather than wait for clients
	// that keep idle connections.
	mu   sync.Mutex
	live map[net.Conn]struct{}
}

// NewProxy starts a proxy to upstream (host:port); it stops with the test.
func NewProxy(t testing.TB, upstream string) *Proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &Proxy{Addr: ln.Addr().String(), upstream: upstream, ln: ln, live: map[net.Conn]struct{}{}}
	p.wg.Add(1)
	go p.serve()
	t.Cleanup(func() {
		ln.Close()
		p.mu.Lock()
		for c := range p.live {
			c.Close()
		}
		p.live = nil
		p.mu.Unlock()
		p.wg.Wait()
	})
	return p
}

// SetResetRate makes the proxy reset a share (0..1) of new connections,
// each after a random number of bytes has passed. The choice is even, not
// random, so a test with few connections still sees resets: with 0.1,
// connections 1, 11, 21, ... are reset.
func (p *Proxy) SetResetRate(rate float64) {
	p.sinceSet.Store(0)
	p.resetRate.Store(int64(rate * 1e6))
}

// Resets is how many connections the proxy has reset.
func (p *Proxy) Resets() int64 { return p.resets.Load() }

// Connections is how many connections the proxy has accepted.
func (p *Proxy) Connections() int64 { return p.conns.Load() }

func (p *Proxy) serve() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.conns.Add(1)
		n := p.sinceSet.Add(1)
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			p.handle(c, n)
		}()
	}
}

// track records conns as live; it reports false, having closed them,
// once the proxy is stopping.
func (p *Proxy) track(conns ...net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.live == nil {
		for _, c := range conns {
			c.Close()
		}
		return false
	}
	for _, c := range conns {
		p.live[c] = struct{}{}
	}
	return true
}

func (p *Proxy) untrack(conns ...net.Conn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range conns {
		delete(p.live, c)
		c.Close()
	}
}

func (p *Proxy) handle(client net.Conn, n int64) {
	if !p.track(client) {
		return
	}
	defer p.untrack(client)
	up, err := net.Dial("tcp", p.upstream)
	if err != nil {
		return
	}
	if !p.track(up) {
		return
	}
	defer p.untrack(up)
	// A doomed connection dies after a random amount of traffic, in
	// either direction: mid-request or mid-response.
	var budget atomic.Int64
	budget.Store(-1)
	if rate := p.resetRate.Load(); rate > 0 && (n-1)%max(1, (1e6+rate/2)/rate) == 0 {
		budget.Store(100 + rand.Int64N(4<<10))
	}
	kill := func() {
		p.resets.Add(1)
		for _, c := range []net.Conn{client, up} {
			if tc, ok := c.(*net.TCPConn); ok {
				tc.SetLinger(0) // close with RST, as a dropped connection does
			}
			c.Close()
		}
	}
	var once sync.Once
	pipe := func(dst, src net.Conn) {
		buf := make([]byte, 32<<10)
		for {
			n, err := src.Read(buf)
			if n > 0 {
				if b := budget.Load(); b >= 0 {
					if budget.Add(-int64(n)) < 0 {
						once.Do(kill)
						return
					}
				}
				if _, werr := dst.Write(buf[:n]); werr != nil {
					return
				}
			}
			if err != nil {
				if err == io.EOF {
					if tc, ok := dst.(*net.TCPConn); ok {
						tc.CloseWrite()
					}
				}
				return
			}
		}
	}
	done := make(chan struct{}, 2)
	go func() { pipe(up, client); done <- struct{}{} }()
	go func() { pipe(client, up); done <- struct{}{} }()
	<-done
	<-done
}
