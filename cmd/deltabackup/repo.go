package main

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"

	"github.com/deltabackup/deltabackup/hashstore"
	"github.com/deltabackup/deltabackup/snapshot"
)

// openBackend turns a repository location into a Backend. A plain path or
// file:///path is a local directory: the embedded default, no server needed.
func openBackend(location string) (hashstore.Backend, error) {
	if location == "" {
		return nil, usagef("no repository given: use --repo PATH or set DELTABACKUP_REPO")
	}
	if !strings.Contains(location, "://") {
		return hashstore.NewLocal(location), nil
	}
	u, err := url.Parse(location)
	if err != nil {
		return nil, usagef("repository %q is not a valid URL: %v", location, err)
	}
	switch u.Scheme {
	case "file":
		if u.Host != "" && u.Host != "localhost" {
			return nil, usagef("repository %q: file URLs name a local path (file:///path)", location)
		}
		return hashstore.NewLocal(u.Path), nil
	}
	return nil, usagef("repository %q: unsupported scheme %q (supported: a path, file:///path)", redact(u), u.Scheme)
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
	b, err := openBackend(g.repo)
	if err != nil {
		return nil, err
	}
	if l, ok := b.(*hashstore.Local); ok {
		fi, err := os.Stat(l.Root())
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("repository %s does not exist; create it with 'deltabackup init --repo %s'", l.Root(), g.repo)
		}
		if err == nil && !fi.IsDir() {
			return nil, fmt.Errorf("repository %s is a file, not a directory", l.Root())
		}
	}
	s, err := hashstore.Open(ctx, b, g.logger)
	if err != nil {
		return nil, hint(err, g.repo)
	}
	return s, nil
}

// statCachePath returns where the stat cache for this repository and
// source lives, or "" when there is no cache directory.
func (g *globals) statCachePath(repoID, src string) string {
	dir := g.cacheDir
	if dir == "" {
		base, err := os.UserCacheDir()
		if err != nil {
			g.logger.Warn("no cache directory (set --cache-dir or DELTABACKUP_CACHE_DIR); every file will be read", "err", err)
			return ""
		}
		dir = filepath.Join(base, "deltabackup")
	}
	return snapshot.StatCachePath(dir, repoID, src)
}
