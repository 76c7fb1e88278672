package sftpstore

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"path"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/pkg/sftp"

	"github.com/deltabackup/deltabackup/hashstore"
)

// tempPrefix starts the names of files being written; hashstore keys
// never have a component starting with it.
const tempPrefix = ".tmp-"

// Backend is a repository directory on an SFTP server.
type Backend struct {
	cfg Config
	// root is the repository's directory, absolute on the server; set
	// by the first session (b.mu).
	root string
	// slots bounds the operations in flight.
	slots chan struct{}

	mu   sync.Mutex
	sess *session

	counts hashstore.RequestCounts
}

var (
	_ hashstore.Backend     = (*Backend)(nil)
	_ hashstore.Creator     = (*Backend)(nil)
	_ hashstore.TempRemover = (*Backend)(nil)
)

// Open returns the backend of cfg. It connects at the first operation
// (so that the retry policy wrapped around it covers the first dial too),
// and then checks the repository's directory, creating it when
// cfg.CreateDir.
func Open(ctx context.Context, cfg Config) (*Backend, error) {
	cfg = cfg.withDefaults()
	if cfg.Host == "" || cfg.Path == "" {
		return nil, errors.New("sftp: no host or no path")
	}
	return &Backend{cfg: cfg, slots: make(chan struct{}, cfg.Requests)}, nil
}

// prepare resolves and checks the repository's directory on a new
// session; b.mu is held.
func (b *Backend) prepare(s *session) error {
	root := b.cfg.Path
	if !path.IsAbs(root) {
		root = path.Join(s.home, strings.TrimPrefix(root, "~/"))
	}
	root = path.Clean(root)
	b.count("stat")
	fi, err := s.sftp.Stat(root)
	switch {
	case errors.Is(err, fs.ErrNotExist) && b.cfg.CreateDir:
		b.count("mkdir")
		if err := s.sftp.MkdirAll(root); err != nil {
			return b.pathError("create directory", root, err)
		}
	case errors.Is(err, fs.ErrNotExist):
		return hashstore.Permanent(fmt.Errorf("%s: %w", b, ErrDirMissing))
	case err != nil:
		return b.pathError("stat", root, err)
	case !fi.IsDir():
		return hashstore.Permanent(fmt.Errorf("%s is a file, not a directory", b))
	}
	b.root = root
	return nil
}

// String names the repository (no secrets).
func (b *Backend) String() string { return b.cfg.String() }

// Close ends the connection; the backend must not be used afterwards.
func (b *Backend) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.sess != nil {
		b.sess.close()
		b.sess = nil
	}
	return nil
}

// CanCreate reports whether the server can link files (create-if-absent).
// When the server cannot be reached to ask, it says yes: PutIfAbsent then
// fails with the connection's error, rather than a record being written
// without the protection.
func (b *Backend) CanCreate() bool {
	s, err := b.session(context.Background())
	return err != nil || s.hardlink
}

// Requests returns the SFTP requests sent so far, by operation.
func (b *Backend) Requests() map[string]int64 { return b.counts.Snapshot() }

func (b *Backend) count(op string) { b.counts.Add(op) }

// session returns the live session, dialling when there is none.
func (b *Backend) session(ctx context.Context) (*session, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.sess != nil && b.sess.alive() {
		return b.sess, nil
	}
	if b.sess != nil {
		b.sess.close()
		b.sess = nil
	}
	s, err := dial(ctx, b.cfg)
	if err != nil {
		return nil, err
	}
	b.count("connect")
	if b.root == "" {
		if err := b.prepare(s); err != nil {
			s.close()
			return nil, err
		}
	}
	b.sess = s
	return s, nil
}

// do runs fn with a session and a request slot.
func (b *Backend) do(ctx context.Context, fn func(s *session, c *sftp.Client) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	select {
	case b.slots <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	}
	defer func() { <-b.slots }()
	s, err := b.session(ctx)
	if err != nil {
		return err
	}
	err = fn(s, s.sftp)
	if err != nil && connectionLost(err) {
		// The next operation dials again at once: the SSH client may not
		// yet have noticed that its connection is gone, and alive() would
		// hand out the dead session once more.
		b.drop(s)
	}
	return err
}

// drop closes s and forgets it, if it is still the live session.
func (b *Backend) drop(s *session) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.sess == s {
		s.close()
		b.sess = nil
	}
}

// connectionLost reports whether err says the connection broke, as
// opposed to a refusal by the server.
func connectionLost(err error) bool {
	return errors.Is(err, sftp.ErrSSHFxConnectionLost) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, net.ErrClosed) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

func (b *Backend) full(key string) string { return b.root + "/" + key }

