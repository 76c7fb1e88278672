package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
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
	includes          []string
	excludes          []string
	filesFrom         []string
	excludeIfPresent  []string
	excludeCaches     bool
	excludeLargerThan sizeValue
	oneFileSystem     bool
	embedBelow        sizeValue
	minDeltaFileSize  sizeValue
	parallel          int
	name              string
	node              string
	tags              []string
	stageDir          string
	noCache           bool
	compression       string
	// Backup only (not watch): hooks and stream input.
	preHook, postHook string
	hookTimeout       time.Duration
	stdin             bool
	stdinFromCommand  bool
	stdinFilename     string
}

// backupSummary is the last line of 'backup --json'.
type backupSummary struct {
	MessageType     string `json:"message_type"`
	Name            string `json:"name"`
	RootHash        string `json:"root_hash"`
	Parent          string `json:"parent,omitempty"`
	Files           int64  `json:"files"`
	Dirs            int64  `json:"dirs"`
	TotalBytes      int64  `json:"total_bytes"`
	HashedFiles     int64  `json:"hashed_files"`
	HashedBytes     int64  `json:"hashed_bytes"`
	CachedFiles     int64  `json:"cached_files"`
	UploadedObjects int64  `json:"uploaded_objects"`
	UploadedBytes   int64  `json:"uploaded_bytes"`
	UploadedContent int64  `json:"uploaded_content_bytes"`
	TreesWritten    int64  `json:"trees_written"`
	TreesReused     int64  `json:"trees_reused"`
	TreesStored     int64  `json:"trees_stored"`
	TreeBytes       int64  `json:"tree_bytes"`
	// Incremental: only the paths a watcher named were examined.
	Incremental     bool               `json:"incremental"`
	Unreadable      []string           `json:"unreadable"`
	Changed         []string           `json:"changed"`
	Skipped         []string           `json:"skipped"`
	Problems        []snapshot.Problem `json:"problems"`
	DurationSeconds float64            `json:"duration_seconds"`
	Requests        map[string]int64   `json:"requests,omitempty"`
}

func newBackupCommand(g *globals) *cobra.Command {
	var f backupFlags
	f.embedBelow = snapshot.DefaultEmbedThreshold
	f.minDeltaFileSize = snapshot.DefaultMinDeltaFileSize
	cmd := &cobra.Command{
		Use:   "backup --repo PATH [flags] SRC",
		Short: "Back up a directory",
		Long: `backup snapshots SRC — contents, owners, modes, extended attributes and
ACLs, hard links, sparse files, FIFOs and device nodes — as a tree of
directory objects, stores in the repository every content and tree it does
not hold yet, then writes a backup record. Files whose status is unchanged
since the last backup of SRC to this repository are not read again, and an
unchanged directory is taken by id (the directory cache).

Files that cannot be read are listed and the backup goes on; the exit code
is then 3. A file that keeps changing while it is read is listed as changed
and left out rather than stored with mixed content.`,
		Args: func(cmd *cobra.Command, args []string) error {
			switch {
			case f.stdin && f.stdinFromCommand:
				return usagef("give --stdin or --stdin-from-command, not both")
			case f.stdinFromCommand && len(args) == 0:
				return usagef("--stdin-from-command needs the command after --, e.g. -- pg_dump mydb")
			case f.stdin && len(args) > 0:
				return usagef("--stdin reads standard input: give no source directory")
			case f.stdin || f.stdinFromCommand:
				return nil
			}
			return exactArgs(1, "one source directory")(cmd, args)
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			start := time.Now()
			ctx := cmd.Context()
			stream := f.stdin || f.stdinFromCommand
			source := upload.StreamSource(f.stdinFilename)
			if !stream {
				source = args[0]
			}
			hookEnv := []string{"DELTABACKUP_REPO=" + g.repo, "DELTABACKUP_SOURCE=" + source}
			var s *backupSummary
			var err error
			if f.preHook != "" {
				err = runHook(ctx, g, "pre-hook", f.preHook, f.hookTimeout, append(hookEnv, "DELTABACKUP_HOOK=pre"))
				if err != nil {
					err = fmt.Errorf("%w; nothing was backed up", err)
				}
			}
			if err == nil {
				if stream {
					s, err = runStreamBackup(cmd, g, &f, args)
				} else {
					s, err = runBackup(cmd, g, &f, source)
				}
			}
			var incomplete incompleteError
			ok := err == nil || errors.As(err, &incomplete)
			if f.postHook != "" {
				env := append(hookEnv, "DELTABACKUP_HOOK=post", "DELTABACKUP_OUTCOME="+hookOutcome(err, ok))
				if s != nil {
					env = append(env, "DELTABACKUP_BACKUP="+s.Name)
				}
				if err != nil {
					env = append(env, "DELTABACKUP_ERROR="+err.Error())
				}
				// The post-hook runs however the backup ended, even when
				// the command is being interrupted.
				if herr := runHook(context.WithoutCancel(ctx), g, "post-hook", f.postHook, f.hookTimeout, env); herr != nil {
					if err == nil {
						err = fmt.Errorf("backup %s is stored, but %w", s.Name, herr)
						ok = false
					} else {
						g.logger.Warn("post-hook failed too", "err", herr)
					}
				}
			}
			g.writeBackupMetrics(backupMetrics{success: ok, duration: time.Since(start), summary: s})
			g.notifyBackup(ctx, source, s, ok, err)
			return err
		},
	}
	addBackupFlags(cmd, &f)
	fl := cmd.Flags()
	fl.StringVar(&f.preHook, "pre-hook", "", "run this shell command first; if it fails, nothing is backed up (env: DELTABACKUP_HOOK=pre, DELTABACKUP_REPO, DELTABACKUP_SOURCE)")
	fl.StringVar(&f.postHook, "post-hook", "", "run this shell command afterwards, however the backup ended (env adds DELTABACKUP_OUTCOME=success|incomplete|failure, DELTABACKUP_BACKUP, DELTABACKUP_ERROR)")
	fl.DurationVar(&f.hookTimeout, "hook-timeout", 10*time.Minute, "stop a hook (and what it started) after this long; a stopped pre-hook fails the backup")
	fl.BoolVar(&f.stdin, "stdin", false, "back up standard input as one file (named by --stdin-filename) instead of a directory")
	fl.BoolVar(&f.stdinFromCommand, "stdin-from-command", false, "back up the output of the command given after -- (e.g. -- pg_dump mydb); if it exits non-zero, no backup is written")
	fl.StringVar(&f.stdinFilename, "stdin-filename", "stdin", "the file name a stream is stored under")
	return cmd
}

