package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"runtime"
	"sort"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/deltabackup/deltabackup/hashstore"
	"github.com/deltabackup/deltabackup/progress"
	"github.com/deltabackup/deltabackup/snapshot"
	"github.com/deltabackup/deltabackup/upload"
)

type backupFlags struct {
	includes         []string
	excludes         []string
	embedBelow       sizeValue
	minDeltaFileSize sizeValue
	parallel         int
	name             string
	node             string
	stageDir         string
	noCache          bool
	compression      string
	lockWait         time.Duration
}

// backupSummary is the last line of 'backup --json'.
type backupSummary struct {
	MessageType     string `json:"message_type"`
	Name            string `json:"name"`
	RootHash        string `json:"root_hash"`
	Files           int64  `json:"files"`
	TotalBytes      int64  `json:"total_bytes"`
	HashedFiles     int64  `json:"hashed_files"`
	HashedBytes     int64  `json:"hashed_bytes"`
	CachedFiles     int64  `json:"cached_files"`
	Objects         int64  `json:"objects"`
	UploadedObjects int64  `json:"uploaded_objects"`
	UploadedBytes   int64  `json:"uploaded_bytes"`
	UploadedContent int64  `json:"uploaded_content_bytes"`
	PresentObjects  int64  `json:"present_objects"`
	ManifestBytes   int64  `json:"manifest_bytes"`
	// IncrementalManifest: the stored manifest holds only what changed
	// since the previous backup's (watch).
	IncrementalManifest bool               `json:"incremental_manifest"`
	Unreadable          []string           `json:"unreadable"`
	Changed             []string           `json:"changed"`
	Special             []string           `json:"special"`
	Problems            []snapshot.Problem `json:"problems"`
	DurationSeconds     float64            `json:"duration_seconds"`
	Requests            map[string]int64   `json:"requests,omitempty"`
}

func newBackupCommand(g *globals) *cobra.Command {
	var f backupFlags
	f.embedBelow = snapshot.DefaultEmbedThreshold
	f.minDeltaFileSize = snapshot.DefaultMinDeltaFileSize
	cmd := &cobra.Command{
		Use:   "backup --repo PATH [flags] SRC",
		Short: "Back up a directory",
		Long: `backup snapshots SRC and stores in the repository every content it does
not hold yet, then writes a backup record. Files whose size, mtime, ctime
and inode are unchanged since the last backup of SRC to this repository are
not read again (the stat cache).

Files that cannot be read are listed and the backup goes on; the exit code
is then 3. A file that keeps changing while it is read is listed as changed
and left out rather than stored with mixed content.`,
		Args: exactArgs(1, "one source directory"),
		RunE: func(cmd *cobra.Command, args []string) error {
			start := time.Now()
			s, err := runBackup(cmd, g, &f, args[0])
			var incomplete incompleteError
			ok := err == nil || errors.As(err, &incomplete)
			g.writeBackupMetrics(backupMetrics{success: ok, duration: time.Since(start), summary: s})
			g.notifyBackup(cmd.Context(), args[0], s, ok, err)
			return err
		},
	}
	addBackupFlags(cmd, &f)
	return cmd
}