// pathError states what failed on which path, as a fact the caller can
// test: missing (hashstore.ErrNotFound), refused (ErrPermission,
// permanent), or the connection's error.
func (b *Backend) pathError(op, p string, err error) error {
	rel := strings.TrimPrefix(strings.TrimPrefix(p, b.root), "/")
	if rel == "" {
		rel = p
	}
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("%s %s: %w", op, rel, hashstore.ErrNotFound)
	case errors.Is(err, fs.ErrPermission):
		return hashstore.Permanent(fmt.Errorf("%s %s on %s: %w", op, rel, b, ErrPermission))
	}
	return fmt.Errorf("%s %s on %s: %w", op, rel, b, err)
}

func tempName(dir string) string {
	var r [8]byte
	_, _ = rand.Read(r[:])
	return dir + "/" + tempPrefix + hex.EncodeToString(r[:])
}

// writeTemp writes what r yields to a new temporary file beside key and
// returns its name; on any error nothing is left behind.
func (b *Backend) writeTemp(ctx context.Context, c *sftp.Client, key string, r io.Reader, size int64) (string, error) {
	full := b.full(key)
	dir := path.Dir(full)
	tmp := tempName(dir)
	b.count("create")
	f, err := c.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL)
	if errors.Is(err, fs.ErrNotExist) {
		b.count("mkdir")
		if err := c.MkdirAll(dir); err != nil {
			return "", b.pathError("create directory", dir, err)
		}
		b.count("create")
		f, err = c.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL)
	}
	if err != nil {
		return "", b.pathError("create", tmp, err)
	}
	body := hashstore.ContextReader(ctx, r)
	if size >= 0 {
		// One byte more than promised shows a reader that yields too much.
		body = &io.LimitedReader{R: body, N: size + 1}
	}
	b.count("write")
	n, err := f.ReadFrom(body)
	cerr := f.Close()
	switch {
	case err != nil:
		err = fmt.Errorf("write %s: %w", key, err)
	case cerr != nil:
		err = fmt.Errorf("write %s: %w", key, cerr)
	case size >= 0 && n != size:
		err = fmt.Errorf("write %s: got %d bytes, want %d", key, n, size)
	}
	if err != nil {
		b.count("remove")
		_ = c.Remove(tmp)
		if errors.Is(err, fs.ErrPermission) {
			return "", b.pathError("write", full, err)
		}
		return "", err
	}
	return tmp, nil
}

// Put stores r under key: written to a temporary name, then renamed over
// key in one step.
func (b *Backend) Put(ctx context.Context, key string, r io.Reader, size int64) error {
	if err := hashstore.ValidateKey(key); err != nil {
		return err
	}
	return b.do(ctx, func(s *session, c *sftp.Client) error {
		tmp, err := b.writeTemp(ctx, c, key, r, size)
		if err != nil {
			return err
		}
		b.count("rename")
		full := b.full(key)
		if s.posixRename {
			err = c.PosixRename(tmp, full)
		} else {
			// Without the extension a rename does not replace: the key
			// is missing for a moment, never partly written.
			_ = c.Remove(full)
			err = c.Rename(tmp, full)
		}
		if err != nil {
			b.count("remove")
			_ = c.Remove(tmp)
			return b.pathError("rename", full, err)
		}
		return nil
	})
}

// PutIfAbsent stores r under key only if nothing is there: the temporary
// file is hard-linked to key, which fails when key exists.
func (b *Backend) PutIfAbsent(ctx context.Context, key string, r io.Reader, size int64) error {
	if err := hashstore.ValidateKey(key); err != nil {
		return err
	}
	return b.do(ctx, func(s *session, c *sftp.Client) error {
		if !s.hardlink {
			return hashstore.Permanent(fmt.Errorf("%s: the server has no hardlink@openssh.com extension, so keys cannot be created only if absent", b))
		}
		tmp, err := b.writeTemp(ctx, c, key, r, size)
		if err != nil {
			return err
		}
		defer func() {
			b.count("remove")
			_ = c.Remove(tmp)
		}()
		full := b.full(key)
		b.count("link")
		if err := c.Link(tmp, full); err != nil {
			b.count("stat")
			if _, serr := c.Lstat(full); serr == nil {
				return fmt.Errorf("%s: %w", key, hashstore.ErrExists)
			}
			return b.pathError("link", full, err)
		}
		return nil
	})
}

// Get opens the bytes under key.
func (b *Backend) Get(ctx context.Context, key string) (io.ReadCloser, error) {
	return b.GetRange(ctx, key, 0, -1)
}

