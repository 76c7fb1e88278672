package main

import (
	"fmt"
	"slices"
	"time"

	"github.com/spf13/cobra"

	"github.com/deltabackup/deltabackup/hashstore"
	"github.com/deltabackup/deltabackup/progress"
	"github.com/deltabackup/deltabackup/upload"
)

type verifySummary struct {
	MessageType     string  `json:"message_type"`
	ReadData        bool    `json:"read_data"`
	DurationSeconds float64 `json:"duration_seconds"`
	*hashstore.VerifyReport
	Requests map[string]int64 `json:"requests,omitempty"`
}

func newVerifyCommand(g *globals) *cobra.Command {
	var readData bool
	var subset string
	var parallel int
	var sel selection
	cmd := &cobra.Command{
		Use:   "verify --repo URL [--read-data | --read-data-subset N/M | --read-data-subset P%] [BACKUP...]",
		Short: "Check that backups are complete, and with --read-data intact",
		Long: `verify checks that every backup record (or the named ones) decodes, and
that its manifest and every object the manifest references are stored:
objects are looked up in batches (a listing or one HEAD each, whichever
costs fewer requests) and packs are listed once. With --read-data every
referenced object is also read, decoded and hashed against its key.
--read-data-subset reads only part of them, whole packs at a time: N/M is
the N-th of M parts that together are everything (run 1/7 to 7/7 on seven
nights to read the whole repository once a week), P% a random P percent.

Every missing or corrupt object is named with the files that use it
(backup:path). The exit code is 1 when anything is wrong, 0 otherwise.`,
		RunE: func(cmd *cobra.Command, args []string) (err error) {
			ctx := cmd.Context()
			start := time.Now()
			if parallel < 1 {
				return usagef("--parallel must be at least 1")
			}
			var sub hashstore.Subset
			if subset != "" {
				if sub, err = hashstore.ParseSubset(subset); err != nil {
					return usagef("--read-data-subset: %v", err)
				}
				readData = true
			}
			// No cache: the objects it remembers would answer for the
			// storage, and verify asks the storage itself.
			store, err := openStoreCached(ctx, g, g.repo, hashstore.Options{}, "")
			if err != nil {
				return err
			}
			filter := sel.filter()
			if slices.Contains(args, hashstore.LatestBackup) {
				if filter, err = sel.latest(); err != nil {
					return err
				}
			}
			opts := hashstore.VerifyOptions{Referrer: upload.Referrer{Store: store}, Backups: args, Filter: filter, ReadData: readData, Subset: sub, Parallel: parallel}
			stopProgress, finish := func() {}, func() {}
			if readData {
				var ps []*progress.Progress
				ps, stopProgress = g.showProgress(ctx, "verify")
				opts.Reading = func(objects int) { ps[0].Start(int64(objects)) }
				opts.Progress = func(n int64) { ps[0].DownloadSuccess(n) }
				finish = ps[0].Done
			}
			rep, err := store.Verify(ctx, opts)
			finish()
			stopProgress()
			if err != nil {
				return err
			}
			s := verifySummary{MessageType: "summary", ReadData: readData, DurationSeconds: time.Since(start).Seconds(), VerifyReport: rep, Requests: g.requests()}
			if g.json {
				if err := g.printJSON(s); err != nil {
					return err
				}
			} else {
				for _, p := range rep.Problems {
					for i, f := range p.Files {
						p.Files[i] = quoteName(f)
					}
					fmt.Fprintf(g.stderr, "  %s\n", p)
				}
				what := "present"
				if readData {
					what = fmt.Sprintf("present and intact (%s read)", progress.FormatBytes(rep.ReadBytes))
					if !sub.IsZero() {
						what = fmt.Sprintf("present, and intact where read (subset %s: %d objects, %s)", sub, rep.ReadObjects, progress.FormatBytes(rep.ReadBytes))
					}
				}
				g.printf("checked %d backups, %d objects (%d packs): %s\n", rep.Backups, rep.Objects, rep.Packs, what)
				printRequests(g, s.Requests)
			}
			if !rep.OK() {
				where := "listed above"
				if g.json {
					where = "listed in the summary"
				}
				return fmt.Errorf("repository has %d problems (%s); restore still writes every file whose objects are intact", len(rep.Problems), where)
			}
			if !g.json {
				g.printf("no problems found\n")
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&readData, "read-data", false, "read every object and check that it decodes and hashes to its key")
	cmd.Flags().StringVar(&subset, "read-data-subset", "", "read only part of the data: N/M (the N-th of M parts that together are all of it) or P% (a random P percent)")
	cmd.Flags().IntVar(&parallel, "parallel", 4, "objects read at once with --read-data")
	addSelectionFlags(cmd.Flags(), &sel, true)
	return cmd
}
