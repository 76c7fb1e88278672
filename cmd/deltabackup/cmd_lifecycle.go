package main

import (
	"fmt"
	"slices"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/deltabackup/deltabackup/hashstore"
	"github.com/deltabackup/deltabackup/progress"
	"github.com/deltabackup/deltabackup/restore"
	"github.com/deltabackup/deltabackup/snapshot"
)

type forgetSummary struct {
	MessageType string                        `json:"message_type"`
	DryRun      bool                          `json:"dry_run"`
	Decisions   []hashstore.RetentionDecision `json:"decisions"`
	Removed     []string                      `json:"removed"`
}

func newForgetCommand(g *globals) *cobra.Command {
	var policy hashstore.RetentionPolicy
	var sel selection
	var dryRun bool
	cmd := &cobra.Command{
		Use:   "forget --repo URL --keep-last N [--keep-daily N] [--keep-weekly N] [--keep-monthly N] [--node NAME] [--dry-run]",
		Short: "Remove backup records by a retention policy (their data goes with the next gc)",
		Long: `forget keeps, for each node and source, the --keep-last newest backups
and the newest backup of each of the --keep-daily, --keep-weekly (ISO weeks)
and --keep-monthly most recent days, weeks and months that have backups (in
local time), and removes the records of the others. It prints every backup
with what keeps it. Objects are deleted by 'deltabackup gc'.`,
		Args: exactArgs(0, "no arguments"),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			if policy.Empty() {
				return usagef("forget needs a policy: at least one of --keep-last, --keep-daily, --keep-weekly, --keep-monthly")
			}
			store, err := openStore(ctx, g)
			if err != nil {
				return err
			}
			records, err := store.Backups(ctx)
			if err != nil {
				return err
			}
			groups := map[string][]hashstore.BackupRecord{}
			var order []string
			for _, r := range records {
				if !sel.filter().Match(r) {
					continue
				}
				k := hashstore.RetentionGroup(r)
				if groups[k] == nil {
					order = append(order, k)
				}
				groups[k] = append(groups[k], r)
			}
			sort.Strings(order)
			s := forgetSummary{MessageType: "summary", DryRun: dryRun, Decisions: []hashstore.RetentionDecision{}, Removed: []string{}}
			for _, k := range order {
				decisions := hashstore.ApplyRetention(groups[k], policy)
				s.Decisions = append(s.Decisions, decisions...)
				if !g.json {
					node, src, _ := strings.Cut(k, "\x00")
					g.printf("node %s, source %s:\n", node, src)
					w := tabwriter.NewWriter(g.stdout, 0, 4, 2, ' ', 0)
					for _, d := range decisions {
						verdict := "remove"
						if d.Keep {
							verdict = "keep"
						}
						fmt.Fprintf(w, "  %s\t%s\t%s\t%s\n", verdict, d.Record.Name, d.Record.End.Local().Format(time.DateTime), strings.Join(d.Reasons, ", "))
					}
					w.Flush()
				}
				for _, d := range decisions {
					if d.Keep {
						continue
					}
					if !dryRun {
						if err := store.DeleteBackup(ctx, d.Record.Name); err != nil {
							return err
						}
					}
					s.Removed = append(s.Removed, d.Record.Name)
				}
			}
			if g.json {
				return g.printJSON(s)
			}
			what := "removed"
			if dryRun {
				what = "would remove (dry run)"
			}
			g.printf("%s %d backups; run 'deltabackup gc' to delete the data only they used\n", what, len(s.Removed))
			return nil
		},
	}
	fl := cmd.Flags()
	fl.IntVar(&policy.Last, "keep-last", 0, "keep the N newest backups")
	fl.IntVar(&policy.Daily, "keep-daily", 0, "keep the newest backup of each of the N most recent days with backups")
	fl.IntVar(&policy.Weekly, "keep-weekly", 0, "keep the newest backup of each of the N most recent ISO weeks with backups")
	fl.IntVar(&policy.Monthly, "keep-monthly", 0, "keep the newest backup of each of the N most recent months with backups")
	addSelectionFlags(fl, &sel, false)
	fl.BoolVar(&dryRun, "dry-run", false, "print what would be removed, remove nothing")
	return cmd
}

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
		Short: "Delete the data no backup references and repack mostly dead packs",
		Long: `gc deletes loose objects and packs no backup record references, and
rewrites packs whose live share is below --repack-below with only their live
objects. It takes the repository's exclusive lock, so it never runs beside a
backup (it waits --lock-wait for running ones, then gives up naming them);
a lock whose holder stopped refreshing it for 30 minutes, or whose process
on this host is gone, is stale and removed. New packs and index files are
written before old ones are deleted, so an interrupted gc leaves a
consistent repository and the next gc finishes the work.`,
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
			rep, err := store.GC(ctx, opts)
			if err != nil {
				return err
			}
			s := gcSummary{MessageType: "summary", GCReport: rep, DurationSeconds: time.Since(start).Seconds(), Requests: g.requests()}
			g.notify(ctx, "objects_deleted", map[string]any{"objects": rep.DeletedObjects, "packs": rep.DeletedPacks, "bytes": rep.DeletedBytes, "dry_run": rep.DryRun})
			if g.json {
				return g.printJSON(s)
			}
			verb := "deleted"
			if rep.DryRun {
				verb = "would delete (dry run)"
			}
			g.printf("%d backups reference %d objects; %s %d objects and %d packs, repacked %d packs (%d objects, %s), freeing %s in %.1fs\n",
				rep.Backups, rep.LiveObjects, verb, rep.DeletedObjects, rep.DeletedPacks, rep.RepackedPacks, rep.RepackedObjects,
				progress.FormatBytes(rep.RepackedBytes), progress.FormatBytes(rep.DeletedBytes), s.DurationSeconds)
			printRequests(g, s.Requests)
			return nil
		},
	}
	fl := cmd.Flags()
	fl.BoolVar(&opts.DryRun, "dry-run", false, "report what would be deleted and repacked, change nothing")
	fl.Float64Var(&opts.RepackBelow, "repack-below", hashstore.DefaultRepackBelow, "repack packs whose live share is below this (0: never)")
	fl.DurationVar(&opts.LockWait, "lock-wait", 0, "how long to wait for running backups before giving up")
	return cmd
}

