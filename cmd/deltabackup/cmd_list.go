package main

import (
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/deltabackup/deltabackup/hashstore"
	"github.com/deltabackup/deltabackup/progress"
	"github.com/deltabackup/deltabackup/restore"
)

func newListCommand(g *globals) *cobra.Command {
	var sel selection
	cmd := &cobra.Command{
		Use:   "list --repo PATH [--node NAME] [--source DIR]",
		Short: "List the backups in a repository, oldest first",
		Args:  exactArgs(0, "no arguments"),
		RunE: func(cmd *cobra.Command, args []string) error {
			store, err := openStore(cmd.Context(), g)
			if err != nil {
				return err
			}
			all, err := store.Backups(cmd.Context())
			if err != nil {
				return err
			}
			var records []hashstore.BackupRecord
			for _, r := range all {
				if sel.filter().Match(r) {
					records = append(records, r)
				}
			}
			if g.json {
				if records == nil {
					records = []hashstore.BackupRecord{}
				}
				return g.printJSON(records)
			}
			w := tabwriter.NewWriter(g.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(w, "NAME\tFINISHED\tFILES\tSIZE\tNEW\tNODE\tROOT")
			for _, r := range records {
				fmt.Fprintf(w, "%s\t%s\t%d\t%s\t%s\t%s\t%s\n", r.Name, r.End.Local().Format(time.DateTime), r.Stats.Files,
					progress.FormatBytes(r.Stats.TotalBytes), progress.FormatBytes(r.Stats.UploadedBytes), r.Node, r.Root.Short())
			}
			return w.Flush()
		},
	}
	addSelectionFlags(cmd.Flags(), &sel, false)
	return cmd
}

func newShowCommand(g *globals) *cobra.Command {
	var sel selection
	cmd := &cobra.Command{
		Use:   "show --repo PATH BACKUP",
		Short: "Show the files of a backup (a name or 'latest'): mode, size, hexdigest, path",
		Args:  exactArgs(1, "a backup name or 'latest'"),
		RunE: func(cmd *cobra.Command, args []string) error {
			store, filter, err := openSelected(cmd.Context(), g, sel)
			if err != nil {
				return err
			}
			rec, m, err := restore.LoadManifest(cmd.Context(), store, args[0], filter)
			if err != nil {
				return err
			}
			if g.json {
				return g.printJSON(m)
			}
			g.printf("backup %s (root %s), %d files, %s, taken %s on %s\n", rec.Name, rec.Root, len(m.Files),
				progress.FormatBytes(m.TotalBytes()), m.Start.Local().Format(time.DateTime), m.Node)
			if m.ChainDepth > 0 {
				g.printf("  incremental manifest: applied to %d earlier manifests down to a whole one\n", m.ChainDepth)
			}
			w := tabwriter.NewWriter(g.stdout, 0, 4, 2, ' ', 0)
			for _, f := range m.Files {
				digest := f.Hexdigest.String()
				if f.Embedded() {
					digest = "(embedded)"
				}
				fmt.Fprintf(w, "%04o\t%d\t%s\t%s\n", f.Mode, f.FileSize, digest, quoteName(f.RelativePath))
			}
			for _, s := range m.Symlinks {
				fmt.Fprintf(w, "%s\t\t\t%s -> %s\n", "symlink", quoteName(s.RelativePath), quoteName(s.Target))
			}
			for _, d := range m.EmptyDirs {
				fmt.Fprintf(w, "%s\t\t\t%s/\n", "dir", quoteName(d))
			}
			return w.Flush()
		},
	}
	addSelectionFlags(cmd.Flags(), &sel, true)
	return cmd
}
