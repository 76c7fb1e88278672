package peer

import (
	"net"
	"sync"
)

// LimitListener wraps ln so that at most total connections are open at
// once, and at most perAddr from one client address: a connection past
// either limit is closed as soon as it is accepted, so that clients who
// open connections and hold them (before or without authenticating)
// cannot take the server's file descriptors from everyone else.
func LimitListener(ln net.Listener, total, perAddr int) net.Listener {
	return &limitListener{Listener: ln, total: total, perAddr: perAddr, byAddr: map[string]int{}}
}

type limitListener struct {
	net.Listener
	total, perAddr int

	mu     sync.Mutex
	open   int
	byAddr map[string]int
}

func (l *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		host, _, err := net.SplitHostPort(c.RemoteAddr().String())
		if err != nil {
			host = c.RemoteAddr().String()
		}
		l.mu.Lock()
		if l.open >= l.total || l.byAddr[host] >= l.perAddr {
			l.mu.Unlock()
			c.Close()
			continue
		}
		l.open++
		l.byAddr[host]++
		l.mu.Unlock()
		return &limitedConn{Conn: c, l: l, host: host}, nil
	}
}

type limitedConn struct {
	net.Conn
	l    *limitListener
	host string
	once sync.Once
}

func (c *limitedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() {
		c.l.mu.Lock()
		c.l.open--
		if c.l.byAddr[c.host]--; c.l.byAddr[c.host] <= 0 {
			delete(c.l.byAddr, c.host)
		}
		c.l.mu.Unlock()
	})
	return err
}