type diffSummary struct {
	MessageType string `json:"message_type"`
	From        string `json:"from"`
	To          string `json:"to"`
	snapshot.Diff
}

func newDiffCommand(g *globals) *cobra.Command {
	var sel selection
	cmd := &cobra.Command{
		Use:   "diff --repo URL A B",
		Short: "Show the files added, removed and changed from backup A to backup B",
		Args:  exactArgs(2, "two backup names (or 'latest')"),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			store, err := openStore(ctx, g)
			if err != nil {
				return err
			}
			filter, err := sel.latest()
			if err != nil {
				return err
			}
			ra, a, err := restore.LoadManifest(ctx, store, args[0], filter)
			if err != nil {
				return err
			}
			rb, b, err := restore.LoadManifest(ctx, store, args[1], filter)
			if err != nil {
				return err
			}
			d := snapshot.Compare(a, b)
			if g.json {
				return g.printJSON(diffSummary{MessageType: "summary", From: ra.Name, To: rb.Name, Diff: d})
			}
			for _, c := range d.Added {
				g.printf("+ %s\n", quoteName(c.Path))
			}
			for _, c := range d.Removed {
				g.printf("- %s\n", quoteName(c.Path))
			}
			for _, c := range d.Changed {
				g.printf("M %s (%s)\n", quoteName(c.Path), strings.Join(c.What, ", "))
			}
			g.printf("%s → %s: %d added (%s), %d removed (%s), %d changed; %s of new content\n", ra.Name, rb.Name,
				len(d.Added), progress.FormatBytes(d.AddedBytes), len(d.Removed), progress.FormatBytes(d.RemovedBytes),
				len(d.Changed), progress.FormatBytes(d.NewContentBytes))
			return nil
		},
	}
	addSelectionFlags(cmd.Flags(), &sel, true)
	return cmd
}

type statsSummary struct {
	MessageType string `json:"message_type"`
	*hashstore.RepoStats
}

