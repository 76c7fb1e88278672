package main

import (
	"strings"

	"github.com/spf13/cobra"

	"github.com/deltabackup/deltabackup/hashstore"
)

func newTagCommand(g *globals) *cobra.Command {
	var sel selection
	var add, remove []string
	cmd := &cobra.Command{
		Use:   "tag --repo URL [--add TAG]... [--remove TAG]... BACKUP...",
		Short: "Add or remove tags of backups (select them later with --tag, keep them with forget --keep-tag)",
		Long: `tag adds --add tags to, and removes --remove tags from, each named backup
('latest' as --node and --source say), rewriting its record; nothing else
in the record changes.`,
		Args: rangeArgs(1, 1<<20, "at least one backup name or 'latest'"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(add) == 0 && len(remove) == 0 {
				return usagef("give --add TAG or --remove TAG")
			}
			ctx := cmd.Context()
			store, filter, err := openSelected(ctx, g, sel)
			if err != nil {
				return err
			}
			var done []hashstore.BackupRecord
			for _, name := range args {
				rec, err := store.Backup(ctx, name, filter)
				if err != nil {
					return err
				}
				if rec, err = store.TagBackup(ctx, rec.Name, add, remove); err != nil {
					return err
				}
				done = append(done, rec)
			}
			if g.json {
				return g.printJSON(done)
			}
			for _, rec := range done {
				g.printf("backup %s: tags %s\n", quoteName(rec.Name), strings.Join(rec.Tags, ", "))
			}
			return nil
		},
	}
	cmd.Flags().StringArrayVar(&add, "add", nil, "tag to add (repeatable)")
	cmd.Flags().StringArrayVar(&remove, "remove", nil, "tag to remove (repeatable)")
	addSelectionFlags(cmd.Flags(), &sel, true)
	return cmd
}
