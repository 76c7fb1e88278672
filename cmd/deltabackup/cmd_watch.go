package main

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

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
of the tree is taken from the previous backup of this process by id, and
only the trees of the changed directories and those above them are
written, so a large tree is not scanned every time.

When the watcher cannot vouch for its list it says why in the log and the
backup scans the whole tree (with the directory cache, reading only files
whose status changed): at start (changes made while nothing watched are
unknown), after the kernel's event queue overflowed, when the inotify
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
			src, err := filepath.Abs(args[0])
			if err != nil {
				return err
			}
			w, err := watch.New(src, watch.Options{Excludes: opts.Excludes, Logger: g.logger})
			if err != nil {
				return err
			}
			defer w.Close()
			g.watchEvent("started", map[string]any{"source": src, "watched_directories": w.Watched()})
			watcher := upload.NewWatcher(store, upload.WatchOptions{
				Src:      src,
				Snapshot: opts,
				Upload:   upload.Options{Logger: g.logger},
				Changes:  w,
				Prepare: func(snap *snapshot.Options, up *upload.Options) func() {
					return g.backupProgress(ctx, &f, snap, up)
				},
				OnEvent: func(e upload.WatchEvent) { g.onWatchEvent(ctx, e, src) },
			})
			return watcher.Run(ctx, func(now time.Time) time.Time { return nextRun(now, every, atTime) })
		},
	}
	addBackupFlags(cmd, &f)
	cmd.Flags().DurationVar(&every, "every", 0, "back up at this interval (e.g. 1h)")
	cmd.Flags().StringVar(&at, "at", "", "back up every day at this local time (HH:MM)")
	return cmd
}

// onWatchEvent prints what the watcher did, and each backup's summary,
// metrics and notification as the backup command does.
func (g *globals) onWatchEvent(ctx context.Context, e upload.WatchEvent, src string) {
	switch e.Kind {
	case "scheduled":
		g.logger.Info("next backup", "at", e.Next.Format(time.DateTime))
		g.watchEvent("scheduled", map[string]any{"next": e.Next})
	case "backup":
		g.watchEvent("backup", map[string]any{"full_scan": e.FullScan, "reason": e.Reason, "dirty_paths": e.DirtyPaths})
	case "stopped":
		fields := map[string]any{}
		if e.Abandoned {
			fields["abandoned_backup"] = true
		}
		g.watchEvent("stopped", fields)
	case "done":
		var s *backupSummary
		err := e.Err
		if err == nil {
			s, err = g.reportBackup(e.Summary, e.Duration)
		}
		ok := err == nil || errors.As(err, new(incompleteError))
		g.writeBackupMetrics(backupMetrics{success: ok, duration: e.Duration, summary: s})
		if ctx.Err() == nil { // an abandoned backup did not fail
			g.notifyBackup(ctx, src, s, ok, err)
		}
	}
}

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
