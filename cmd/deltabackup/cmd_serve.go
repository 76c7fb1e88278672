package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/deltabackup/deltabackup/hashstore"
	"github.com/deltabackup/deltabackup/hashstore/peer"
	"github.com/deltabackup/deltabackup/snapshot"
	"github.com/deltabackup/deltabackup/upload"
)

type serveFlags struct {
	listen, source, tokenFile, tlsCert, tlsKey, node string
	rescan                                           time.Duration
	perClient, maxConnections, perClientConnections  int
	throttle                                         sizeValue
	noAuth, noRepoObjects                            bool
	spoolDir                                         string
}

func newServeCommand(g *globals) *cobra.Command {
	var f serveFlags
	cmd := &cobra.Command{
		Use:   "serve [--listen ADDR] [--repo URL] [--source DIR] [--token-file F] [--tls-cert F --tls-key F]",
		Short: "Serve objects by hexdigest to peers restoring from this node",
		Long: `serve answers other nodes' restores (restore --from http://this-node:7333)
with the contents of a repository (--repo) and/or of a live data directory
(--source DIR: the directory is snapshotted at start, and again every
--rescan, to know which file holds which content). Files that changed since
are answered "not available", never with wrong bytes. It serves nothing
else: no paths, no listings.

Every request must carry the token of --token-file (clients send it with
--peer-token-file): anyone who could ask could otherwise read, or test for,
any content served. --no-auth turns that off, on a loopback address only,
for tests. It listens on 127.0.0.1 unless told otherwise.`,
		Args: exactArgs(0, "no arguments"),
		RunE: func(cmd *cobra.Command, args []string) error { return runServe(cmd.Context(), g, &f) },
	}
	fl := cmd.Flags()
	fl.StringVar(&f.listen, "listen", "127.0.0.1:7333", "address to listen on")
	fl.StringVar(&f.source, "source", "", "a data directory whose contents to serve")
	fl.StringVar(&f.tokenFile, "token-file", "", "file holding the bearer token clients must present")
	fl.StringVar(&f.tlsCert, "tls-cert", "", "TLS certificate (PEM); with --tls-key, serve https")
	fl.StringVar(&f.tlsKey, "tls-key", "", "TLS private key (PEM)")
	fl.StringVar(&f.node, "node", "", "name of this node in health answers (default: the host name)")
	fl.DurationVar(&f.rescan, "rescan", 10*time.Minute, "snapshot --source again this often, to serve new and changed files (0: only at start)")
	fl.IntVar(&f.perClient, "per-client", 8, "requests served at once for one client address")
	fl.IntVar(&f.maxConnections, "max-connections", 1024, "connections open at once, all clients together")
	fl.IntVar(&f.perClientConnections, "per-client-connections", 64, "connections open at once from one client address")
	fl.BoolVar(&f.noAuth, "no-auth", false, "serve without a token (loopback addresses only; for tests)")
	fl.BoolVar(&f.noRepoObjects, "no-repo-objects", false, "with --source and --repo: read only the repository's chunking, serve no objects from it")
	fl.StringVar(&f.spoolDir, "spool-dir", "", "where verified copies of large objects are kept while served (default: the system's temporary directory)")
	fl.Var(&f.throttle, "throttle", "send at most this many bytes per second, all transfers together (for tests and benchmarks)")
	_ = fl.MarkHidden("throttle")
	return cmd
}

