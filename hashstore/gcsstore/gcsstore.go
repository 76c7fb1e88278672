package gcsstore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"

	"cloud.google.com/go/storage"
	"google.golang.org/api/googleapi"
	"google.golang.org/api/iterator"

	"github.com/deltabackup/deltabackup/hashstore"
)

// Errors a caller can act on.
var (
	// ErrBucketMissing: the bucket does not exist.
	ErrBucketMissing = errors.New("bucket does not exist")
	// ErrAccessDenied: the credentials were refused or lack a permission.
	ErrAccessDenied = errors.New("access denied")
)

// Config says where the repository is.
type Config struct {
	Bucket string
	// Prefix is prepended to every key ("" or ending without a slash).
	Prefix string
	// CreateBucket creates a missing bucket in Project (for init).
	CreateBucket bool
	// Project is the project a new bucket belongs to (default
	// GOOGLE_CLOUD_PROJECT).
	Project string
}

// ParseURL reads gs://bucket[/prefix].
func ParseURL(s string) (Config, error) {
	u, err := url.Parse(s)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return Config{}, fmt.Errorf("not a valid URL: %w", err)
	}
	shown := u.Scheme + "://" + u.Host + u.Path // no user, password or query: they may hold secrets
	if u.Scheme != "gs" {
		return Config{}, fmt.Errorf("%s: not a gs:// URL", shown)
	}
	if u.User != nil || u.RawQuery != "" || u.Fragment != "" || u.Port() != "" {
		return Config{}, fmt.Errorf("%s: gs:// URLs are gs://bucket/prefix, with no user, port or query", shown)
	}
	if u.Host == "" {
		return Config{}, fmt.Errorf("%s: no bucket", shown)
	}
	return Config{Bucket: u.Host, Prefix: strings.Trim(u.Path, "/")}, nil
}

// Backend is a bucket (and prefix) of Google Cloud Storage.
type Backend struct {
	cfg    Config
	client *storage.Client
	bucket *storage.BucketHandle
	counts hashstore.RequestCounts
}

var (
	_ hashstore.Backend = (*Backend)(nil)
	_ hashstore.Creator = (*Backend)(nil)
)

// Open makes the client and checks the bucket (creating it when
// cfg.CreateBucket).
func Open(ctx context.Context, cfg Config) (*Backend, error) {
	// JSON API reads: one API for everything, which emulators serve
	// whatever host name they are reached by.
	client, err := storage.NewClient(ctx, storage.WithJSONReads())
	if err != nil {
		return nil, hashstore.Permanent(fmt.Errorf("gs://%s: credentials: %w", cfg.Bucket, err))
	}
	b := &Backend{cfg: cfg, client: client, bucket: client.Bucket(cfg.Bucket)}
	b.count("bucket.get")
	_, err = b.bucket.Attrs(ctx)
	if errors.Is(err, storage.ErrBucketNotExist) && cfg.CreateBucket {
		project := cfg.Project
		if project == "" {
			project = os.Getenv("GOOGLE_CLOUD_PROJECT")
		}
		b.count("bucket.insert")
		err = b.bucket.Create(ctx, project, nil)
		if e := (*googleapi.Error)(nil); errors.As(err, &e) && e.Code == http.StatusConflict {
			err = nil // created meanwhile
		}
	}
	if err != nil {
		client.Close()
		return nil, b.fail("open", "", err)
	}
	return b, nil
}

// String names the repository (no credentials).
func (b *Backend) String() string {
	if b.cfg.Prefix == "" {
		return "gs://" + b.cfg.Bucket
	}
	return "gs://" + b.cfg.Bucket + "/" + b.cfg.Prefix
}

// Close releases the client's connections.
func (b *Backend) Close() error { return b.client.Close() }

// Requests returns the operations sent so far, by API method.
func (b *Backend) Requests() map[string]int64 { return b.counts.Snapshot() }

func (b *Backend) count(op string) { b.counts.Add(op) }

func (b *Backend) name(key string) string {
	if b.cfg.Prefix == "" {
		return key
	}
	return b.cfg.Prefix + "/" + key
}

// fail states what failed as a fact callers can test.
func (b *Backend) fail(op, key string, err error) error {
	what := b.String()
	if key != "" {
		what = key
	}
	var e *googleapi.Error
	switch {
	case errors.Is(err, storage.ErrObjectNotExist):
		return fmt.Errorf("%s: %w", key, hashstore.ErrNotFound)
	case errors.Is(err, storage.ErrBucketNotExist):
		return hashstore.Permanent(fmt.Errorf("%s: %w", b, ErrBucketMissing))
	case errors.As(err, &e) && e.Code == http.StatusNotFound && key == "":
		return hashstore.Permanent(fmt.Errorf("%s: %w", b, ErrBucketMissing))
	case errors.As(err, &e) && (e.Code == http.StatusUnauthorized || e.Code == http.StatusForbidden):
		return hashstore.Permanent(fmt.Errorf("%s %s: %w (%d %s)", op, what, ErrAccessDenied, e.Code, http.StatusText(e.Code)))
	case errors.As(err, &e) && e.Code == http.StatusPreconditionFailed:
		return fmt.Errorf("%s: %w", key, hashstore.ErrExists)
	case errors.As(err, &e) && e.Code == http.StatusRequestedRangeNotSatisfiable:
		return fmt.Errorf("%s: %w", key, hashstore.ErrInvalidRange)
	}
	return fmt.Errorf("%s %s on %s: %w", op, what, b, err)
}

