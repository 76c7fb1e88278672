package hashstore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
	"time"
)

// Local is a Backend on a local directory: the embedded default, no server
// needed. Keys are relative paths under the root. Puts write a temporary
// file in the key's directory, fsync it, rename it into place and fsync the
// directory, so a crash never leaves a partial object under its key.
type Local struct {
	root string
}

var _ Backend = (*Local)(nil)

// NewLocal returns a Backend rooted at dir. The directory is created by the
// first Put.
func NewLocal(dir string) *Local { return &Local{root: filepath.Clean(dir)} }

// Root returns the directory the backend stores into.
func (l *Local) Root() string { return l.root }

// String names the backend for messages.
func (l *Local) String() string { return l.root }

func (l *Local) path(key string) (string, error) {
	if err := ValidateKey(key); err != nil {
		return "", err
	}
	return filepath.Join(l.root, filepath.FromSlash(key)), nil
}

// Put implements Backend.
func (l *Local) Put(ctx context.Context, key string, r io.Reader, size int64) error {
	return l.put(ctx, key, r, size, false)
}

// PutIfAbsent implements Creator: the finished temporary file is linked
// to the key, which fails when the key exists, instead of renamed over it.
func (l *Local) PutIfAbsent(ctx context.Context, key string, r io.Reader, size int64) error {
	return l.put(ctx, key, r, size, true)
}

func (l *Local) put(ctx context.Context, key string, r io.Reader, size int64, exclusive bool) (err error) {
	if err := ctx.Err(); err != nil {
		return err
	}
	final, err := l.path(key)
	if err != nil {
		return err
	}
	dir := filepath.Dir(final)
	if err := mkdirAllSynced(dir); err != nil {
		return fmt.Errorf("put %s: %w", key, err)
	}
	tmp, err := os.CreateTemp(dir, tempPrefix+"*")
	if err != nil {
		return fmt.Errorf("put %s: %w", key, err)
	}
	defer func() {
		if err != nil {
			_ = tmp.Close()
			_ = os.Remove(tmp.Name())
		}
	}()
	n, err := io.Copy(tmp, contextReader{ctx, r})
	if err != nil {
		return fmt.Errorf("put %s: %w", key, err)
	}
	if size >= 0 && n != size {
		return fmt.Errorf("put %s: got %d bytes, expected %d", key, n, size)
	}
	if err := tmp.Sync(); err != nil {
		return fmt.Errorf("put %s: fsync: %w", key, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("put %s: %w", key, err)
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if exclusive {
		err := os.Link(tmp.Name(), final)
		_ = os.Remove(tmp.Name())
		if errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("put %s: %w", key, ErrExists)
		}
		if err != nil {
			return fmt.Errorf("put %s: %w", key, err)
		}
	} else if err := os.Rename(tmp.Name(), final); err != nil {
		return fmt.Errorf("put %s: %w", key, err)
	}
	if err := syncDir(dir); err != nil {
		return fmt.Errorf("put %s: fsync directory: %w", key, err)
	}
	return nil
}

// mkdirAllSynced creates dir and its missing parents, fsyncing each parent
// whose entries changed so that a new object's directory survives a crash.
func mkdirAllSynced(dir string) error {
	if fi, err := os.Stat(dir); err == nil {
		if !fi.IsDir() {
			return fmt.Errorf("%s: not a directory", dir)
		}
		return nil
	}
	parent := filepath.Dir(dir)
	if parent != dir {
		if err := mkdirAllSynced(parent); err != nil {
			return err
		}
	}
	if err := os.Mkdir(dir, 0o700); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return nil // created concurrently
		}
		return err
	}
	return syncDir(parent)
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

func (l *Local) open(ctx context.Context, key string) (*os.File, os.FileInfo, error) {
	if err := ctx.Err(); err != nil {
		return nil, nil, err
	}
	p, err := l.path(key)
	if err != nil {
		return nil, nil, err
	}
	f, err := os.Open(p)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, nil, notFound(key)
		}
		return nil, nil, fmt.Errorf("get %s: %w", key, err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, nil, fmt.Errorf("get %s: %w", key, err)
	}
	if !fi.Mode().IsRegular() {
		f.Close()
		return nil, nil, notFound(key)
	}
	return f, fi, nil
}

