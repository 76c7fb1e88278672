package s3store

import (
	"context"
	"net"
	"sync"
)

// connections remembers the connections a Backend's client dialed, so
// Close can end them: the SDK clones the transport it is given, which
// leaves no handle on its idle connections, and a program that opens
// many repositories in turn (or a test) would otherwise keep every one.
type connections struct {
	mu   sync.Mutex
	live map[*trackedConn]struct{}
}

func (c *connections) wrap(dial func(ctx context.Context, network, addr string) (net.Conn, error)) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		conn, err := dial(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		t := &trackedConn{Conn: conn, owner: c}
		c.mu.Lock()
		if c.live == nil {
			c.live = map[*trackedConn]struct{}{}
		}
		c.live[t] = struct{}{}
		c.mu.Unlock()
		return t, nil
	}
}

// closeAll closes every connection still open.
func (c *connections) closeAll() {
	c.mu.Lock()
	live := c.live
	c.live = nil
	c.mu.Unlock()
	for t := range live {
		t.Conn.Close()
	}
}

type trackedConn struct {
	net.Conn
	owner *connections
	once  sync.Once
}

func (t *trackedConn) Close() error {
	t.once.Do(func() {
		t.owner.mu.Lock()
		delete(t.owner.live, t)
		t.owner.mu.Unlock()
	})
	return t.Conn.Close()
}
