package storetest

import (
	"io"
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"testing"
)

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
	// cutAfter, when not negative, is how many more bytes may pass before
	// every connection is cut and new ones are refused (CutAfter).
	cutAfter atomic.Int64
	// windowLo and windowHi bound the bytes a doomed connection carries.
	windowLo, windowHi atomic.Int64
	wg                 sync.WaitGroup
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
	p.cutAfter.Store(-1)
	p.SetResetWindow(100, 100+4<<10)
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

// SetResetWindow sets how many bytes (from lo to hi) a connection chosen
// by SetResetRate carries before it is reset: by default 100 to 4,196, so
// that short requests die too.
func (p *Proxy) SetResetWindow(lo, hi int64) {
	p.windowLo.Store(lo)
	p.windowHi.Store(max(hi, lo+1))
}

// CutAfter makes the proxy act as a server that stops: once n more bytes
// have passed (in either direction, over all connections), it resets
// every connection and then every new one, until Resume.
func (p *Proxy) CutAfter(n int64) { p.cutAfter.Store(n) }

// Resume lets connections through again after CutAfter.
func (p *Proxy) Resume() { p.cutAfter.Store(-1) }

// Cut reports whether the proxy is refusing connections (CutAfter).
func (p *Proxy) Cut() bool { return p.cutAfter.Load() == 0 }

// spend takes n bytes from the budget of CutAfter and reports whether
// the proxy is cut.
func (p *Proxy) spend(n int64) bool {
	for {
		c := p.cutAfter.Load()
		switch {
		case c < 0:
			return false
		case c == 0:
			return true
		}
		left := max(c-n, 0)
		if p.cutAfter.CompareAndSwap(c, left) {
			return left == 0
		}
	}
}

// cutAll resets every live connection.
func (p *Proxy) cutAll() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for c := range p.live {
		if tc, ok := c.(*net.TCPConn); ok {
			tc.SetLinger(0)
		}
		c.Close()
	}
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
	if p.Cut() {
		if tc, ok := client.(*net.TCPConn); ok {
			tc.SetLinger(0)
		}
		client.Close()
		p.resets.Add(1)
		return
	}
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
		lo := p.windowLo.Load()
		budget.Store(lo + rand.Int64N(p.windowHi.Load()-lo))
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
				if p.spend(int64(n)) {
					p.resets.Add(1)
					p.cutAll()
					return
				}
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
