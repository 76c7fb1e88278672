package main

import (
	"github.com/spf13/cobra"

	"github.com/deltabackup/deltabackup/hashstore"
)

func newInitCommand(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "init --repo PATH",
		Short: "Create a new, empty repository",
		Long: `init creates a repository at --repo. It refuses a location that already
holds a repository or any other data.`,
		Args: exactArgs(0, "no arguments"),
		RunE: func(cmd *cobra.Command, args []string) error {
			b, err := openBackend(g.repo)
			if err != nil {
				return err
			}
			s, err := hashstore.Init(cmd.Context(), b, g.logger)
			if err != nil {
				return err
			}
			if g.json {
				return g.printJSON(map[string]any{"message_type": "summary", "repository": g.repo, "id": s.Config().ID})
			}
			g.printf("created repository %s at %s\n", s.Config().ID, g.repo)
			return nil
		},
	}
}