// hookOutcome names how a backup ended, for the post-hook.
func hookOutcome(err error, ok bool) string {
	switch {
	case err == nil:
		return "success"
	case ok:
		return "incomplete"
	}
	return "failure"
}

// runStreamBackup backs up standard input, or the output of the command
// in args, as one file.
func runStreamBackup(cmd *cobra.Command, g *globals, f *backupFlags, args []string) (*backupSummary, error) {
	ctx := cmd.Context()
	store, opts, err := prepareBackup(ctx, g, f, "")
	if err != nil {
		return nil, err
	}
	var r io.Reader = cmd.InOrStdin()
	var ready func() error
	if f.stdinFromCommand {
		cctx, cancel := context.WithCancel(ctx)
		defer cancel()
		c := exec.CommandContext(cctx, args[0], args[1:]...)
		c.Stderr = g.stderr
		out, err := c.StdoutPipe()
		if err != nil {
			return nil, err
		}
		if err := c.Start(); err != nil {
			return nil, fmt.Errorf("--stdin-from-command: %w", err)
		}
		r = out
		ready = func() error {
			if err := c.Wait(); err != nil {
				return fmt.Errorf("%s: %v; nothing was backed up", strings.Join(args, " "), err)
			}
			return nil
		}
		// On an early return (the spool failed, say) the command may be
		// blocked writing to a pipe no one reads: it is stopped, then
		// reaped. After ready, this Wait only says it waited already.
		defer func() {
			cancel()
			_ = c.Wait()
		}()
	}
	spool := filepath.Join(g.cacheBase(), "spool")
	if err := os.MkdirAll(spool, 0o700); err != nil {
		return nil, fmt.Errorf("spool directory: %w", err)
	}
	var up upload.Options
	start := time.Now()
	done := g.backupProgress(ctx, f, &opts, &up)
	up.Source = upload.StreamSource(f.stdinFilename)
	sum, err := upload.BackupStream(ctx, store, r, f.stdinFilename, spool, ready, opts, up)
	done()
	if err != nil {
		return nil, err
	}
	return g.reportBackup(sum, time.Since(start))
}

