package location

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/time/rate"

	"github.com/deltabackup/deltabackup/hashstore"
	"github.com/deltabackup/deltabackup/hashstore/azurestore"
	"github.com/deltabackup/deltabackup/hashstore/gcsstore"
	"github.com/deltabackup/deltabackup/hashstore/s3store"
	"github.com/deltabackup/deltabackup/hashstore/sftpstore"
)

// ErrInvalid marks a location that is not one: empty, not a URL, or of a
// scheme no backend serves. The message says which.
var ErrInvalid = errors.New("invalid repository location")

// Options say how to open a location; zero values mean defaults.
type Options struct {
	// S3 holds S3 options by their URL parameter names (endpoint, region,
	// part-size in bytes, ...); they override the URL's own.
	S3 map[string]string
	// CreateBucket creates a missing bucket (for Init).
	CreateBucket bool
	// CreateDir creates a missing directory on an SFTP server (for Init).
	CreateDir bool
	// GCSProject is the project of a bucket CreateBucket makes on Google
	// Cloud Storage (default GOOGLE_CLOUD_PROJECT).
	GCSProject string
	// UploadLimit and DownloadLimit, when set, bound the bytes per second
	// sent to and received from the storage (hashstore.NewLimiter); share
	// them between locations to bound a process as a whole.
	UploadLimit, DownloadLimit *rate.Limiter
	// SFTP holds the keys and known_hosts files for sftp:// locations
	// (empty: ssh-agent and ~/.ssh's).
	SFTP SFTPOptions
	// Retry is the retry policy for remote storage.
	Retry  hashstore.RetryPolicy
	Logger *slog.Logger
}

// SFTPOptions are the SSH settings that do not belong in a URL.
type SFTPOptions struct {
	IdentityFiles   []string
	KnownHostsFiles []string
}

// Opened is a location's backend.
type Opened struct {
	Backend hashstore.Backend
	// Location is the location as given, without credentials.
	Location string
	// Local is the directory of a repository on this machine, "" for
	// remote storage.
	Local string
	// Requests returns the requests made so far by operation, or nil for
	// storage that does not count them (a local directory).
	Requests func() map[string]int64
	closer   func() error
}

// Close releases what the backend holds between requests (idle
// connections); the backend must not be used afterwards.
func (o *Opened) Close() error {
	if o.closer == nil {
		return nil
	}
	return o.closer()
}

// Remote reports whether the storage is not this machine's disk.
func (o *Opened) Remote() bool { return o.Local == "" }