// GetRange opens length bytes of key from offset (to the end when length
// is negative).
func (b *Backend) GetRange(ctx context.Context, key string, offset, length int64) (io.ReadCloser, error) {
	if err := hashstore.ValidateKey(key); err != nil {
		return nil, err
	}
	if offset < 0 {
		return nil, fmt.Errorf("%s: negative offset %d: %w", key, offset, hashstore.ErrInvalidRange)
	}
	var rc io.ReadCloser
	err := b.do(ctx, func(s *session, c *sftp.Client) error {
		full := b.full(key)
		b.count("open")
		f, err := c.Open(full)
		if err != nil {
			return b.pathError("open", full, err)
		}
		var body io.Reader = f
		if offset > 0 || length >= 0 {
			// A range needs the size, to tell an offset past the end;
			// a whole key is read to its end without asking.
			b.count("fstat")
			fi, err := f.Stat()
			if err != nil {
				f.Close()
				return b.pathError("stat", full, err)
			}
			if offset > fi.Size() {
				f.Close()
				return fmt.Errorf("%s: offset %d beyond its %d bytes: %w", key, offset, fi.Size(), hashstore.ErrInvalidRange)
			}
			if _, err := f.Seek(offset, io.SeekStart); err != nil {
				f.Close()
				return b.pathError("seek", full, err)
			}
			n := fi.Size() - offset
			if length >= 0 {
				n = min(n, length)
			}
			body = io.LimitReader(f, n)
		}
		b.count("read")
		rc = hashstore.NameReadErrors(key, hashstore.ContextReader(ctx, body), f)
		return nil
	})
	return rc, err
}

// Stat describes key.
func (b *Backend) Stat(ctx context.Context, key string) (hashstore.Info, error) {
	if err := hashstore.ValidateKey(key); err != nil {
		return hashstore.Info{}, err
	}
	var info hashstore.Info
	err := b.do(ctx, func(s *session, c *sftp.Client) error {
		full := b.full(key)
		b.count("stat")
		fi, err := c.Lstat(full)
		if err != nil {
			return b.pathError("stat", full, err)
		}
		if !fi.Mode().IsRegular() {
			return fmt.Errorf("%s: %w", key, hashstore.ErrNotFound)
		}
		info = hashstore.Info{Key: key, Size: fi.Size(), ModTime: fi.ModTime()}
		return nil
	})
	return info, err
}

// List calls fn for every key starting with prefix, reading only the
// directories the prefix can be in.
func (b *Backend) List(ctx context.Context, prefix string, fn func(hashstore.Info) error) error {
	start := ""
	if i := strings.LastIndexByte(prefix, '/'); i >= 0 {
		start = prefix[:i]
	}
	return b.walk(ctx, start, func(key string, fi os.FileInfo) error {
		if strings.HasPrefix(key, prefix) {
			return fn(hashstore.Info{Key: key, Size: fi.Size(), ModTime: fi.ModTime()})
		}
		return nil
	}, false)
}

// walk calls fn for every regular file below the directory rel (keys, or
// temporary files when temps), depth first. A missing directory holds
// nothing.
func (b *Backend) walk(ctx context.Context, rel string, fn func(key string, fi os.FileInfo) error, temps bool) error {
	var dir string
	var entries []os.FileInfo
	err := b.do(ctx, func(s *session, c *sftp.Client) error {
		dir = b.root
		if rel != "" {
			dir = b.full(rel)
		}
		b.count("readdir")
		var err error
		entries, err = c.ReadDir(dir)
		return err
	})
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return b.pathError("list", dir, err)
	}
	for _, fi := range entries {
		if err := ctx.Err(); err != nil {
			return err
		}
		key := fi.Name()
		if rel != "" {
			key = rel + "/" + key
		}
		isTemp := strings.HasPrefix(fi.Name(), tempPrefix)
		switch {
		case fi.IsDir() && !isTemp:
			if err := b.walk(ctx, key, fn, temps); err != nil {
				return err
			}
		case fi.Mode().IsRegular() && isTemp == temps:
			if err := fn(key, fi); err != nil {
				return err
			}
		}
	}
	return nil
}

// Delete removes key; a missing key is not an error.
func (b *Backend) Delete(ctx context.Context, key string) error {
	if err := hashstore.ValidateKey(key); err != nil {
		return err
	}
	return b.do(ctx, func(s *session, c *sftp.Client) error {
		full := b.full(key)
		b.count("remove")
		err := c.Remove(full)
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return b.pathError("delete", full, err)
		}
		return nil
	})
}

// RemoveStaleTemps removes temporary files older than age, left by
// writers that died.
func (b *Backend) RemoveStaleTemps(age time.Duration) (files int, bytes int64, err error) {
	ctx := context.Background()
	cutoff := time.Now().Add(-age)
	var stale []string
	err = b.walk(ctx, "", func(key string, fi os.FileInfo) error {
		if fi.ModTime().Before(cutoff) {
			stale = append(stale, key)
			bytes += fi.Size()
		}
		return nil
	}, true)
	if err != nil {
		return 0, 0, err
	}
	for _, key := range stale {
		err := b.do(ctx, func(s *session, c *sftp.Client) error {
			b.count("remove")
			return c.Remove(b.full(key))
		})
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return files, bytes, b.pathError("delete", b.full(key), err)
		}
		files++
	}
	return files, bytes, nil
}
