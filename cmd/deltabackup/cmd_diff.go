package main

import (
	"strings"

	"github.com/spf13/cobra"

	"github.com/deltabackup/deltabackup/progress"
	"github.com/deltabackup/deltabackup/restore"
	"github.com/deltabackup/deltabackup/snapshot"
)

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
			store, filter, err := openSelected(ctx, g, sel)
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
