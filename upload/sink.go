package upload

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"

	"github.com/deltabackup/deltabackup/hashstore"
	"github.com/deltabackup/deltabackup/snapshot"
	"github.com/deltabackup/deltabackup/snapshot/digest"
)

// storeSink is the snapshot.Sink of a backup: it stores what the
// repository lacks as the snapshot finds it. Small contents and trees go
// into the packer, larger contents are stored as objects of their own,
// re-read from the file the snapshot hashed and verified on the way.
type storeSink struct {
	store *hashstore.Store
	// packer takes small contents, trees the trees.
	packer *hashstore.Packer
	trees  *hashstore.Packer

	mu sync.Mutex
	// flights are the contents being stored, so that two files with the
	// same content are not stored twice at once.
	flights map[digest.Digest]*flight

	// Until the pack index is in memory, the contents and trees whose
	// bytes are at hand wait in early (up to maxEarlyBytes) instead of
	// every walker waiting for the index: the first of them starts
	// reading the index beside the walk (start), which then stores them,
	// and finish waits for that. (A 1%
	// incremental of 200,000 small files reaches a changed file within a
	// millisecond, so the index read used to stop the whole walk.)
	loadCtx    context.Context
	loading    bool // under mu, as the next three
	indexReady bool
	early      []earlyItem
	earlyBytes int
	earlyDone  chan struct{}
	earlyErr   error

	uploadedObjects, uploadedBytes, uploadedContentBytes atomic.Int64
	treesStored, treeBytes                               atomic.Int64
}

// earlyItem is a content or tree waiting for the index.
type earlyItem struct {
	id   digest.Digest
	data []byte
	tree bool
}

// maxEarlyBytes bounds the copies held while the index is read.
const maxEarlyBytes = 16 << 20

type flight struct {
	done chan struct{}
	err  error
}

func newSink(store *hashstore.Store, packer *hashstore.Packer) *storeSink {
	return &storeSink{store: store, packer: packer, flights: map[digest.Digest]*flight{}}
}

// start makes the sink read the pack index in a goroutine of its own
// once the first content or tree is to be stored (a backup that stores
// nothing never reads it), and then store what waited for it. ctx is
// the context of the whole snapshot; the packers must be set, and finish
// must follow.
func (s *storeSink) start(ctx context.Context) {
	s.loadCtx = ctx
	s.earlyDone = make(chan struct{})
}

// loadIndex is the goroutine start promises.
func (s *storeSink) loadIndex() {
	defer close(s.earlyDone)
	ctx := s.loadCtx
	err := s.store.LoadIndex(ctx)
	s.mu.Lock()
	s.indexReady = true
	items := s.early
	s.early = nil
	s.mu.Unlock()
	for _, it := range items {
		if err != nil {
			break
		}
		if it.tree {
			err = s.storeTree(ctx, it.id, it.data)
		} else {
			err = s.addBundled(ctx, it.id, it.data)
		}
	}
	s.earlyErr = err
}

// finish waits until what waited for the index is stored, and returns
// the error of reading the index or storing it.
func (s *storeSink) finish() error {
	s.mu.Lock()
	loading := s.loading
	s.mu.Unlock()
	if !loading {
		return nil
	}
	<-s.earlyDone
	return s.earlyErr
}

// storeEarly keeps a copy of data to store once the index is read, and
// reports whether it did (false: the index is read, or enough waits).
func (s *storeSink) storeEarly(id digest.Digest, data []byte, tree bool) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.earlyDone == nil || s.indexReady || s.earlyBytes+len(data) > maxEarlyBytes {
		return false
	}
	if !s.loading {
		s.loading = true
		go s.loadIndex()
	}
	s.early = append(s.early, earlyItem{id: id, data: bytes.Clone(data), tree: tree})
	s.earlyBytes += len(data)
	return true
}

// errSourceRead marks an error reading the source file again, as opposed
// to one of the storage.
var errSourceRead = errors.New("source file could not be read again")

type sourceReader struct{ r io.Reader }

func (r sourceReader) Read(p []byte) (int, error) {
	n, err := r.r.Read(p)
	if err != nil && err != io.EOF {
		err = fmt.Errorf("%w: %w", errSourceRead, err)
	}
	return n, err
}

var bufPool = sync.Pool{New: func() any { return new(bytes.Buffer) }}

