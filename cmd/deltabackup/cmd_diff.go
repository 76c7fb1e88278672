package main

import (
	"strings"

	"github.com/spf13/cobra"

	"github.com/deltabackup/deltabackup/progress"
	"github.com/deltabackup/deltabackup/snapshot"
	"github.com/deltabackup/deltabackup/upload"
)

type diffSummary struct {
	MessageType string `json:"message_type"`
	From        string `json:"from"`
	To          string `json:"to"`
	snapshot.DiffStats
}

type diffLine struct {
	MessageType string `json:"message_type"`
	Type        string `json:"type"`
	snapshot.Change
}

func newDiffCommand(g *globals) *cobra.Command {
	var sel selection
	cmd := &cobra.Command{
		Use:   "diff --repo URL A B",
		Short: "Show the entries added, removed and changed from backup A to backup B",
		Long: `diff compares the trees of two backups. A directory whose tree has the
same id in both is skipped unread, so the comparison costs what changed.
Modification times alone are not changes.`,
		Args: exactArgs(2, "two backup names (or 'latest')"),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			store, filter, err := openSelected(ctx, g, sel)
			if err != nil {
				return err
			}
			ra, err := store.Backup(ctx, args[0], filter)
			if err != nil {
				return err
			}
			rb, err := store.Backup(ctx, args[1], filter)
			if err != nil {
				return err
			}
			st, err := snapshot.Compare(ctx, &upload.Trees{Store: store}, ra.Root, rb.Root, func(c snapshot.Change) error {
				if g.json {
					return g.printJSON(diffLine{MessageType: "change", Type: c.Type.String(), Change: c})
				}
				switch c.Kind {
				case "added":
					g.printf("+ %s\n", quoteName(c.Path))
				case "removed":
					g.printf("- %s\n", quoteName(c.Path))
				default:
					g.printf("M %s (%s)\n", quoteName(c.Path), strings.Join(c.What, ", "))
				}
				return nil
			})
			if err != nil {
				return err
			}
			if g.json {
				return g.printJSON(diffSummary{MessageType: "summary", From: ra.Name, To: rb.Name, DiffStats: st})
			}
			g.printf("%s → %s: %d added (%s), %d removed (%s), %d changed (%s of changed content)\n", ra.Name, rb.Name,
				st.Added, progress.FormatBytes(st.AddedBytes), st.Removed, progress.FormatBytes(st.RemovedBytes),
				st.Changed, progress.FormatBytes(st.ChangedBytes))
			return nil
		},
	}
	addSelectionFlags(cmd.Flags(), &sel, true)
	return cmd
}
