package main

import (
	"context"
	"os"
	"path/filepath"
	"strconv"

	"golang.org/x/time/rate"

	"github.com/deltabackup/deltabackup/hashstore"
	"github.com/deltabackup/deltabackup/hashstore/keycache"
	"github.com/deltabackup/deltabackup/hashstore/location"
)

// locationOptions turns the --s3-* flags, --create-bucket and
// --retry-max-time into the options of location.Open.
func (g *globals) locationOptions() (location.Options, error) {
	opts := location.Options{S3: map[string]string{}, CreateBucket: g.createBucket, CreateDir: g.createDir, Logger: g.logger,
		Retry:      hashstore.RetryPolicy{MaxElapsed: g.retryTime},
		SFTP:       location.SFTPOptions{IdentityFiles: g.sftpIdentities, KnownHostsFiles: g.sftpKnownHosts},
		GCSProject: g.gcsProject}
	opts.UploadLimit, opts.DownloadLimit = g.limiters()
	for name, value := range g.s3Flags {
		switch name {
		case "part-size":
			n, err := parseSize(value)
			if err != nil {
				return opts, usagef("--s3-part-size: %v", err)
			}
			value = strconv.FormatInt(n, 10)
		case "object-lock":
			d, err := parseRetentionDuration(value)
			if err != nil {
				return opts, usagef("--s3-object-lock: %v", err)
			}
			value = d.String()
		}
		opts.S3[name] = value
	}
	return opts, nil
}

// openLocation opens the backend of a repository location.
func (g *globals) openLocation(ctx context.Context, loc string) (*location.Opened, error) {
	if loc == "" {
		return nil, usagef("no repository given: use --repo PATH or set DELTABACKUP_REPO")
	}
	opts, err := g.locationOptions()
	if err != nil {
		return nil, err
	}
	o, err := location.Open(ctx, loc, opts)
	if err != nil {
		return nil, err
	}
	g.counted = append(g.counted, o)
	return o, nil
}

// openStore opens the repository of --repo.
func openStore(ctx context.Context, g *globals) (*hashstore.Store, error) {
	return openStoreAt(ctx, g, g.repo, hashstore.Options{})
}

// openStoreAt opens the repository at loc, with a cache for remote
// storage; the options' logger is filled in from the flags.
func openStoreAt(ctx context.Context, g *globals, loc string, opts hashstore.Options) (*hashstore.Store, error) {
	return openStoreCached(ctx, g, loc, opts, g.cacheBase())
}

// openStoreCached opens the repository at loc, caching in cacheDir ("":
// no cache, every answer from the storage itself).
func openStoreCached(ctx context.Context, g *globals, loc string, opts hashstore.Options, cacheDir string) (*hashstore.Store, error) {
	if loc == "" {
		return nil, usagef("no repository given: use --repo PATH or set DELTABACKUP_REPO")
	}
	lopts, err := g.locationOptions()
	if err != nil {
		return nil, err
	}
	if opts.Logger == nil {
		opts.Logger = g.logger
	}
	if opts.Password == nil {
		opts.Password = g.passwordFunc(&g.password, loc, false)
	}
	if opts.KeyCache == nil {
		opts.KeyCache = keycache.Kernel(g.keyCache)
	}
	s, o, err := location.OpenStore(ctx, loc, lopts, opts, cacheDir)
	if o != nil {
		g.counted = append(g.counted, o)
	}
	if err != nil {
		return nil, err
	}
	if g.openedStore == nil {
		g.openedStore = s
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

// requests returns the storage requests made so far, by operation, or
// nil when no storage counts them.
func (g *globals) requests() map[string]int64 {
	var out map[string]int64
	for _, o := range g.counted {
		if o.Requests == nil {
			continue
		}
		if out == nil {
			out = map[string]int64{}
		}
		for op, n := range o.Requests() {
			out[op] += n
		}
	}
	return out
}

// requestTotal sums requests by operation.
func requestTotal(m map[string]int64) int64 {
	var n int64
	for _, v := range m {
		n += v
	}
	return n
}

// limiters returns the process's rate limiters (nil without limits).
func (g *globals) limiters() (up, down *rate.Limiter) {
	if g.upLimiter == nil {
		g.upLimiter = hashstore.NewLimiter(int64(g.limitUpload))
	}
	if g.downLimiter == nil {
		g.downLimiter = hashstore.NewLimiter(int64(g.limitDownload))
	}
	return g.upLimiter, g.downLimiter
}
