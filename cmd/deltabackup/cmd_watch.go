package main

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"time"

	"github.com/spf13/cobra"

	"github.com/deltabackup/deltabackup/hashstore"
	"github.com/deltabackup/deltabackup/snapshot"
	"github.com/deltabackup/deltabackup/snapshot/watch"
	"github.com/deltabackup/deltabackup/upload"
)

func newWatchCommand(g *globals) *cobra.Command {
	var f backupFlags
	var every time.Duration
	var at string
	cmd := &cobra.Command{
		Use:   "watch --repo URL (--every DURATION | --at HH:MM) [flags] SRC",
		Short: "Watch a directory and back it up on a schedule, re-examining only what changed",
		Long: `watch keeps running: it watches SRC and every directory below it with
inotify, records which paths change, and at each scheduled time backs up
SRC looking only at those paths (and the directories above them); the rest
of the tree is taken from the previous backup of this process, so a large
tree is not scanned every time.

When the watcher cannot vouch for its list it says why in the log and the
backup scans the whole tree: at start (changes made while nothing watched
are unknown), after the kernel's event queue overflowed, when the inotify
watch limit (fs.inotify.max_user_watches) is reached, and after an error.
Files a backup could not read are looked at again by the next one, and a
backup that fails hands all its paths to the next.

SIGINT or SIGTERM stops it; a backup under way is abandoned and leaves no
record. Each backup prints the same summary, metrics and notifications as
'backup'; --json adds {"message_type":"watch"} event lines.`,
		Args: exactArgs(1, "one source directory"),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			if (every > 0) == (at != "") {
				return usagef("watch needs one of --every DURATION or --at HH:MM")
			}
			var atTime time.Time
			if at != "" {
				t, err := time.Parse("15:04", at)
				if err != nil {
					return usagef("--at %q: want HH:MM (24-hour, local time)", at)
				}
				atTime = t
			}
			if f.name != "" {
				return usagef("watch names each backup by its start time; --name is for single backups")
			}
			store, opts, err := prepareBackup(ctx, g, &f, args[0])
			if err != nil {
				return err
			}
			w, err := watch.New(opts.Src, watch.Options{Excludes: opts.Excludes, Logger: g.logger})
			if err != nil {
				return err
			}
			defer w.Close()
			g.watchEvent("started", map[string]any{"source": opts.Src, "watched_directories": w.Watched()})
			var base *snapshot.Manifest
			var baseRec *hashstore.BackupRecord
			var baseKey string // a checkpoint of base, when one is stored
			// Saving the stat cache costs time in proportion to the whole
			// tree, so backups of changed paths keep it in memory; it is
			// saved by full scans, at least hourly, and on the way out.
			lastCacheSave, cacheUnsaved := time.Now(), false
			defer func() {
				if cacheUnsaved {
					if err := opts.Cache.Save(); err != nil {
						g.logger.Warn("stat cache not saved; the next start reads every file again", "err", err)
					}
				}
			}()
			for {
				next := nextRun(time.Now(), every, atTime)
				g.logger.Info("next backup", "at", next.Format(time.DateTime))
				g.watchEvent("scheduled", map[string]any{"next": next})
				select {
				case <-ctx.Done():
					g.watchEvent("stopped", nil)
					return nil
				case <-time.After(time.Until(next)):
				}
				dirty, full := w.Take()
				o, up := opts, upload.Options{}
				if full == "" && base != nil {
					up.Base, up.BaseManifestKey = baseRec, baseKey
					o.Base, o.Dirty = base, dirty
					g.logger.Info("backup of the changed paths", "paths", len(dirty))
				} else {
					if full == "" {
						full = "no earlier backup in this process"
					}
					g.logger.Info("backup with a full scan", "reason", full)
				}
				g.watchEvent("backup", map[string]any{"full_scan": o.Base == nil, "reason": full, "dirty_paths": len(dirty)})
				start := time.Now()
				keepCache := o.Base != nil && opts.Cache != nil && time.Since(lastCacheSave) < cacheSaveInterval
				up.KeepStatCacheInMemory = keepCache
				s, sum, err := backupOnce(ctx, g, &f, store, o, up)
				if opts.Cache != nil {
					if keepCache {
						cacheUnsaved = true
					} else if err == nil || errors.As(err, new(incompleteError)) {
						lastCacheSave, cacheUnsaved = time.Now(), false
					}
				}
				var incomplete incompleteError
				ok := err == nil || errors.As(err, &incomplete)
				g.writeBackupMetrics(backupMetrics{success: ok, duration: time.Since(start), summary: s})
				switch {
				case ctx.Err() != nil:
					g.watchEvent("stopped", map[string]any{"abandoned_backup": true})
					return nil
				case !ok:
					g.logger.Error("backup failed; its paths go to the next one", "err", err)
					g.notifyBackup(ctx, opts.Src, s, false, err)
					w.Requeue(dirty, full)
					if o.Base == nil {
						w.Requeue(nil, "the last full scan failed")
					}
					continue
				}
				g.notifyBackup(ctx, opts.Src, s, true, nil)
				base, baseRec, baseKey = sum.Snapshot.Manifest, &sum.Upload.Record, ""
				if base.ChainDepth >= checkpointDepth {
					baseKey = g.checkpoint(ctx, store, base, f.lockWait)
				}
				// Collect garbage now, while idle, rather than during the
				// next backup: at a million files the heap is over a GB and
				// marking it would slow that backup down.
				runtime.GC()
				var again []string
				for _, p := range append(append(sum.Snapshot.Unreadable, sum.Changed()...), sum.Snapshot.Special...) {
					again = append(again, p.Path)
				}
				w.Requeue(again, "")
			}
		},
	}
	addBackupFlags(cmd, &f)
	cmd.Flags().DurationVar(&every, "every", 0, "back up at this interval (e.g. 1h)")
	cmd.Flags().StringVar(&at, "at", "", "back up every day at this local time (HH:MM)")
	return cmd
}