// addBackupFlags registers the flags backup and watch share.
func addBackupFlags(cmd *cobra.Command, f *backupFlags) {
	f.embedBelow = snapshot.DefaultEmbedThreshold
	f.minDeltaFileSize = snapshot.DefaultMinDeltaFileSize
	fl := cmd.Flags()
	fl.StringArrayVar(&f.includes, "include", nil, "doublestar glob of paths to back up, relative to SRC (repeatable; default **); a matching directory includes everything below it")
	fl.StringArrayVar(&f.excludes, "exclude", nil, "doublestar glob of paths to leave out (repeatable); a matching directory is not entered")
	fl.Var(&f.embedBelow, "embed-below", "embed files of at most this size in the manifest instead of storing objects (-1: never)")
	fl.Var(&f.minDeltaFileSize, "min-delta-file-size", "store contents smaller than this in packs with other small contents (should_be_bundled)")
	fl.IntVar(&f.parallel, "parallel", runtime.NumCPU(), "files hashed and objects uploaded at once")
	fl.StringVar(&f.name, "name", "", "name of the backup (default: the UTC start time)")
	fl.StringVar(&f.node, "node", "", "name of this machine in the backup (default: the host name)")
	fl.StringVar(&f.stageDir, "stage-dir", "", "hard-link files into this directory first and read them from there, so files deleted or replaced during the backup stay readable")
	fl.BoolVar(&f.noCache, "no-cache", false, "read every file, ignoring the stat cache")
	fl.DurationVar(&f.lockWait, "lock-wait", 30*time.Minute, "how long to wait while a gc holds the repository")
	fl.StringVar(&f.compression, "compression", "fast", "fast (S2 for small contents, zstd's fastest level for large), better (zstd's default level), max, or off")
}

func runBackup(cmd *cobra.Command, g *globals, f *backupFlags, src string) (*backupSummary, error) {
	ctx := cmd.Context()
	store, opts, err := prepareBackup(ctx, g, f, src)
	if err != nil {
		return nil, err
	}
	s, _, err := backupOnce(ctx, g, f, store, opts, upload.Options{})
	return s, err
}

// prepareBackup checks the flags, opens the repository and the stat cache
// and returns the snapshot options of SRC.
func prepareBackup(ctx context.Context, g *globals, f *backupFlags, src string) (*hashstore.Store, snapshot.Options, error) {
	var opts snapshot.Options
	if f.parallel < 1 {
		return nil, opts, usagef("--parallel must be at least 1")
	}
	if f.name != "" {
		if err := hashstore.ValidateBackupName(f.name); err != nil {
			return nil, opts, usageError{err}
		}
	}
	compression, err := hashstore.ParseCompression(f.compression)
	if err != nil {
		return nil, opts, usageError{err}
	}
	store, err := openStoreAt(ctx, g, g.repo, hashstore.Options{Compression: compression})
	if err != nil {
		return nil, opts, err
	}
	opts = snapshot.DefaultOptions(src)
	opts.Includes, opts.Excludes = f.includes, f.excludes
	opts.EmbedThreshold = int64(f.embedBelow)
	opts.MinDeltaFileSize = int64(f.minDeltaFileSize)
	opts.Parallel = f.parallel
	opts.Dst = f.stageDir
	opts.Logger = g.logger
	opts.Node = f.node
	if opts.Node == "" {
		opts.Node, _ = os.Hostname()
	}
	checked, err := snapshot.New(opts)
	if err != nil {
		return nil, opts, err
	}
	opts.Src = checked.Src()
	if !f.noCache {
		if path := g.statCachePath(store.Config().ID, checked.Src()); path != "" {
			start := time.Now()
			cache, err := snapshot.OpenStatCache(path)
			g.logger.Debug("loaded stat cache", "seconds", time.Since(start).Seconds())
			if err != nil {
				g.logger.Warn("stat cache unusable", "err", err)
			}
			opts.Cache = cache
		}
	}
	return store, opts, nil
}

// backupOnce runs one backup with opts and prints its summary. up holds
// what the flags do not say (none, for the backup command).
func backupOnce(ctx context.Context, g *globals, f *backupFlags, store *hashstore.Store, opts snapshot.Options, up upload.Options) (*backupSummary, *upload.Summary, error) {
	start := time.Now()
	done := g.backupProgress(ctx, f, &opts, &up)
	sum, err := upload.Backup(ctx, store, opts, up)
	done()
	if err != nil {
		return nil, nil, err
	}
	s, err := g.reportBackup(sum, time.Since(start))
	return s, sum, err
}

// backupProgress fills in what the flags say of one backup run and shows
// its progress; call the function it returns when the run ends.
func (g *globals) backupProgress(ctx context.Context, f *backupFlags, opts *snapshot.Options, up *upload.Options) func() {
	ps, stop := g.showProgress(ctx, "hash", "upload")
	opts.Progress = ps[0]
	up.Name, up.Parallel, up.Progress, up.Logger, up.LockWait = f.name, f.parallel, ps[1], g.logger, f.lockWait
	return stop
}