func newStatsCommand(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:     "stats --repo URL",
		Aliases: []string{"info"},
		Short:   "Show repository size, objects, packs, deduplication and each backup's unique bytes",
		Args:    exactArgs(0, "no arguments"),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			store, err := openStore(ctx, g)
			if err != nil {
				return err
			}
			st, err := store.Stats(ctx)
			if err != nil {
				return err
			}
			if g.json {
				return g.printJSON(statsSummary{MessageType: "summary", RepoStats: st})
			}
			g.printf("repository %s (id %s)\n", store, store.Config().ID)
			g.printf("  stored:       %s in all\n", progress.FormatBytes(st.StoredBytes))
			g.printf("  objects:      %d loose (%s), %d in %d packs (%s), %d index files\n", st.LooseObjects, progress.FormatBytes(st.LooseBytes),
				st.PackedObjects, st.Packs, progress.FormatBytes(st.PackBytes), st.IndexFiles)
			g.printf("  backups:      %d, %s of files in all, %s of distinct contents\n", st.Backups, progress.FormatBytes(st.LogicalBytes), progress.FormatBytes(st.ContentBytes))
			g.printf("  dedup ratio:  %.2f (files backed up / data stored)\n", st.DedupRatio)
			w := tabwriter.NewWriter(g.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(w, "  BACKUP\tFILES\tSIZE\tUNIQUE")
			for _, b := range st.PerBackup {
				fmt.Fprintf(w, "  %s\t%d\t%s\t%s\n", b.Name, b.Files, progress.FormatBytes(b.TotalBytes), progress.FormatBytes(b.UniqueBytes))
			}
			return w.Flush()
		},
	}
}

type copySummary struct {
	MessageType string `json:"message_type"`
	From        string `json:"from"`
	To          string `json:"to"`
	*hashstore.CopyReport
	DurationSeconds float64          `json:"duration_seconds"`
	Requests        map[string]int64 `json:"requests,omitempty"`
}

func newCopyCommand(g *globals) *cobra.Command {
	var from, to string
	var lockWait time.Duration
	var sel selection
	cmd := &cobra.Command{
		Use:   "copy --from URL --to URL [BACKUP...]",
		Short: "Copy backups between repositories, storing only the objects the target lacks",
		Long: `copy copies the named backups (all when none is named) from one
repository to another, say from a local repository to S3: objects the target
already holds are not read; the others are read, verified, stored, and the
backup records written last under their names. A backup already in the
target is skipped; a different backup under the same name is an error.`,
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			start := time.Now()
			if from == "" || to == "" {
				return usagef("copy needs --from and --to")
			}
			filter := sel.filter()
			if slices.Contains(args, hashstore.LatestBackup) {
				var err error
				if filter, err = sel.latest(); err != nil {
					return err
				}
			}
			src, err := openStoreAt(ctx, g, from)
			if err != nil {
				return fmt.Errorf("--from: %w", err)
			}
			dst, err := openStoreAt(ctx, g, to)
			if err != nil {
				return fmt.Errorf("--to: %w", err)
			}
			ps, stopProgress := g.showProgress(ctx, "copy")
			rep, err := hashstore.Copy(ctx, src, dst, hashstore.CopyOptions{
				Backups: args, LockWait: lockWait, Filter: filter,
				Planned: func(objects int, bytes int64) { ps[0].AddTotal(int64(objects)); ps[0].AddTotalBytes(bytes) },
				Copied:  func(n int64) { ps[0].AddBytes(n); ps[0].AddSuccess(1) },
			})
			ps[0].Done()
			stopProgress()
			if err != nil {
				return err
			}
			s := copySummary{MessageType: "summary", From: src.String(), To: dst.String(), CopyReport: rep, DurationSeconds: time.Since(start).Seconds(), Requests: g.requests()}
			if g.json {
				return g.printJSON(s)
			}
			g.printf("copied %d backups (%s), %d already there; %d objects (%s) stored, %d already present\n", len(rep.Copied),
				strings.Join(rep.Copied, ", "), len(rep.Present), rep.Objects, progress.FormatBytes(rep.Bytes), rep.PresentObjects)
			printRequests(g, s.Requests)
			return nil
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&from, "from", "", "repository to copy from")
	fl.StringVar(&to, "to", "", "repository to copy to (initialised with 'deltabackup init')")
	fl.DurationVar(&lockWait, "lock-wait", 0, "how long to wait for a gc of the target")
	addSelectionFlags(fl, &sel, true)
	return cmd
}