// Open turns location into a Backend. A plain path or file:///path is a
// local directory (no server needed); s3://bucket/prefix is S3 or an
// S3-compatible server, gs://bucket/prefix Google Cloud Storage,
// azure://container/prefix Azure Blob Storage, sftp://user@host[:port]/path
// an SFTP server; remote storage is wrapped in retries.
func Open(ctx context.Context, location string, opts Options) (*Opened, error) {
	if location == "" {
		return nil, fmt.Errorf("%w: none given", ErrInvalid)
	}
	if !strings.Contains(location, "://") {
		return local(location, opts), nil
	}
	u, err := url.Parse(location)
	if err != nil {
		return nil, fmt.Errorf("%w: not a valid URL: %v", ErrInvalid, redactURLError(err))
	}
	switch u.Scheme {
	case "file":
		if u.Host != "" && u.Host != "localhost" {
			return nil, fmt.Errorf("%w: %s: file URLs name a local path (file:///path)", ErrInvalid, u.Redacted())
		}
		return local(u.Path, opts), nil
	case "s3":
		cfg, err := s3store.ParseURL(location)
		if err != nil {
			return nil, fmt.Errorf("%w: %w", ErrInvalid, err)
		}
		for name, value := range opts.S3 {
			if err := cfg.Set(name, value); err != nil {
				return nil, fmt.Errorf("%w: %w", ErrInvalid, err)
			}
		}
		if opts.CreateBucket {
			cfg.CreateBucket = true
		}
		b, err := s3store.Open(ctx, cfg)
		if err != nil {
			return nil, err
		}
		return remote(b, u.Redacted(), b.Requests, b.Close, opts), nil
	case "gs":
		cfg, err := gcsstore.ParseURL(location)
		if err != nil {
			return nil, fmt.Errorf("%w: %w", ErrInvalid, err)
		}
		cfg.CreateBucket = opts.CreateBucket
		cfg.Project = opts.GCSProject
		b, err := gcsstore.Open(ctx, cfg)
		if err != nil {
			return nil, err
		}
		return remote(b, b.String(), b.Requests, b.Close, opts), nil
	case "azure":
		cfg, err := azurestore.ParseURL(location)
		if err != nil {
			return nil, fmt.Errorf("%w: %w", ErrInvalid, err)
		}
		cfg.CreateContainer = opts.CreateBucket
		b, err := azurestore.Open(ctx, cfg)
		if err != nil {
			return nil, err
		}
		return remote(b, b.String(), b.Requests, nil, opts), nil
	case "sftp":
		cfg, err := sftpstore.ParseURL(location)
		if err != nil {
			return nil, fmt.Errorf("%w: %w", ErrInvalid, err)
		}
		cfg.IdentityFiles = opts.SFTP.IdentityFiles
		cfg.KnownHostsFiles = opts.SFTP.KnownHostsFiles
		cfg.CreateDir = opts.CreateDir
		b, err := sftpstore.Open(ctx, cfg)
		if err != nil {
			return nil, err
		}
		return remote(b, b.String(), b.Requests, b.Close, opts), nil
	}
	return nil, fmt.Errorf("%w: %s: unsupported scheme %q (supported: a path, file:///path, s3://bucket/prefix, gs://bucket/prefix, azure://container/prefix, sftp://user@host/path)", ErrInvalid, u.Redacted(), u.Scheme)
}

// remote wraps a remote backend in the rate limits and the retry policy
// of opts (limits inside, so a retried transfer waits for them too).
func remote(b hashstore.Backend, location string, requests func() map[string]int64, closer func() error, opts Options) *Opened {
	retry := opts.Retry
	if retry.Logger == nil {
		retry.Logger = opts.Logger
	}
	b = hashstore.WithRateLimit(b, opts.UploadLimit, opts.DownloadLimit)
	return &Opened{Backend: hashstore.WithRetry(b, retry), Location: location, Requests: requests, closer: closer}
}

func local(dir string, opts Options) *Opened {
	b := hashstore.WithRateLimit(hashstore.NewLocal(dir), opts.UploadLimit, opts.DownloadLimit)
	return &Opened{Backend: b, Location: dir, Local: filepath.Clean(dir)}
}

func redactURLError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

// OpenStore opens the repository at location. For remote storage, the
// store keeps a cache (index files, objects known to be stored) in
// cacheDir (hashstore.Options.CacheDir) when it is set, so an unchanged
// nightly backup makes a handful of requests; a local repository needs
// none, and store.CacheDir is ignored for it. A missing local directory, or a file where it should be, is
// hashstore.ErrNotRepository.
func OpenStore(ctx context.Context, location string, opts Options, store hashstore.Options, cacheDir string) (*hashstore.Store, *Opened, error) {
	o, err := Open(ctx, location, opts)
	if err != nil {
		return nil, nil, err
	}
	if !o.Remote() {
		fi, err := os.Stat(o.Local)
		if errors.Is(err, os.ErrNotExist) {
			return nil, nil, fmt.Errorf("repository %s does not exist: %w", o.Local, hashstore.ErrNotRepository)
		}
		if err == nil && !fi.IsDir() {
			return nil, nil, fmt.Errorf("repository %s is a file, not a directory: %w", o.Local, hashstore.ErrNotRepository)
		}
	}
	if store.Logger == nil {
		store.Logger = opts.Logger
	}
	if o.Remote() {
		store.CacheDir = cacheDir
	}
	s, err := hashstore.Open(ctx, o.Backend, store)
	if err != nil {
		return nil, nil, err
	}
	return s, o, nil
}
