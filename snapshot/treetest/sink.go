package treetest

import (
	"context"
	"errors"
	"io"
	"sync"

	"github.com/deltabackup/deltabackup/snapshot"
	"github.com/deltabackup/deltabackup/snapshot/digest"
)

// MemSink is a snapshot.Sink and snapshot.TreeReader in memory: it keeps
// every content and tree, checking each against its id.
type MemSink struct {
	mu      sync.Mutex
	Objects map[digest.Digest][]byte
	Trees   map[digest.Digest][]byte
	// Contents counts StoreContent calls; TreesStored the trees stored.
	Contents    int
	TreesStored int
}

// NewMemSink returns an empty MemSink.
func NewMemSink() *MemSink {
	return &MemSink{Objects: map[digest.Digest][]byte{}, Trees: map[digest.Digest][]byte{}}
}

// StoreContent implements snapshot.Sink.
func (m *MemSink) StoreContent(ctx context.Context, c *snapshot.Content) error {
	data := c.Data
	if data == nil {
		var err error
		if data, err = io.ReadAll(c.Open()); err != nil {
			return err
		}
	} else {
		data = append([]byte{}, data...)
	}
	if digest.Of(data) != c.ID || int64(len(data)) != c.Size {
		return snapshot.ErrChangedWhileReading
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.Contents++
	m.Objects[c.ID] = data
	return nil
}

// StoreTree implements snapshot.Sink.
func (m *MemSink) StoreTree(ctx context.Context, id digest.Digest, data []byte) error {
	if digest.Of(data) != id {
		return errors.New("tree id mismatch")
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.Trees[id]; !ok {
		m.TreesStored++
		m.Trees[id] = append([]byte{}, data...)
	}
	return nil
}

// Missing implements snapshot.Sink.
func (m *MemSink) Missing(ctx context.Context, ids []digest.Digest) ([]digest.Digest, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []digest.Digest
	for _, id := range ids {
		_, obj := m.Objects[id]
		_, tree := m.Trees[id]
		if !obj && !tree {
			out = append(out, id)
		}
	}
	return out, nil
}

// ReadTree implements snapshot.TreeReader.
func (m *MemSink) ReadTree(ctx context.Context, id digest.Digest) ([]byte, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	data, ok := m.Trees[id]
	if !ok {
		return nil, errors.New("no such tree")
	}
	return data, nil
}
