package hashstore

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"
)

// Memory is a Backend in memory, for tests and for library users who want
// a throw-away repository.
type Memory struct {
	mu      sync.RWMutex
	objects map[string]memoryObject
}

type memoryObject struct {
	data    []byte
	modTime time.Time
}

var _ Backend = (*Memory)(nil)

// NewMemory returns an empty in-memory Backend.
func NewMemory() *Memory { return &Memory{objects: make(map[string]memoryObject)} }

// String names the backend for messages.
func (m *Memory) String() string { return "mem://" }

// Put implements Backend.
func (m *Memory) Put(ctx context.Context, key string, r io.Reader, size int64) error {
	return m.put(ctx, key, r, size, false)
}

// PutIfAbsent implements Creator.
func (m *Memory) PutIfAbsent(ctx context.Context, key string, r io.Reader, size int64) error {
	return m.put(ctx, key, r, size, true)
}

func (m *Memory) put(ctx context.Context, key string, r io.Reader, size int64, exclusive bool) error {
	if err := ValidateKey(key); err != nil {
		return err
	}
	data, err := io.ReadAll(contextReader{ctx, r})
	if err != nil {
		return fmt.Errorf("put %s: %w", key, err)
	}
	if size >= 0 && int64(len(data)) != size {
		return fmt.Errorf("put %s: got %d bytes, expected %d", key, len(data), size)
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, taken := m.objects[key]; exclusive && taken {
		return fmt.Errorf("put %s: %w", key, ErrExists)
	}
	m.objects[key] = memoryObject{data: data, modTime: time.Now()}
	return nil
}

func (m *Memory) lookup(ctx context.Context, key string) (memoryObject, error) {
	if err := ctx.Err(); err != nil {
		return memoryObject{}, err
	}
	if err := ValidateKey(key); err != nil {
		return memoryObject{}, err
	}
	m.mu.RLock()
	o, ok := m.objects[key]
	m.mu.RUnlock()
	if !ok {
		return memoryObject{}, notFound(key)
	}
	return o, nil
}

// Get implements Backend.
func (m *Memory) Get(ctx context.Context, key string) (io.ReadCloser, error) {
	return m.GetRange(ctx, key, 0, -1)
}

// GetRange implements Backend.
func (m *Memory) GetRange(ctx context.Context, key string, offset, length int64) (io.ReadCloser, error) {
	o, err := m.lookup(ctx, key)
	if err != nil {
		return nil, err
	}
	size := int64(len(o.data))
	if offset < 0 || offset > size {
		return nil, fmt.Errorf("get %s: offset %d outside size %d: %w", key, offset, size, ErrInvalidRange)
	}
	end := size
	if length >= 0 && offset+length < size {
		end = offset + length
	}
	return io.NopCloser(bytes.NewReader(o.data[offset:end])), nil
}

// Stat implements Backend.
func (m *Memory) Stat(ctx context.Context, key string) (Info, error) {
	o, err := m.lookup(ctx, key)
	if err != nil {
		return Info{}, err
	}
	return Info{Key: key, Size: int64(len(o.data)), ModTime: o.modTime}, nil
}

// List implements Backend. It lists a copy taken at the start, so fn may
// call other methods of m.
func (m *Memory) List(ctx context.Context, prefix string, fn func(Info) error) error {
	m.mu.RLock()
	var infos []Info
	for k, o := range m.objects {
		if strings.HasPrefix(k, prefix) {
			infos = append(infos, Info{Key: k, Size: int64(len(o.data)), ModTime: o.modTime})
		}
	}
	m.mu.RUnlock()
	for _, info := range infos {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := fn(info); err != nil {
			return err
		}
	}
	return nil
}

// Delete implements Backend.
func (m *Memory) Delete(ctx context.Context, key string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := ValidateKey(key); err != nil {
		return err
	}
	m.mu.Lock()
	delete(m.objects, key)
	m.mu.Unlock()
	return nil
}
