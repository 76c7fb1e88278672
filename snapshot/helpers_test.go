package snapshot

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/deltabackup/deltabackup/snapshot/digest"
)

// memSink stores contents and trees in memory, checking every id.
type memSink struct {
	mu       sync.Mutex
	objects  map[digest.Digest][]byte
	trees    map[digest.Digest][]byte
	contents int // StoreContent calls
	stored   int // trees stored
}

func newMemSink() *memSink {
	return &memSink{objects: map[digest.Digest][]byte{}, trees: map[digest.Digest][]byte{}}
}

func (m *memSink) StoreContent(ctx context.Context, c *Content) error {
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
		return ErrChangedWhileReading
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.contents++
	m.objects[c.ID] = data
	return nil
}

func (m *memSink) StoreTree(ctx context.Context, id digest.Digest, data []byte) error {
	if digest.Of(data) != id {
		return errors.New("tree id mismatch")
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.trees[id]; !ok {
		m.stored++
		m.trees[id] = append([]byte{}, data...)
	}
	return nil
}

func (m *memSink) Missing(ctx context.Context, ids []digest.Digest) ([]digest.Digest, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []digest.Digest
	for _, id := range ids {
		_, obj := m.objects[id]
		_, tree := m.trees[id]
		if !obj && !tree {
			out = append(out, id)
		}
	}
	return out, nil
}

func (m *memSink) ReadTree(ctx context.Context, id digest.Digest) ([]byte, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	data, ok := m.trees[id]
	if !ok {
		return nil, errors.New("no such tree")
	}
	return data, nil
}

// old is a fixed mtime well in the past, so fixtures are never "racily
// clean" and the cache may keep them.
var old = time.Date(2024, 5, 6, 7, 8, 9, 123456789, time.UTC)

// writeTree creates files (content by relative path) with mode 0644 and an
// old mtime, plus the directories they need.
func writeTree(t *testing.T, root string, files map[string]string) {
	t.Helper()
	for rel, content := range files {
		p := filepath.Join(root, filepath.FromSlash(rel))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Chtimes(p, old, old); err != nil {
			t.Fatal(err)
		}
	}
}

func sum(content string) digest.Digest { return digest.Of([]byte(content)) }

// snap takes a snapshot of src into sink with opts.
func snap(t *testing.T, src string, sink *memSink, opts Options) *Result {
	t.Helper()
	opts.Sink = sink
	s, err := New(src, opts)
	if err != nil {
		t.Fatal(err)
	}
	res, err := s.Snapshot(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return res
}

// nodes walks a snapshot's tree into a map by path ("" is the root).
func nodes(t *testing.T, sink *memSink, root digest.Digest) map[string]*Node {
	t.Helper()
	out := map[string]*Node{}
	err := Walk(context.Background(), sink, root, func(rel string, n *Node) error {
		c := *n
		out[rel] = &c
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// filePaths lists the regular files of a walked tree, sorted.
func filePaths(ns map[string]*Node) []string {
	var out []string
	for p, n := range ns {
		if n.Type == TypeFile {
			out = append(out, p)
		}
	}
	slices.Sort(out)
	return out
}

func problemPaths(ps []Problem) []string {
	var out []string
	for _, p := range ps {
		out = append(out, p.Path)
	}
	return out
}

// ageFiles waits until the files written just now are no longer "racily
// clean", so the cache may trust them.
func ageFiles() { time.Sleep(2 * racyWindow) }

func removeAll(t *testing.T, root, rel string) {
	t.Helper()
	if err := os.RemoveAll(filepath.Join(root, rel)); err != nil {
		t.Fatal(err)
	}
}

func chmod(t *testing.T, root, rel string, mode os.FileMode) {
	t.Helper()
	if err := os.Chmod(filepath.Join(root, rel), mode); err != nil {
		t.Fatal(err)
	}
}
