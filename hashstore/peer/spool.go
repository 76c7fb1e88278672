package peer

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"sync"

	"github.com/deltabackup/deltabackup/snapshot/digest"
)

// A server never sends a byte it has not verified to be part of the
// object asked for: a file of a live directory can change, or be
// swapped, between the check and the send, so checking while sending
// (and cutting the connection on a mismatch) would already have sent
// the wrong bytes. Small objects are read into memory and verified;
// larger ones are copied into a spool file, verified on the way, and
// served from there. Verified spool files are kept (up to a byte budget)
// so that the ranged requests of a resuming client, and other clients,
// do not read and hash the object again from its start.

// memoryObjectMax is the largest object served from memory.
const memoryObjectMax = MaxBatchObject

// verified is an object whose bytes are known to be right: in memory, or
// in a spool file.
type verified struct {
	size int64
	data []byte
	file *spoolFile
}

// reader returns length bytes from offset.
func (v *verified) reader(offset, length int64) io.Reader {
	if v.file == nil {
		return bytes.NewReader(v.data[offset : offset+length])
	}
	return io.NewSectionReader(v.file.f, offset, length)
}

// spoolFile is a verified copy of one object on disk, shared by the
// requests that use it.
type spoolFile struct {
	f    *os.File
	size int64
	refs int
	// ready is closed when the copy is complete; err then says whether
	// it verified.
	ready chan struct{}
	err   error
	last  uint64 // when it was last used, for eviction
}

// spool holds the verified copies.
type spool struct {
	dir    string
	budget int64

	mu    sync.Mutex
	files map[digest.Digest]*spoolFile
	bytes int64
	clock uint64
}

func newSpool(dir string, budget int64) *spool {
	if dir == "" {
		dir = os.TempDir()
	}
	return &spool{dir: dir, budget: budget, files: map[digest.Digest]*spoolFile{}}
}

// peek returns a complete verified copy of id if there is one.
func (sp *spool) peek(id digest.Digest) (*spoolFile, func()) {
	sp.mu.Lock()
	defer sp.mu.Unlock()
	sf := sp.files[id]
	if sf == nil {
		return nil, nil
	}
	select {
	case <-sf.ready:
	default:
		return nil, nil
	}
	if sf.err != nil {
		return nil, nil
	}
	sf.refs++
	sp.clock++
	sf.last = sp.clock
	return sf, func() { sp.release(id, sf) }
}

// get returns a verified copy of id, copying it from open when
// there is none yet; release gives it back.
func (sp *spool) get(ctx context.Context, id digest.Digest, open func() (io.ReadCloser, int64, error)) (*spoolFile, func(), error) {
	sp.mu.Lock()
	sf := sp.files[id]
	if sf != nil {
		sf.refs++
		sp.clock++
		sf.last = sp.clock
		sp.mu.Unlock()
		select {
		case <-sf.ready:
		case <-ctx.Done():
			sp.release(id, sf)
			return nil, nil, ctx.Err()
		}
		if sf.err != nil {
			sp.release(id, sf)
			return nil, nil, sf.err
		}
		return sf, func() { sp.release(id, sf) }, nil
	}
	sf = &spoolFile{refs: 1, ready: make(chan struct{})}
	sp.clock++
	sf.last = sp.clock
	sp.files[id] = sf
	sp.mu.Unlock()

	sf.err = sp.fill(sf, open)
	close(sf.ready)
	if sf.err != nil {
		sp.mu.Lock()
		delete(sp.files, id)
		sp.mu.Unlock()
		sp.release(id, sf)
		return nil, nil, sf.err
	}
	sp.mu.Lock()
	sp.bytes += sf.size
	sp.evict()
	sp.mu.Unlock()
	return sf, func() { sp.release(id, sf) }, nil
}

// fill copies the object into a new unnamed spool file. The provider's
// reader fails rather than ends when the bytes are not the object's, so a
// copy that completes is verified.
func (sp *spool) fill(sf *spoolFile, open func() (io.ReadCloser, int64, error)) error {
	rc, size, err := open()
	if err != nil {
		return err
	}
	defer rc.Close()
	f, err := os.CreateTemp(sp.dir, ".deltabackup-serve-*")
	if err != nil {
		return fmt.Errorf("spool: %w", err)
	}
	os.Remove(f.Name()) // unnamed: gone with the last descriptor
	n, err := io.Copy(f, io.LimitReader(rc, size+1))
	if err == nil && n != size {
		err = fmt.Errorf("%d bytes read, %d expected", n, size)
	}
	if err != nil {
		f.Close()
		return err
	}
	sf.f, sf.size = f, size
	return nil
}

// release drops a reference; an evicted copy is closed with its last one.
func (sp *spool) release(id digest.Digest, sf *spoolFile) {
	sp.mu.Lock()
	defer sp.mu.Unlock()
	sf.refs--
	if sf.refs == 0 && sp.files[id] != sf && sf.f != nil {
		sf.f.Close()
	}
	sp.evict()
}

// evict drops the least recently used unreferenced copies while over
// budget. Called with mu held.
func (sp *spool) evict() {
	for sp.bytes > sp.budget {
		var victim digest.Digest
		var oldest *spoolFile
		for h, sf := range sp.files {
			if sf.refs == 0 && sf.f != nil && (oldest == nil || sf.last < oldest.last) {
				victim, oldest = h, sf
			}
		}
		if oldest == nil {
			return // everything is in use
		}
		delete(sp.files, victim)
		sp.bytes -= oldest.size
		oldest.f.Close()
	}
}

// close closes every copy.
func (sp *spool) close() {
	sp.mu.Lock()
	defer sp.mu.Unlock()
	for h, sf := range sp.files {
		if sf.f != nil && sf.refs == 0 {
			sf.f.Close()
		}
		delete(sp.files, h)
	}
	sp.bytes = 0
}