// reportBackup prints the summary of a finished backup; the error says
// when some files are not in it (exit code 3).
func (g *globals) reportBackup(sum *upload.Summary, d time.Duration) (*backupSummary, error) {
	s := summarize(sum, d)
	s.Requests = g.requests()
	if g.json {
		if err := g.printJSON(s); err != nil {
			return &s, err
		}
	} else {
		printBackupSummary(g, s)
	}
	if sum.Incomplete() {
		return &s, incompleteError{fmt.Sprintf("backup %s is complete except for %d files that could not be read or kept changing (listed above)",
			s.Name, len(s.Unreadable)+len(s.Changed))}
	}
	return &s, nil
}

func summarize(sum *upload.Summary, d time.Duration) backupSummary {
	rec := sum.Upload.Record
	problems := append(append([]snapshot.Problem{}, sum.Snapshot.Unreadable...), sum.Changed()...)
	problems = append(problems, sum.Snapshot.Special...)
	return backupSummary{
		MessageType:     "summary",
		Name:            rec.Name,
		RootHash:        rec.Root.String(),
		Files:           rec.Stats.Files,
		TotalBytes:      rec.Stats.TotalBytes,
		HashedFiles:     sum.Snapshot.HashedFiles,
		HashedBytes:     sum.Snapshot.HashedBytes,
		CachedFiles:     sum.Snapshot.CachedFiles,
		Objects:         rec.Stats.Objects,
		UploadedObjects: sum.Upload.UploadedObjects,
		UploadedBytes:   sum.Upload.UploadedBytes,
		UploadedContent: sum.Upload.UploadedContentBytes,
		PresentObjects:  sum.Upload.PresentObjects,
		ManifestBytes:   sum.Upload.ManifestBytes,

		IncrementalManifest: sum.Upload.Incremental,
		Unreadable:          problemPaths(sum.Snapshot.Unreadable),
		Changed:             problemPaths(sum.Changed()),
		Special:             problemPaths(sum.Snapshot.Special),
		Problems:            problems,
		DurationSeconds:     d.Seconds(),
	}
}

func printBackupSummary(g *globals, s backupSummary) {
	for _, p := range s.Problems {
		fmt.Fprintf(g.stderr, "  %s\n", quoteProblem(p))
	}
	g.printf("backup %s: %d files, %s, root %s\n", s.Name, s.Files, progress.FormatBytes(s.TotalBytes), s.RootHash)
	g.printf("  read %s from %d files; %d files unchanged since the last backup (not read)\n", progress.FormatBytes(s.HashedBytes), s.HashedFiles, s.CachedFiles)
	g.printf("  stored %d new objects (%s of content in %s); %d already in the repository\n",
		s.UploadedObjects, progress.FormatBytes(s.UploadedContent), progress.FormatBytes(s.UploadedBytes), s.PresentObjects)
	if s.IncrementalManifest {
		g.printf("  manifest: %s, only what changed since the previous backup\n", progress.FormatBytes(s.ManifestBytes))
	}
	if n := len(s.Special); n > 0 {
		g.printf("  skipped %d special files (sockets, devices, FIFOs)\n", n)
	}
	g.printf("  took %.1fs\n", s.DurationSeconds)
	printRequests(g, s.Requests)
}

// printRequests shows S3 requests by operation with -v.
func printRequests(g *globals, requests map[string]int64) {
	if g.verbose == 0 || requests == nil {
		return
	}
	ops := make([]string, 0, len(requests))
	for op := range requests {
		ops = append(ops, op)
	}
	sort.Strings(ops)
	parts := make([]string, len(ops))
	for i, op := range ops {
		parts[i] = fmt.Sprintf("%s %d", op, requests[op])
	}
	g.printf("  S3 requests: %d (%s)\n", requestTotal(requests), strings.Join(parts, ", "))
}
