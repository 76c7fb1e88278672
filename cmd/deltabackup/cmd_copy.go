package main

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/deltabackup/deltabackup/hashstore"
	"github.com/deltabackup/deltabackup/progress"
	"github.com/deltabackup/deltabackup/upload"
)

type copySummary struct {
	MessageType string `json:"message_type"`
	From        string `json:"from"`
	To          string `json:"to"`
	*hashstore.CopyReport
	DurationSeconds float64          `json:"duration_seconds"`
	Requests        map[string]int64 `json:"requests,omitempty"`
}

func newCopyCommand(g *globals) *cobra.Command {
	var from, to string
	var sel selection
	fromPassword := passwordSource{flagPrefix: "from-", envPrefix: "DELTABACKUP_FROM_"}
	cmd := &cobra.Command{
		Use:   "copy --from URL --to URL [BACKUP...]",
		Short: "Copy backups between repositories, storing only the objects the target lacks",
		Long: `copy copies the named backups (all when none is named) from one
repository to another, say from a local repository to S3: objects the target
already holds are not read; the others are read, verified, stored, and the
backup records written last under their names. A backup already in the
target is skipped; a different backup under the same name is an error.
Between repositories with different keys, contents are re-sealed and
renamed under the target's key. The source's password comes from
--from-password-file, --from-password-command or DELTABACKUP_FROM_PASSWORD*
when one is set, otherwise from the sources of the target's.`,
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			start := time.Now()
			if from == "" || to == "" {
				return usagef("copy needs --from and --to")
			}
			filter := sel.filter()
			if slices.Contains(args, hashstore.LatestBackup) {
				var err error
				if filter, err = sel.latest(); err != nil {
					return err
				}
			}
			srcOpts := hashstore.Options{}
			if fromPassword.given() {
				srcOpts.Password = g.passwordFunc(&fromPassword, from, false)
			}
			src, err := openStoreAt(ctx, g, from, srcOpts)
			if err != nil {
				return fmt.Errorf("--from: %w", err)
			}
			dst, err := openStoreAt(ctx, g, to, hashstore.Options{})
			if err != nil {
				return fmt.Errorf("--to: %w", err)
			}
			ps, stopProgress := g.showProgress(ctx, "copy")
			rep, err := hashstore.Copy(ctx, src, dst, hashstore.CopyOptions{
				Referrer: upload.Referrer{Store: src}, Backups: args, Filter: filter,
				Planned: func(objects int, bytes int64) { ps[0].AddTotal(int64(objects)); ps[0].AddTotalBytes(bytes) },
				Copied:  func(n int64) { ps[0].AddBytes(n); ps[0].AddSuccess(1) },
			})
			ps[0].Done()
			stopProgress()
			if err != nil {
				return err
			}
			s := copySummary{MessageType: "summary", From: src.String(), To: dst.String(), CopyReport: rep, DurationSeconds: time.Since(start).Seconds(), Requests: g.requests()}
			if g.json {
				return g.printJSON(s)
			}
			g.printf("copied %d backups (%s), %d already there; %d objects (%s) stored, %d already present\n", len(rep.Copied),
				strings.Join(rep.Copied, ", "), len(rep.Present), rep.Objects, progress.FormatBytes(rep.Bytes), rep.PresentObjects)
			printRequests(g, s.Requests)
			return nil
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&from, "from", "", "repository to copy from")
	fl.StringVar(&to, "to", "", "repository to copy to (initialised with 'deltabackup init')")
	addSelectionFlags(fl, &sel, true)
	fromPassword.addFlags(fl, "the --from repository")
	return cmd
}
