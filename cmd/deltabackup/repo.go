package main

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/deltabackup/deltabackup/hashstore"
	"github.com/deltabackup/deltabackup/hashstore/s3store"
	"github.com/deltabackup/deltabackup/snapshot"
)

// openBackend turns the repository location into a Backend. A plain path
// or file:///path is a local directory: the embedded default, no server
// needed. s3://bucket/prefix is S3 or an S3-compatible server, wrapped in
// retries.
func (g *globals) openBackend(ctx context.Context) (hashstore.Backend, error) {
	return g.openBackendAt(ctx, g.repo)
}

// openBackendAt opens the backend of a repository location.
func (g *globals) openBackendAt(ctx context.Context, location string) (hashstore.Backend, error) {
	if location == "" {
		return nil, usagef("no repository given: use --repo PATH or set DELTABACKUP_REPO")
	}
	if !strings.Contains(location, "://") {
		return hashstore.NewLocal(location), nil
	}
	u, err := url.Parse(location)
	if err != nil {
		return nil, usagef("repository is not a valid URL: %v", redactURLError(err))
	}
	switch u.Scheme {
	case "file":
		if u.Host != "" && u.Host != "localhost" {
			return nil, usagef("repository %q: file URLs name a local path (file:///path)", location)
		}
		return hashstore.NewLocal(u.Path), nil
	case "s3":
		cfg, err := s3store.ParseURL(location)
		if err != nil {
			return nil, usageError{err}
		}
		if err := g.applyS3Flags(&cfg); err != nil {
			return nil, usageError{err}
		}
		b, err := s3store.Open(ctx, cfg)
		if err != nil {
			return nil, err
		}
		g.counted = b
		return hashstore.WithRetry(b, hashstore.RetryPolicy{Logger: g.logger, MaxElapsed: g.retryTime}), nil
	}
	return nil, usagef("repository %q: unsupported scheme %q (supported: a path, file:///path, s3://bucket/prefix)", redact(u), u.Scheme)
}

// applyS3Flags lays the --s3-* flags given on the command line over the
// options of the URL.
func (g *globals) applyS3Flags(cfg *s3store.Config) error {
	for name, value := range g.s3Flags {
		if name == "part-size" {
			n, err := parseSize(value)
			if err != nil {
				return fmt.Errorf("--s3-part-size: %w", err)
			}
			value = strconv.FormatInt(n, 10)
		}
		if err := cfg.Set(name, value); err != nil {
			return err
		}
	}
	if g.createBucket {
		cfg.CreateBucket = true
	}
	return nil
}

func redactURLError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

// redact drops credentials from a URL before it is shown.
func redact(u *url.URL) string {
	c := *u
	if c.User != nil {
		c.User = url.User("REDACTED")
	}
	return c.String()
}

// openStore opens an existing repository, with a message that says what
// to do when there is none.
func openStore(ctx context.Context, g *globals) (*hashstore.Store, error) {
	return openStoreAt(ctx, g, g.repo)
}

// openStoreAt opens the repository at location.
func openStoreAt(ctx context.Context, g *globals, location string) (*hashstore.Store, error) {
	b, err := g.openBackendAt(ctx, location)
	if err != nil {
		return nil, err
	}
	if l, ok := b.(*hashstore.Local); ok {
		fi, err := os.Stat(l.Root())
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("repository %s does not exist; create it with 'deltabackup init --repo %s'", l.Root(), location)
		}
		if err == nil && !fi.IsDir() {
			return nil, fmt.Errorf("repository %s is a file, not a directory", l.Root())
		}
	}
	s, err := hashstore.Open(ctx, b, g.logger)
	if err != nil {
		return nil, hint(err, location)
	}
	if g.openedStore == nil {
		g.openedStore = s
	}
	if _, local := b.(*hashstore.Local); !local {
		// Remote storage: index files and known objects are cached so an
		// unchanged incremental makes a handful of requests.
		if dir := g.cacheBase(); dir != "" {
			s.SetCacheDir(filepath.Join(dir, "repos", s.Config().ID))
		}
	}
	return s, nil
}

// cacheBase returns the cache directory, or "" when there is none.
func (g *globals) cacheBase() string {
	if g.cacheDir != "" {
		return g.cacheDir
	}
	base, err := os.UserCacheDir()
	if err != nil {
		g.logger.Warn("no cache directory (set --cache-dir or DELTABACKUP_CACHE_DIR); every file will be read", "err", err)
		return ""
	}
	return filepath.Join(base, "deltabackup")
}

// statCachePath returns where the stat cache for this repository and
// source lives, or "" when there is no cache directory.
func (g *globals) statCachePath(repoID, src string) string {
	dir := g.cacheBase()
	if dir == "" {
		return ""
	}
	return snapshot.StatCachePath(dir, repoID, src)
}

// requests returns the S3 requests made so far, by operation, or nil when
// the repository is not on S3.
func (g *globals) requests() map[string]int64 {
	if g.counted == nil {
		return nil
	}
	return g.counted.Requests()
}

// requestTotal sums requests by operation.
func requestTotal(m map[string]int64) int64 {
	var n int64
	for _, v := range m {
		n += v
	}
	return n
}
