package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/deltabackup/deltabackup/hashstore"
	"github.com/deltabackup/deltabackup/progress"
	"github.com/deltabackup/deltabackup/snapshot"
	"github.com/deltabackup/deltabackup/upload"
)

func newListCommand(g *globals) *cobra.Command {
	var sel selection
	cmd := &cobra.Command{
		Use:   "list --repo PATH [--node NAME] [--source DIR] [--tag TAG]",
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
			records := []hashstore.BackupRecord{}
			for _, r := range all {
				if sel.filter().Match(r) {
					records = append(records, r)
				}
			}
			if g.json {
				return g.printJSON(records)
			}
			w := tabwriter.NewWriter(g.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(w, "NAME\tFINISHED\tFILES\tSIZE\tNEW\tNODE\tTAGS\tROOT")
			for _, r := range records {
				fmt.Fprintf(w, "%s\t%s\t%d\t%s\t%s\t%s\t%s\t%s\n", r.Name, r.End.Local().Format(time.DateTime), r.Stats.Files,
					progress.FormatBytes(r.Stats.TotalBytes), progress.FormatBytes(r.Stats.UploadedBytes), r.Node, strings.Join(r.Tags, ","), r.Root.Short())
			}
			if err := w.Flush(); err != nil {
				return err
			}
			g.printf("%d backups; encryption: %s\n", len(records), encryptionMode(store))
			return nil
		},
	}
	addSelectionFlags(cmd.Flags(), &sel, false)
	return cmd
}

func newShowCommand(g *globals) *cobra.Command {
	var sel selection
	cmd := &cobra.Command{
		Use:   "show --repo PATH BACKUP",
		Short: "Show a backup's record; with --json, its root manifest in rohmu's terms (files and distinct contents)",
		Long: `show prints what a backup's record says: root hash, node, source, times,
parent, tags and statistics. With --json it prints the backup as rohmu's
delta-backup model sees it, streamed from the trees: {"root", "record",
"files": [{relative_path, file_size, mtime_ns, mode, hexdigest, content_b64,
should_be_bundled}...], "hashes": [{hexdigest, size}...]}.`,
		Args: exactArgs(1, "a backup name or 'latest'"),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			store, rec, err := openSelectedBackup(ctx, g, sel, args[0])
			if err != nil {
				return err
			}
			trees := &upload.Trees{Store: store}
			if g.json {
				return writeRohmuManifest(cmd, g, trees, rec)
			}
			g.printf("backup %s\n  root %s\n  node %s, source %s\n  taken %s, finished %s\n", rec.Name, rec.Root, rec.Node, rec.Source,
				rec.Start.Local().Format(time.DateTime), rec.End.Local().Format(time.DateTime))
			if rec.Parent != "" {
				g.printf("  parent %s\n", rec.Parent)
			}
			if len(rec.Tags) > 0 {
				g.printf("  tags %s\n", strings.Join(rec.Tags, ", "))
			}
			st := rec.Stats
			g.printf("  %d files (%d embedded), %d directories, %d symlinks, %d special files; %s (%s of data)\n",
				st.Files, st.EmbeddedFiles, st.Dirs, st.Symlinks, st.Specials, progress.FormatBytes(st.TotalBytes), progress.FormatBytes(st.DataBytes))
			g.printf("  this run read %d files (%s), stored %d objects and %d trees (%s)\n", st.HashedFiles, progress.FormatBytes(st.HashedBytes),
				st.UploadedObjects, st.TreesWritten, progress.FormatBytes(st.UploadedBytes))
			if n := st.Unreadable + st.Changed; n > 0 {
				g.printf("  %d files could not be read or kept changing and are not in it\n", n)
			}
			return nil
		},
	}
	addSelectionFlags(cmd.Flags(), &sel, true)
	return cmd
}

// writeRohmuManifest streams a backup as rohmu's model: the root hash,
// every file, and every distinct content.
func writeRohmuManifest(cmd *cobra.Command, g *globals, trees snapshot.TreeReader, rec hashstore.BackupRecord) error {
	ctx := cmd.Context()
	w := bufio.NewWriterSize(g.stdout, 1<<16)
	recJSON, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	fmt.Fprintf(w, `{"message_type":"manifest","root":%q,"record":%s,"files":[`, rec.Root.String(), recJSON)
	err = snapshot.Files(ctx, trees, rec.Root, rec.MinDeltaFileSize, jsonItems[snapshot.File](w))
	if err != nil {
		return err
	}
	w.WriteString(`],"hashes":[`)
	if err := snapshot.Hashes(ctx, trees, rec.Root, jsonItems[snapshot.Hash](w)); err != nil {
		return err
	}
	w.WriteString("]}\n")
	return w.Flush()
}

// jsonItems returns a function that writes each item it is given to w as
// an element of a JSON array (the brackets are the caller's).
func jsonItems[T any](w *bufio.Writer) func(T) error {
	first := true
	return func(item T) error {
		if !first {
			w.WriteByte(',')
		}
		first = false
		b, err := json.Marshal(item)
		if err != nil {
			return err
		}
		_, err = w.Write(b)
		return err
	}
}