func runServe(ctx context.Context, g *globals, f *serveFlags) error {
	if g.repo == "" && f.source == "" {
		return usagef("serve needs --repo, --source, or both")
	}
	if (f.tlsCert == "") != (f.tlsKey == "") {
		return usagef("--tls-cert and --tls-key go together")
	}
	token, err := readToken(f.tokenFile)
	if err != nil {
		return err
	}
	host, _, err := net.SplitHostPort(f.listen)
	if err != nil {
		return usagef("--listen %q: %v", f.listen, err)
	}
	loopback := host == "localhost"
	if ip := net.ParseIP(host); ip != nil && ip.IsLoopback() {
		loopback = true
	}
	switch {
	case token != "" && f.noAuth:
		return usagef("--token-file and --no-auth exclude each other")
	case token == "" && !f.noAuth:
		return usagef("serve needs --token-file: whoever can reach it could otherwise read, or test for, any content it serves (--no-auth serves without one, on loopback, for tests)")
	case f.noAuth && !loopback:
		return usagef("--no-auth on %s, which is not a loopback address: anyone who can reach it could read your data; give a --token-file", f.listen)
	}
	// Certificates are loaded before anything else is done, so a missing
	// or broken one is reported at once.
	var tlsConfig *tls.Config
	if f.tlsCert != "" {
		cert, err := tls.LoadX509KeyPair(f.tlsCert, f.tlsKey)
		if err != nil {
			return fmt.Errorf("TLS certificate: %w", err)
		}
		tlsConfig = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12, NextProtos: []string{"h2", "http/1.1"}}
	}
	node := f.node
	if node == "" {
		node, _ = os.Hostname()
	}
	var providers []peer.Provider
	var store *hashstore.Store
	if g.repo != "" {
		if store, err = openStore(ctx, g); err != nil {
			return err
		}
	}
	if f.source != "" {
		// Chunked files are served chunk by chunk, cut as the repository
		// cuts them; without a repository only whole files are known.
		served := servedChunking{cacheID: "serve"}
		if store != nil {
			if served.chunking, err = upload.RepositoryChunking(store); err != nil {
				return err
			}
			served.cacheID = "serve-" + store.Config().ID
		} else {
			g.logger.Info("no repository given: files the repository keeps in chunks are not served from this directory (give --repo)")
		}
		objects, err := g.snapshotForServing(ctx, f.source, served)
		if err != nil {
			return err
		}
		providers = append(providers, objects)
		if f.rescan > 0 {
			go g.rescanLoop(ctx, f.source, f.rescan, objects, served)
		}
	}
	if store != nil && !f.noRepoObjects {
		providers = append(providers, peer.StoreProvider{Store: store})
	}
	srv, err := peer.NewServer(peer.ServerOptions{Node: node, Token: token, NoAuth: f.noAuth, PerClient: f.perClient,
		Throttle: serveThrottle(int64(f.throttle), int64(g.limitUpload)), Logger: g.logger, SpoolDir: f.spoolDir}, providers...)
	if err != nil {
		return err
	}
	defer srv.Close()
	ln, err := net.Listen("tcp", f.listen)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", f.listen, err)
	}
	ln = peer.LimitListener(ln, f.maxConnections, f.perClientConnections)
	scheme := "http"
	if tlsConfig != nil {
		scheme = "https"
		ln = tls.NewListener(ln, tlsConfig)
	}
	// Short timeouts: a connection that sends nothing, or idles between
	// requests, is closed before it costs anything.
	httpServer := &http.Server{Handler: srv.Handler(), ReadHeaderTimeout: 5 * time.Second, ReadTimeout: time.Minute,
		IdleTimeout: 30 * time.Second, TLSConfig: tlsConfig}
	var count int64
	for _, p := range providers {
		count += p.Count()
	}
	url := fmt.Sprintf("%s://%s", scheme, ln.Addr())
	if g.json {
		_ = g.printJSON(map[string]any{"message_type": "serving", "url": url, "objects": count, "node": node})
	} else {
		g.printf("serving %d objects on %s\n", count, url)
	}
	// A signal is how a server is meant to stop: requests in flight get
	// a few seconds to finish, then serve exits 0.
	stopped := make(chan error, 1)
	go func() {
		<-ctx.Done()
		shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		stopped <- httpServer.Shutdown(shutdown)
	}()
	err = httpServer.Serve(ln)
	if !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	if err := <-stopped; err != nil {
		g.logger.Warn("requests still running when serve stopped", "err", err)
	}
	g.logger.Info("serve stopped")
	return nil
}

// snapshotForServing snapshots dir (with a directory cache of its own,
// so a restart reads only what changed) and indexes its contents.
func (g *globals) snapshotForServing(ctx context.Context, dir string, served servedChunking) (*snapshot.Objects, error) {
	root, index, err := g.snapshotDir(ctx, dir, served)
	if err != nil {
		return nil, err
	}
	return snapshot.NewObjects(root, index)
}

// snapshotDir snapshots dir, storing nothing, and returns the directory
// files are served from and which file holds which content.
// servedChunking is how a served directory's files are cut, and the
// name of its directory cache (one per repository: the cut points
// depend on the repository's key).
type servedChunking struct {
	chunking snapshot.Chunking
	cacheID  string
}

func (g *globals) snapshotDir(ctx context.Context, dir string, served servedChunking) (string, *snapshot.ObjectIndex, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return "", nil, err
	}
	index := snapshot.NewObjectIndex()
	opts := snapshot.DefaultOptions()
	opts.Logger = g.logger
	opts.OnFile = index.Add
	opts.Chunking = served.chunking
	var cache *snapshot.DirCache
	if base := g.cacheBase(); base != "" {
		cache, err = snapshot.OpenDirCache(snapshot.DirCachePath(filepath.Join(base, "serve"), served.cacheID, abs))
		if err != nil {
			g.logger.Warn("directory cache unusable", "err", err)
		}
		defer cache.Close()
		// Nothing is stored: the cache needs no repository behind it.
		cache.Trusted = true
		opts.Cache = cache
	}
	s, err := snapshot.New(abs, opts)
	if err != nil {
		return "", nil, err
	}
	start := time.Now()
	res, err := s.Snapshot(ctx)
	if err != nil {
		return "", nil, err
	}
	if cache != nil {
		if err := cache.Commit("serve"); err != nil {
			g.logger.Warn("directory cache not saved", "err", err)
		}
	}
	g.logger.Info("snapshot of the served directory", "dir", s.Src(), "files", res.Stats.Files, "read_bytes", res.Stats.HashedBytes, "seconds", time.Since(start).Seconds())
	return res.ReadRoot, index, nil
}

func (g *globals) rescanLoop(ctx context.Context, dir string, every time.Duration, objects *snapshot.Objects, served servedChunking) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			root, index, err := g.snapshotDir(ctx, dir, served)
			if err != nil {
				g.logger.Warn("rescan of the served directory failed; serving the previous snapshot", "err", err)
				continue
			}
			if err := objects.Update(root, index); err != nil {
				g.logger.Warn("rescan of the served directory failed; serving the previous snapshot", "err", err)
			}
		}
	}
}

// serveThrottle is what serve sends per second: --limit-upload, or the
// hidden --throttle of tests and benchmarks, whichever is lower.
func serveThrottle(throttle, limit int64) int64 {
	switch {
	case throttle <= 0:
		return limit
	case limit <= 0:
		return throttle
	}
	return min(throttle, limit)
}
