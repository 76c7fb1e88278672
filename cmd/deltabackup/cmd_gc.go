package main

import (
	"context"
	"time"

	"github.com/spf13/cobra"

	"github.com/deltabackup/deltabackup/hashstore"
	"github.com/deltabackup/deltabackup/progress"
	"github.com/deltabackup/deltabackup/upload"
)

type gcSummary struct {
	MessageType string `json:"message_type"`
	*hashstore.GCReport
	DurationSeconds float64          `json:"duration_seconds"`
	Requests        map[string]int64 `json:"requests,omitempty"`
}

func newGCCommand(g *globals) *cobra.Command {
	var opts hashstore.GCOptions
	cmd := &cobra.Command{
		Use:   "gc --repo URL [--dry-run] [--repack-below F] [--lock-wait D]",
		Short: "Delete the data no backup references and repack mostly dead packs, beside running backups",
		Long: `gc deletes loose objects and packs no backup record references, and
rewrites packs whose live share is below --repack-below with only their live
objects. It runs beside backups, which never wait for it, in two phases:

  mark   it copies the live objects of mostly dead packs into new packs and
         writes a pending deletion (gc/pending/) naming what no record
         references and the backups running now; backups that start later
         store such data again rather than rely on it;
  sweep  once every backup a mark names has ended (here or in a later gc),
         it reads every record again and deletes what the mark named and
         still no record references.

With no backup running, one gc does both. A lock whose holder stopped
refreshing it for 30 minutes, or whose process on this host is gone, is
stale: removed, and not waited for. Only one gc runs at a time (--lock-wait
waits for another). New packs and index files are written before old ones
are deleted, so an interrupted gc leaves a consistent repository and the
next gc finishes the work.`,
		Args: exactArgs(0, "no arguments"),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			start := time.Now()
			if opts.RepackBelow < 0 || opts.RepackBelow >= 1 {
				return usagef("--repack-below must be from 0 (never repack) to below 1")
			}
			if opts.RepackBelow == 0 {
				opts.RepackBelow = -1
			}
			store, err := openStore(ctx, g)
			if err != nil {
				return err
			}
			rep, err := collect(ctx, g, store, opts)
			if err != nil {
				return err
			}
			s := gcSummary{MessageType: "summary", GCReport: rep, DurationSeconds: time.Since(start).Seconds(), Requests: g.requests()}
			if g.json {
				return g.printJSON(s)
			}
			printGC(g, rep, s.DurationSeconds)
			printRequests(g, s.Requests)
			return nil
		},
	}
	fl := cmd.Flags()
	fl.BoolVar(&opts.DryRun, "dry-run", false, "report what would be deleted and repacked, change nothing")
	fl.Float64Var(&opts.RepackBelow, "repack-below", hashstore.DefaultRepackBelow, "repack packs whose live share is below this (0: never)")
	fl.DurationVar(&opts.LockWait, "lock-wait", 0, "how long to wait for another gc before giving up")
	return cmd
}

// collect runs gc on store and announces what it deleted.
func collect(ctx context.Context, g *globals, store *hashstore.Store, opts hashstore.GCOptions) (*hashstore.GCReport, error) {
	opts.Referrer = upload.Referrer{Store: store}
	rep, err := store.GC(ctx, opts)
	if err != nil {
		return nil, err
	}
	g.notify(ctx, "objects_deleted", map[string]any{"objects": rep.DeletedObjects, "packs": rep.DeletedPacks, "bytes": rep.DeletedBytes, "dry_run": rep.DryRun})
	return rep, nil
}

func printGC(g *globals, rep *hashstore.GCReport, seconds float64) {
	verb := "deleted"
	if rep.DryRun {
		verb = "would delete (dry run)"
	}
	g.printf("%d backups reference %d objects; %s %d objects and %d packs, repacked %d packs (%d objects, %s), freeing %s in %.1fs\n",
		rep.Backups, rep.LiveObjects, verb, rep.DeletedObjects, rep.DeletedPacks, rep.RepackedPacks, rep.RepackedObjects,
		progress.FormatBytes(rep.RepackedBytes), progress.FormatBytes(rep.DeletedBytes), seconds)
	if rep.MarkedObjects+rep.MarkedPacks > 0 || rep.PendingMarks > 0 {
		g.printf("marked %d objects and %d packs for deletion; %d marks wait for running backups to end\n",
			rep.MarkedObjects, rep.MarkedPacks, rep.PendingMarks)
		for _, w := range rep.WaitingFor {
			g.printf("  waiting for the %s\n", w)
		}
	}
	if rep.KeptLive > 0 {
		g.printf("kept %d marked packs and objects: backups written since the mark reference them\n", rep.KeptLive)
	}
	if rep.Deferred > 0 {
		g.printf("left %d marked objects to a later gc: a running backup stores them again\n", rep.Deferred)
	}
	if rep.Retained > 0 {
		g.printf("left %d packs, index files and objects alone: under object lock until %s at the latest\n", rep.Retained, rep.RetainedUntil.Local().Format(time.DateTime))
	}
}