// checkpointDepth is the chain depth of incremental manifests at which
// watch stores the whole manifest while idle, so that later ones build on
// it: chains stay short for readers, and no scheduled backup has to store
// the whole manifest itself (upload.DefaultMaxChainDepth).
const checkpointDepth = 8

// checkpoint stores m as a whole manifest for the next backups to build on
// and returns its hexdigest, or "" when it could not be stored (the next
// backup then builds on the last backup's manifest).
func (g *globals) checkpoint(ctx context.Context, store *hashstore.Store, m *snapshot.Manifest, lockWait time.Duration) string {
	start := time.Now()
	key, size, err := upload.StoreManifest(ctx, store, m, upload.Options{LockWait: lockWait})
	if err != nil {
		g.logger.Warn("checkpoint manifest not stored; the next backup builds on the last one", "err", err)
		return ""
	}
	g.logger.Info("stored a checkpoint manifest", "manifest", key, "bytes", size, "seconds", time.Since(start).Seconds())
	g.watchEvent("checkpoint", map[string]any{"manifest": key, "manifest_bytes": size, "seconds": time.Since(start).Seconds()})
	return key
}

// cacheSaveInterval is how often watch writes its stat cache to disk at
// least; between saves, a crash only costs the next start re-reading the
// files changed since the last save.
const cacheSaveInterval = time.Hour

// nextRun is the next scheduled time after now.
func nextRun(now time.Time, every time.Duration, at time.Time) time.Time {
	if every > 0 {
		return now.Add(every)
	}
	next := time.Date(now.Year(), now.Month(), now.Day(), at.Hour(), at.Minute(), 0, 0, now.Location())
	if !next.After(now) {
		next = next.AddDate(0, 0, 1)
	}
	return next
}

// watchEvent prints a {"message_type":"watch"} line with --json.
func (g *globals) watchEvent(event string, fields map[string]any) {
	if !g.json {
		return
	}
	line := map[string]any{"message_type": "watch", "event": event, "time": time.Now().UTC()}
	for k, v := range fields {
		line[k] = v
	}
	if err := g.printJSON(line); err != nil {
		g.logger.Warn("cannot print", "err", fmt.Sprint(err))
	}
}
