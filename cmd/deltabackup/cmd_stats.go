package main

import (
	"cmp"
	"fmt"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/deltabackup/deltabackup/hashstore"
	"github.com/deltabackup/deltabackup/progress"
	"github.com/deltabackup/deltabackup/upload"
)

type statsSummary struct {
	MessageType string `json:"message_type"`
	Encryption  string `json:"encryption"`
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
			st, err := store.Stats(ctx, upload.Referrer{Store: store})
			if err != nil {
				return err
			}
			if g.json {
				return g.printJSON(statsSummary{MessageType: "summary", Encryption: store.Config().Encryption, RepoStats: st})
			}
			g.printf("repository %s (id %s)\n", store, store.Config().ID)
			g.printf("  encryption:   %s\n", encryptionMode(store))
			if cfg := store.Config(); cfg.ObjectLock != "" {
				g.printf("  object lock:  every write retained %s (%s)\n", cfg.ObjectLock, cmp.Or(cfg.ObjectLockMode, "compliance"))
			}
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

// encryptionMode says in words how a repository stores its bytes.
func encryptionMode(store *hashstore.Store) string {
	if store.Encrypted() {
		return store.Config().Encryption + " (sealed contents, keyed object names)"
	}
	return "none (plain contents under plain BLAKE3 ids)"
}
