package main

import (
	"fmt"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/deltabackup/deltabackup/hashstore"
)

type forgetSummary struct {
	MessageType string                        `json:"message_type"`
	DryRun      bool                          `json:"dry_run"`
	Decisions   []hashstore.RetentionDecision `json:"decisions"`
	Removed     []string                      `json:"removed"`
	// Retained: backups the policy would remove, kept by object lock.
	Retained []string `json:"retained,omitempty"`
	// GC is what --prune's gc did.
	GC *hashstore.GCReport `json:"gc,omitempty"`
}

func newForgetCommand(g *globals) *cobra.Command {
	var opts hashstore.ForgetOptions
	var sel selection
	var within string
	var prune bool
	cmd := &cobra.Command{
		Use:   "forget --repo URL --keep-last N [--keep-hourly|daily|weekly|monthly|yearly N] [--keep-within DURATION] [--keep-tag TAG] [--node NAME] [--source DIR] [--prune] [--dry-run]",
		Short: "Remove backup records by a retention policy (their data goes with the next gc)",
		Long: `forget keeps, for each node and source, the --keep-last newest backups;
the newest backup of each of the --keep-hourly, --keep-daily, --keep-weekly
(ISO weeks), --keep-monthly and --keep-yearly most recent hours, days, weeks,
months and years that have backups (in local time); every backup that ended
within --keep-within (e.g. 36h, 14d, 2w, 1y) of the newest one; and every
backup tagged with a --keep-tag. It removes the records of the others and
prints every backup with what keeps it. Objects are deleted by
'deltabackup gc', or right away with --prune.`,
		Args: exactArgs(0, "no arguments"),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			if within != "" {
				d, err := parseRetentionDuration(within)
				if err != nil {
					return usagef("--keep-within: %v", err)
				}
				opts.Policy.Within = d
			}
			if opts.Policy.Empty() {
				return usagef("forget needs a policy: at least one of --keep-last, --keep-hourly, --keep-daily, --keep-weekly, --keep-monthly, --keep-yearly, --keep-within, --keep-tag")
			}
			store, err := openStore(ctx, g)
			if err != nil {
				return err
			}
			opts.Filter = sel.filter()
			rep, err := store.Forget(ctx, opts)
			if err != nil {
				return err
			}
			var gcRep *hashstore.GCReport
			gcStart := time.Now()
			if prune && !opts.DryRun {
				if gcRep, err = collect(ctx, g, store, hashstore.GCOptions{}); err != nil {
					return fmt.Errorf("forget removed %d backups, then gc failed: %w", len(rep.Removed), err)
				}
			}
			if g.json {
				s := forgetSummary{MessageType: "summary", DryRun: rep.DryRun, Decisions: []hashstore.RetentionDecision{}, Removed: rep.Removed, Retained: rep.Retained, GC: gcRep}
				for _, gr := range rep.Groups {
					s.Decisions = append(s.Decisions, gr.Decisions...)
				}
				return g.printJSON(s)
			}
			for _, gr := range rep.Groups {
				g.printf("node %s, source %s:\n", gr.Node, gr.Source)
				w := tabwriter.NewWriter(g.stdout, 0, 4, 2, ' ', 0)
				for _, d := range gr.Decisions {
					verdict := "remove"
					if d.Keep {
						verdict = "keep"
					}
					fmt.Fprintf(w, "  %s\t%s\t%s\t%s\n", verdict, d.Record.Name, d.Record.End.Local().Format(time.DateTime), strings.Join(d.Reasons, ", "))
				}
				w.Flush()
			}
			if len(rep.Retained) > 0 {
				g.printf("kept %d backups the policy would remove, under object lock until their retention ends: %s\n", len(rep.Retained), strings.Join(rep.Retained, ", "))
			}
			what := "removed"
			if rep.DryRun {
				what = "would remove (dry run)"
			}
			if gcRep != nil {
				g.printf("%s %d backups\n", what, len(rep.Removed))
				printGC(g, gcRep, time.Since(gcStart).Seconds())
				return nil
			}
			g.printf("%s %d backups; run 'deltabackup gc' (or forget --prune) to delete the data only they used\n", what, len(rep.Removed))
			return nil
		},
	}
	fl := cmd.Flags()
	fl.IntVar(&opts.Policy.Last, "keep-last", 0, "keep the N newest backups")
	fl.IntVar(&opts.Policy.Daily, "keep-daily", 0, "keep the newest backup of each of the N most recent days with backups")
	fl.IntVar(&opts.Policy.Weekly, "keep-weekly", 0, "keep the newest backup of each of the N most recent ISO weeks with backups")
	fl.IntVar(&opts.Policy.Monthly, "keep-monthly", 0, "keep the newest backup of each of the N most recent months with backups")
	fl.IntVar(&opts.Policy.Hourly, "keep-hourly", 0, "keep the newest backup of each of the N most recent hours with backups")
	fl.IntVar(&opts.Policy.Yearly, "keep-yearly", 0, "keep the newest backup of each of the N most recent years with backups")
	fl.StringVar(&within, "keep-within", "", "keep every backup that ended within this of the newest one (36h, 14d, 2w, 1y, or combined: 1y6w)")
	fl.StringArrayVar(&opts.Policy.Tags, "keep-tag", nil, "keep every backup carrying this tag (repeatable)")
	fl.BoolVar(&prune, "prune", false, "run gc right after, deleting the data only the removed backups used")
	addSelectionFlags(fl, &sel, false)
	fl.BoolVar(&opts.DryRun, "dry-run", false, "print what would be removed, remove nothing")
	return cmd
}

// parseRetentionDuration reads a Go duration (36h, 90m) or whole units of
// y (365 days), w (7 days), d (24 hours) and h, combined: "1y2w", "14d".
func parseRetentionDuration(s string) (time.Duration, error) {
	if d, err := time.ParseDuration(s); err == nil && d > 0 {
		return d, nil
	}
	units := map[byte]time.Duration{'y': 365 * 24 * time.Hour, 'w': 7 * 24 * time.Hour, 'd': 24 * time.Hour, 'h': time.Hour}
	var total time.Duration
	rest := s
	for rest != "" {
		i := 0
		for i < len(rest) && rest[i] >= '0' && rest[i] <= '9' {
			i++
		}
		if i == 0 || i == len(rest) || i > 6 {
			return 0, fmt.Errorf("%q: want a duration such as 36h, 14d, 2w or 1y", s)
		}
		unit, ok := units[rest[i]]
		if !ok {
			return 0, fmt.Errorf("%q: unknown unit %q (y, w, d, h)", s, rest[i])
		}
		n, _ := strconv.Atoi(rest[:i])
		total += time.Duration(n) * unit
		rest = rest[i+1:]
	}
	if total <= 0 {
		return 0, fmt.Errorf("%q: want a duration above zero", s)
	}
	return total, nil
}
