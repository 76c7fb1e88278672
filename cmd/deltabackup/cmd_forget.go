package main

import (
	"fmt"
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
}

func newForgetCommand(g *globals) *cobra.Command {
	var opts hashstore.ForgetOptions
	var sel selection
	cmd := &cobra.Command{
		Use:   "forget --repo URL --keep-last N [--keep-daily N] [--keep-weekly N] [--keep-monthly N] [--node NAME] [--source DIR] [--dry-run]",
		Short: "Remove backup records by a retention policy (their data goes with the next gc)",
		Long: `forget keeps, for each node and source, the --keep-last newest backups
and the newest backup of each of the --keep-daily, --keep-weekly (ISO weeks)
and --keep-monthly most recent days, weeks and months that have backups (in
local time), and removes the records of the others. It prints every backup
with what keeps it. Objects are deleted by 'deltabackup gc'.`,
		Args: exactArgs(0, "no arguments"),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			if opts.Policy.Empty() {
				return usagef("forget needs a policy: at least one of --keep-last, --keep-daily, --keep-weekly, --keep-monthly")
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
			if g.json {
				s := forgetSummary{MessageType: "summary", DryRun: rep.DryRun, Decisions: []hashstore.RetentionDecision{}, Removed: rep.Removed}
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
			what := "removed"
			if rep.DryRun {
				what = "would remove (dry run)"
			}
			g.printf("%s %d backups; run 'deltabackup gc' to delete the data only they used\n", what, len(rep.Removed))
			return nil
		},
	}
	fl := cmd.Flags()
	fl.IntVar(&opts.Policy.Last, "keep-last", 0, "keep the N newest backups")
	fl.IntVar(&opts.Policy.Daily, "keep-daily", 0, "keep the newest backup of each of the N most recent days with backups")
	fl.IntVar(&opts.Policy.Weekly, "keep-weekly", 0, "keep the newest backup of each of the N most recent ISO weeks with backups")
	fl.IntVar(&opts.Policy.Monthly, "keep-monthly", 0, "keep the newest backup of each of the N most recent months with backups")
	addSelectionFlags(fl, &sel, false)
	fl.BoolVar(&opts.DryRun, "dry-run", false, "print what would be removed, remove nothing")
	return cmd
}