// Put stores r under key.
func (b *Backend) Put(ctx context.Context, key string, r io.Reader, size int64) error {
	return b.put(ctx, key, r, size, false)
}

// PutIfAbsent stores r under key only if no object is there.
func (b *Backend) PutIfAbsent(ctx context.Context, key string, r io.Reader, size int64) error {
	return b.put(ctx, key, r, size, true)
}

// chunkSize is the part of a resumable upload sent per request; objects
// known to be smaller go in one request without a buffer.
const chunkSize = 8 << 20

func (b *Backend) put(ctx context.Context, key string, r io.Reader, size int64, ifAbsent bool) error {
	if err := hashstore.ValidateKey(key); err != nil {
		return err
	}
	obj := b.bucket.Object(b.name(key))
	if ifAbsent {
		obj = obj.If(storage.Conditions{DoesNotExist: true})
	}
	body := io.Reader(hashstore.ContextReader(ctx, r))
	if size >= 0 {
		body = io.LimitReader(body, size+1)
	}
	if size >= 0 && size < chunkSize {
		// A single-request upload streams its body as it is read, so a
		// body that fails late could still complete it: small bodies are
		// read whole, and checked, first.
		data, err := io.ReadAll(body)
		switch {
		case err != nil:
			return fmt.Errorf("write %s: %w", key, err)
		case int64(len(data)) != size:
			return fmt.Errorf("write %s: got %d bytes, want %d", key, len(data), size)
		}
		w := obj.NewWriter(ctx)
		w.ChunkSize = 0
		b.count("objects.insert")
		if _, err := w.Write(data); err != nil {
			w.Close()
			return b.fail("write", key, err)
		}
		if err := w.Close(); err != nil {
			return b.fail("write", key, err)
		}
		return nil
	}
	// A resumable upload is completed only by Close; cancelling wctx
	// first abandons it, so nothing is stored.
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	w := obj.NewWriter(wctx)
	w.ChunkSize = chunkSize
	b.count("objects.insert.resumable")
	n, err := io.Copy(w, body)
	switch {
	case err != nil:
		cancel()
		w.Close()
		return fmt.Errorf("write %s: %w", key, err)
	case size >= 0 && n != size:
		cancel()
		w.Close()
		return fmt.Errorf("write %s: got %d bytes, want %d", key, n, size)
	}
	if err := w.Close(); err != nil {
		return b.fail("write", key, err)
	}
	return nil
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
	return hashstore.ReadObjectRange(ctx, key, offset, length, b.Stat, func() (io.ReadCloser, error) {
		b.count("objects.get")
		rd, err := b.bucket.Object(b.name(key)).NewRangeReader(ctx, offset, length)
		if err != nil {
			return nil, b.fail("read", key, err)
		}
		return hashstore.NameReadErrors(key, rd, rd), nil
	})
}

// Stat describes key.
func (b *Backend) Stat(ctx context.Context, key string) (hashstore.Info, error) {
	if err := hashstore.ValidateKey(key); err != nil {
		return hashstore.Info{}, err
	}
	b.count("objects.get.metadata")
	a, err := b.bucket.Object(b.name(key)).Attrs(ctx)
	if err != nil {
		return hashstore.Info{}, b.fail("stat", key, err)
	}
	return hashstore.Info{Key: key, Size: a.Size, ModTime: a.Updated}, nil
}

// List calls fn for every key starting with prefix, a page at a time.
func (b *Backend) List(ctx context.Context, prefix string, fn func(hashstore.Info) error) error {
	q := &storage.Query{Prefix: b.name(prefix)}
	if b.cfg.Prefix != "" && prefix == "" {
		q.Prefix = b.cfg.Prefix + "/"
	}
	if err := q.SetAttrSelection([]string{"Name", "Size", "Updated"}); err != nil {
		return err
	}
	pager := iterator.NewPager(b.bucket.Objects(ctx, q), 1000, "")
	for {
		var page []*storage.ObjectAttrs
		b.count("objects.list")
		next, err := pager.NextPage(&page)
		if err != nil {
			return b.fail("list", "", err)
		}
		for _, a := range page {
			key := a.Name
			if b.cfg.Prefix != "" {
				key = strings.TrimPrefix(key, b.cfg.Prefix+"/")
			}
			if err := fn(hashstore.Info{Key: key, Size: a.Size, ModTime: a.Updated}); err != nil {
				return err
			}
		}
		if next == "" {
			return nil
		}
	}
}

// Delete removes key; a missing key is not an error.
func (b *Backend) Delete(ctx context.Context, key string) error {
	if err := hashstore.ValidateKey(key); err != nil {
		return err
	}
	b.count("objects.delete")
	err := b.bucket.Object(b.name(key)).Delete(ctx)
	if err != nil && !errors.Is(err, storage.ErrObjectNotExist) {
		return b.fail("delete", key, err)
	}
	return nil
}