// StoreContent implements snapshot.Sink.
func (s *storeSink) StoreContent(ctx context.Context, c *snapshot.Content) error {
	var f *flight
	for {
		s.mu.Lock()
		other := s.flights[c.ID]
		if other == nil {
			f = &flight{done: make(chan struct{})}
			s.flights[c.ID] = f
			s.mu.Unlock()
			break
		}
		s.mu.Unlock()
		select {
		case <-other.done:
		case <-ctx.Done():
			return ctx.Err()
		}
		if other.err == nil {
			return nil // the same content, stored by another file
		}
		// The other file's content could not be stored (it changed):
		// this one may still hold it.
	}
	err := s.storeContent(ctx, c)
	s.mu.Lock()
	f.err = err
	delete(s.flights, c.ID)
	s.mu.Unlock()
	close(f.done)
	return err
}

func (s *storeSink) storeContent(ctx context.Context, c *snapshot.Content) error {
	if c.Bundled && c.Data != nil {
		if s.storeEarly(c.ID, c.Data, false) {
			return nil
		}
		return s.addBundled(ctx, c.ID, c.Data)
	}
	// A bundled content lives in a pack if anywhere: the in-memory index
	// answers without a request. Others may need a lookup.
	var has bool
	var err error
	if c.Bundled {
		has, err = s.store.HasPacked(ctx, c.ID)
	} else {
		has, err = s.store.Has(ctx, c.ID)
	}
	if err != nil || has {
		return err
	}
	var put hashstore.PutResult
	switch {
	case c.Bundled:
		buf := bufPool.Get().(*bytes.Buffer)
		defer bufPool.Put(buf)
		buf.Reset()
		if _, err := buf.ReadFrom(io.LimitReader(sourceReader{c.Open()}, c.Size+1)); err != nil {
			return changed(c, err)
		}
		put, err = s.packer.Add(ctx, c.ID, buf.Bytes())
	case c.Data != nil:
		put, err = s.store.PutHashed(ctx, c.ID, c.Data) // hashed by the snapshot from these bytes
	default:
		put, err = s.store.Put(ctx, c.ID, sourceReader{c.Open()}, c.Size)
	}
	if err != nil {
		if errors.Is(err, hashstore.ErrContentMismatch) || errors.Is(err, errSourceRead) {
			return changed(c, err)
		}
		return err
	}
	s.count(put, c.Size)
	return nil
}

// addBundled stores a small content, hashed by the snapshot from these
// bytes, in a pack unless the repository holds it.
func (s *storeSink) addBundled(ctx context.Context, id digest.Digest, data []byte) error {
	has, err := s.store.HasPacked(ctx, id)
	if err != nil || has {
		return err
	}
	put, err := s.packer.AddHashed(ctx, id, data)
	if err != nil {
		return err
	}
	s.count(put, int64(len(data)))
	return nil
}

func (s *storeSink) count(put hashstore.PutResult, size int64) {
	if !put.Existed {
		s.uploadedObjects.Add(1)
		s.uploadedBytes.Add(put.StoredSize)
		s.uploadedContentBytes.Add(size)
	}
}

// changed reports a content whose file no longer held it when read
// again: the snapshot reads the file once more or leaves it out.
func changed(c *snapshot.Content, err error) error {
	return fmt.Errorf("%w: %s: %w", snapshot.ErrChangedWhileReading, c.Path, err)
}

// StoreTree implements snapshot.Sink.
func (s *storeSink) StoreTree(ctx context.Context, id digest.Digest, data []byte) error {
	if s.storeEarly(id, data, true) {
		return nil
	}
	return s.storeTree(ctx, id, data)
}

func (s *storeSink) storeTree(ctx context.Context, id digest.Digest, data []byte) error {
	has, err := s.store.HasPacked(ctx, id)
	if err != nil || has {
		return err
	}
	put, err := s.trees.AddHashed(ctx, id, data) // the snapshot hashed these bytes
	if err != nil || put.Existed {
		return err
	}
	s.treesStored.Add(1)
	s.treeBytes.Add(put.StoredSize)
	return nil
}

// Missing implements snapshot.Sink.
func (s *storeSink) Missing(ctx context.Context, ids []digest.Digest) ([]digest.Digest, error) {
	return s.store.ToStore(ctx, ids) // a copy gc doomed is stored again
}
