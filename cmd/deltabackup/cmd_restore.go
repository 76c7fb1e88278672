package main

import (
	"errors"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/deltabackup/deltabackup/progress"
	"github.com/deltabackup/deltabackup/restore"
)

type restoreSummary struct {
	MessageType       string           `json:"message_type"`
	Name              string           `json:"name"`
	RootHash          string           `json:"root_hash"`
	Target            string           `json:"target"`
	Files             int              `json:"files"`
	FilesWritten      int64            `json:"files_written"`
	FilesUpToDate     int64            `json:"files_up_to_date"`
	ObjectsDownloaded int64            `json:"objects_downloaded"`
	BytesDownloaded   int64            `json:"bytes_downloaded"`
	Sources           []sourceSummary  `json:"sources"`
	Failed            []failedFile     `json:"failed"`
	DurationSeconds   float64          `json:"duration_seconds"`
	Requests          map[string]int64 `json:"requests,omitempty"`
}

type sourceSummary struct {
	Source       string `json:"source"`
	PlanBytes    int64  `json:"plan_bytes"`
	FetchedBytes int64  `json:"fetched_bytes"`
}

type failedFile struct {
	Path      string `json:"path"`
	Hexdigest string `json:"hexdigest,omitempty"`
	Error     string `json:"error"`
}

func newRestoreCommand(g *globals) *cobra.Command {
	var parallel int
	cmd := &cobra.Command{
		Use:   "restore --repo PATH [flags] BACKUP TARGET",
		Short: "Restore a backup (a name or 'latest') into a directory",
		Long: `restore writes BACKUP into TARGET, which is created if missing. Every
content is verified before it is written, written to a temporary name and
renamed into place; modes, mtimes, symlinks and empty directories are
restored. Running restore again after an interruption or a failure only
fetches files that are missing or differ. Files that cannot be restored are
listed and the exit code is 1; all other files are restored.`,
		Args: exactArgs(2, "a backup name (or 'latest') and a target directory"),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			start := time.Now()
			if parallel < 1 {
				return usagef("--parallel must be at least 1")
			}
			store, err := openStore(ctx, g)
			if err != nil {
				return err
			}
			rec, m, err := restore.LoadManifest(ctx, store, args[0])
			if err != nil {
				return err
			}
			ps, stopProgress := g.showProgress(ctx, "restore")
			res, err := restore.Restore(ctx, m, []restore.Source{restore.StoreSource(store)}, restore.Options{
				Target: args[1], Parallel: parallel, Progress: ps[0], Logger: g.logger,
			})
			stopProgress()
			var incomplete *restore.IncompleteError
			if err != nil && !errors.As(err, &incomplete) {
				return err
			}
			s := restoreSummary{
				MessageType: "summary", Name: rec.Name, RootHash: rec.RootHexdigest, Target: args[1],
				Files: len(m.Files), FilesWritten: res.FilesWritten, FilesUpToDate: res.FilesUpToDate,
				ObjectsDownloaded: res.ObjectsDownloaded, BytesDownloaded: res.BytesDownloaded,
				Failed: []failedFile{}, DurationSeconds: time.Since(start).Seconds(), Requests: g.requests(),
			}
			for i, src := range res.Plan.Sources {
				s.Sources = append(s.Sources, sourceSummary{Source: src.String(), PlanBytes: res.Plan.Bytes[i], FetchedBytes: res.BytesPerSource[i]})
			}
			for _, fe := range res.Failed {
				s.Failed = append(s.Failed, failedFile{Path: fe.Path, Hexdigest: fe.Hexdigest, Error: fe.Err.Error()})
			}
			if g.json {
				if err := g.printJSON(s); err != nil {
					return err
				}
			} else {
				for _, fe := range s.Failed {
					fmt.Fprintf(g.stderr, "  not restored: %s: %s\n", fe.Path, fe.Error)
				}
				g.printf("restored backup %s into %s: %d files written, %d already up to date; %d objects (%s) fetched\n",
					s.Name, s.Target, s.FilesWritten, s.FilesUpToDate, s.ObjectsDownloaded, progress.FormatBytes(s.BytesDownloaded))
				printRequests(g, s.Requests)
				if g.verbose > 0 {
					for _, src := range s.Sources {
						g.printf("  source %s: planned %s, fetched %s\n", src.Source, progress.FormatBytes(src.PlanBytes), progress.FormatBytes(src.FetchedBytes))
					}
				}
			}
			if incomplete != nil {
				return fmt.Errorf("%d of %d files could not be restored (listed above); fix the repository and run restore again to fetch only those",
					len(s.Failed), s.Files)
			}
			return nil
		},
	}
	cmd.Flags().IntVar(&parallel, "parallel", restore.DefaultParallel, "objects downloaded and files checked at once")
	return cmd
}