// addBackupFlags registers the flags backup and watch share.
func addBackupFlags(cmd *cobra.Command, f *backupFlags) {
	f.embedBelow = snapshot.DefaultEmbedThreshold
	f.minDeltaFileSize = snapshot.DefaultMinDeltaFileSize
	fl := cmd.Flags()
	fl.StringArrayVar(&f.includes, "include", nil, "doublestar glob of paths to back up, relative to SRC (repeatable; default **); a matching directory includes everything below it")
	fl.StringArrayVar(&f.excludes, "exclude", nil, "doublestar glob of paths to leave out (repeatable); a matching directory is not entered")
	fl.StringArrayVar(&f.filesFrom, "files-from", nil, "back up only the paths listed in this file, one per line, relative to SRC or absolute below it (repeatable; '-' reads standard input; # starts a comment)")
	fl.StringArrayVar(&f.excludeIfPresent, "exclude-if-present", nil, "leave out the contents of directories holding a file of this name (repeatable; the directory and the file are kept)")
	fl.BoolVar(&f.excludeCaches, "exclude-caches", false, "leave out the contents of directories holding a valid CACHEDIR.TAG")
	fl.Var(&f.excludeLargerThan, "exclude-larger-than", "leave out regular files larger than this (listed as skipped)")
	fl.BoolVar(&f.oneFileSystem, "one-file-system", false, "do not descend into other file systems mounted below SRC (mount points are kept, empty)")
	fl.Var(&f.embedBelow, "embed-below", "embed files of at most this size in their directory's tree instead of storing objects (-1: never)")
	fl.Var(&f.minDeltaFileSize, "min-delta-file-size", "store contents smaller than this in packs with other small contents (should_be_bundled)")
	fl.IntVar(&f.parallel, "parallel", snapshot.DefaultParallel(), "directories walked and files hashed and uploaded at once")
	fl.StringVar(&f.name, "name", "", "name of the backup (default: the UTC start time and the node)")
	fl.StringVar(&f.node, "node", "", "name of this machine in the backup (default: the host name)")
	fl.StringArrayVar(&f.tags, "tag", nil, "tag the backup (repeatable), to select it with --tag later")
	fl.StringVar(&f.stageDir, "stage-dir", "", "hard-link files into this directory first and read them from there, so files deleted or replaced during the backup stay readable")
	fl.BoolVar(&f.noCache, "no-cache", false, "read every file, ignoring the directory cache")
	fl.StringVar(&f.compression, "compression", "fast", "fast (S2 for small contents, zstd's fastest level for large), better (zstd's default level), max, or off")
}

func runBackup(cmd *cobra.Command, g *globals, f *backupFlags, src string) (*backupSummary, error) {
	ctx := cmd.Context()
	store, opts, err := prepareBackup(ctx, g, f, src)
	if err != nil {
		return nil, err
	}
	s, _, err := backupOnce(ctx, g, f, store, src, opts, upload.Options{})
	return s, err
}

// prepareBackup checks the flags, opens the repository and returns the
// snapshot options of SRC.
func prepareBackup(ctx context.Context, g *globals, f *backupFlags, src string) (*hashstore.Store, snapshot.Options, error) {
	opts := snapshot.DefaultOptions()
	if f.parallel < 1 {
		return nil, opts, usagef("--parallel must be at least 1")
	}
	if f.name != "" {
		if err := hashstore.ValidateBackupName(f.name); err != nil {
			return nil, opts, usageError{err}
		}
	}
	for _, t := range f.tags {
		if err := hashstore.ValidateTag(t); err != nil {
			return nil, opts, usageError{err}
		}
	}
	compression, err := hashstore.ParseCompression(f.compression)
	if err != nil {
		return nil, opts, usageError{err}
	}
	opts.Includes, opts.Excludes = f.includes, f.excludes
	if len(f.filesFrom) > 0 {
		listed, err := readFilesFrom(g, f.filesFrom, src)
		if err != nil {
			return nil, opts, err
		}
		if len(listed) == 0 {
			return nil, opts, usagef("--files-from lists no path")
		}
		opts.Includes = append(slices.Clip(opts.Includes), listed...)
	}
	opts.ExcludeIfPresent, opts.ExcludeCaches = f.excludeIfPresent, f.excludeCaches
	opts.ExcludeLargerThan, opts.OneFileSystem = int64(f.excludeLargerThan), f.oneFileSystem
	opts.EmbedThreshold = int64(f.embedBelow)
	opts.MinDeltaFileSize = int64(f.minDeltaFileSize)
	opts.Parallel = f.parallel
	opts.Dst = f.stageDir
	opts.Logger = g.logger
	if src != "" {
		if _, err := snapshot.New(src, opts); err != nil {
			return nil, opts, err
		}
	}
	store, err := openStoreAt(ctx, g, g.repo, hashstore.Options{Compression: compression})
	if err != nil {
		return nil, opts, err
	}
	return store, opts, nil
}

