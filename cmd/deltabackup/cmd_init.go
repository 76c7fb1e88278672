package main

import (
	"github.com/spf13/cobra"

	"github.com/deltabackup/deltabackup/hashstore"
)

func newInitCommand(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "init --repo PATH",
		Short: "Create a new, empty repository",
		Long: `init creates a repository at --repo. It refuses a location that already
holds a repository or any other data. For s3://, gs:// and azure://
repositories the bucket (container) must exist, unless --create-bucket is
given; a local or sftp:// directory is
created with its parents.`,
		Args: exactArgs(0, "no arguments"),
		RunE: func(cmd *cobra.Command, args []string) error {
			g.createDir = true // an sftp:// directory is made like a local one
			o, err := g.openLocation(cmd.Context(), g.repo)
			if err != nil {
				return err
			}
			s, err := hashstore.Init(cmd.Context(), o.Backend, hashstore.Options{Logger: g.logger})
			if err != nil {
				return err
			}
			if g.json {
				return g.printJSON(map[string]any{"message_type": "summary", "repository": o.Location, "id": s.Config().ID})
			}
			g.printf("created repository %s at %s\n", s.Config().ID, o.Location)
			return nil
		},
	}
	cmd.Flags().BoolVar(&g.createBucket, "create-bucket", false, "for s3://, gs:// and azure:// repositories: create the bucket (container) if it does not exist")
	return cmd
}