// Get implements Backend.
func (l *Local) Get(ctx context.Context, key string) (io.ReadCloser, error) {
	f, _, err := l.open(ctx, key)
	return f, err
}

// GetRange implements Backend.
func (l *Local) GetRange(ctx context.Context, key string, offset, length int64) (io.ReadCloser, error) {
	if offset < 0 {
		return nil, fmt.Errorf("get %s: negative offset %d: %w", key, offset, ErrInvalidRange)
	}
	f, fi, err := l.open(ctx, key)
	if err != nil {
		return nil, err
	}
	if offset > fi.Size() {
		f.Close()
		return nil, fmt.Errorf("get %s: offset %d beyond size %d: %w", key, offset, fi.Size(), ErrInvalidRange)
	}
	if length < 0 || offset+length > fi.Size() {
		length = fi.Size() - offset
	}
	return readCloser{io.NewSectionReader(f, offset, length), f}, nil
}

type readCloser struct {
	io.Reader
	io.Closer
}

// Stat implements Backend.
func (l *Local) Stat(ctx context.Context, key string) (Info, error) {
	if err := ctx.Err(); err != nil {
		return Info{}, err
	}
	p, err := l.path(key)
	if err != nil {
		return Info{}, err
	}
	fi, err := os.Stat(p)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return Info{}, notFound(key)
		}
		return Info{}, fmt.Errorf("stat %s: %w", key, err)
	}
	if !fi.Mode().IsRegular() {
		return Info{}, notFound(key)
	}
	return Info{Key: key, Size: fi.Size(), ModTime: fi.ModTime()}, nil
}

// List implements Backend. It walks only the directory that can hold keys
// with prefix.
func (l *Local) List(ctx context.Context, prefix string, fn func(Info) error) error {
	start := prefix
	if !strings.HasSuffix(start, "/") {
		start = path.Dir(start)
	}
	start = strings.TrimSuffix(start, "/")
	if start == "." {
		start = ""
	}
	base := filepath.Join(l.root, filepath.FromSlash(start))
	err := filepath.WalkDir(base, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil // prefix with no keys, or removed while listing
			}
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		rel, err := filepath.Rel(l.root, p)
		if err != nil {
			return err
		}
		key := filepath.ToSlash(rel)
		if d.IsDir() {
			if p != base && !strings.HasPrefix(key+"/", prefix) && !strings.HasPrefix(prefix, key+"/") {
				return fs.SkipDir
			}
			return nil
		}
		if strings.HasPrefix(d.Name(), tempPrefix) || !strings.HasPrefix(key, prefix) || !d.Type().IsRegular() {
			return nil
		}
		fi, err := d.Info()
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		return fn(Info{Key: key, Size: fi.Size(), ModTime: fi.ModTime()})
	})
	if err != nil {
		return fmt.Errorf("list %q: %w", prefix, err)
	}
	return nil
}

// Delete implements Backend.
func (l *Local) Delete(ctx context.Context, key string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	p, err := l.path(key)
	if err != nil {
		return err
	}
	if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("delete %s: %w", key, err)
	}
	return nil
}

// RemoveStaleTemps deletes temporary files of writes that never finished
// (the writer was killed) and are older than age, and returns how many it
// removed and their bytes. gc calls it when no shared lock is live.
func (l *Local) RemoveStaleTemps(age time.Duration) (int, int64, error) {
	var n int
	var bytes int64
	cutoff := time.Now().Add(-age)
	err := filepath.WalkDir(l.root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		if d.IsDir() || !strings.HasPrefix(d.Name(), tempPrefix) {
			return nil
		}
		info, err := d.Info()
		if err != nil || info.ModTime().After(cutoff) {
			return nil
		}
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		n++
		bytes += info.Size()
		return nil
	})
	return n, bytes, err
}