// readFilesFrom reads the --files-from lists into include globs that
// match exactly the listed paths.
func readFilesFrom(g *globals, lists []string, src string) ([]string, error) {
	absSrc, err := filepath.Abs(src)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, list := range lists {
		var data []byte
		if list == "-" {
			data, err = io.ReadAll(os.Stdin)
		} else {
			data, err = os.ReadFile(list)
		}
		if err != nil {
			return nil, fmt.Errorf("--files-from: %w", err)
		}
		for n, line := range strings.Split(string(data), "\n") {
			line = strings.TrimRight(line, "\r")
			if line == "" || strings.HasPrefix(line, "#") {
				continue
			}
			p := line
			if filepath.IsAbs(p) {
				rel, err := filepath.Rel(absSrc, filepath.Clean(p))
				if err != nil || rel == ".." || strings.HasPrefix(rel, "../") {
					return nil, usagef("--files-from %s line %d: %s is not below %s", list, n+1, quoteName(line), absSrc)
				}
				p = rel
			}
			p = path.Clean(filepath.ToSlash(p))
			if p == "." {
				out = append(out, "**")
				continue
			}
			if err := snapshot.ValidatePath(p); err != nil {
				return nil, usagef("--files-from %s line %d: %v", list, n+1, err)
			}
			out = append(out, escapeGlob(p))
		}
	}
	return out, nil
}

// escapeGlob quotes glob metacharacters so a literal path matches only
// itself.
func escapeGlob(p string) string {
	var b strings.Builder
	for _, r := range p {
		if strings.ContainsRune(`*?[]{}\\`, r) {
			b.WriteByte('\\')
		}
		b.WriteRune(r)
	}
	return b.String()
}

// backupOnce runs one backup with opts and prints its summary. up holds
// what the flags do not say (none, for the backup command).
func backupOnce(ctx context.Context, g *globals, f *backupFlags, store *hashstore.Store, src string, opts snapshot.Options, up upload.Options) (*backupSummary, *upload.Summary, error) {
	start := time.Now()
	done := g.backupProgress(ctx, f, &opts, &up)
	sum, err := upload.Backup(ctx, store, src, opts, up)
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
	ps, stop := g.showProgress(ctx, "backup")
	opts.Progress = ps[0]
	up.Name, up.Node, up.Tags, up.Logger = f.name, f.node, f.tags, g.logger
	if !f.noCache {
		up.CacheDir = g.cacheBase()
	}
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
	rec, snap := sum.Record, sum.Snapshot
	problems := slices.Concat(snap.Unreadable, snap.Changed, snap.Skipped)
	return backupSummary{
		MessageType:     "summary",
		Name:            rec.Name,
		RootHash:        rec.Root.String(),
		Parent:          rec.Parent,
		Files:           rec.Stats.Files,
		Dirs:            rec.Stats.Dirs,
		TotalBytes:      rec.Stats.TotalBytes,
		HashedFiles:     snap.Stats.HashedFiles,
		HashedBytes:     snap.Stats.HashedBytes,
		CachedFiles:     snap.Stats.CachedFiles,
		UploadedObjects: sum.UploadedObjects,
		UploadedBytes:   sum.UploadedBytes,
		UploadedContent: sum.UploadedContentBytes,
		TreesWritten:    snap.Stats.TreesWritten,
		TreesReused:     snap.Stats.TreesReused,
		TreesStored:     sum.TreesStored,
		TreeBytes:       sum.TreeBytes,
		Incremental:     sum.Incremental,
		Unreadable:      problemPaths(snap.Unreadable),
		Changed:         problemPaths(snap.Changed),
		Skipped:         problemPaths(snap.Skipped),
		Problems:        problems,
		DurationSeconds: d.Seconds(),
	}
}

func printBackupSummary(g *globals, s backupSummary) {
	for _, p := range s.Problems {
		fmt.Fprintf(g.stderr, "  %s\n", quoteProblem(p))
	}
	g.printf("backup %s: %d files in %d directories, %s, root %s\n", s.Name, s.Files, s.Dirs, progress.FormatBytes(s.TotalBytes), s.RootHash)
	g.printf("  read %s from %d files; %d files unchanged since the last backup (not read)\n", progress.FormatBytes(s.HashedBytes), s.HashedFiles, s.CachedFiles)
	g.printf("  stored %d new objects (%s of content in %s) and %d trees (%s); %d directories unchanged\n",
		s.UploadedObjects, progress.FormatBytes(s.UploadedContent), progress.FormatBytes(s.UploadedBytes), s.TreesStored, progress.FormatBytes(s.TreeBytes), s.TreesReused)
	if s.Incremental {
		g.printf("  examined only the paths that changed since backup %s\n", s.Parent)
	}
	if n := len(s.Skipped); n > 0 {
		g.printf("  left out %d entries on purpose (sockets, files over --exclude-larger-than)\n", n)
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
