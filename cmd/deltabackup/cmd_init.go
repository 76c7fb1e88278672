package main

import (
	"github.com/spf13/cobra"

	"github.com/deltabackup/deltabackup/hashstore"
	"github.com/deltabackup/deltabackup/hashstore/keycache"
	"github.com/deltabackup/deltabackup/snapshot"
	"github.com/deltabackup/deltabackup/upload"
)

func newInitCommand(g *globals) *cobra.Command {
	var unencrypted, noChunking bool
	var chunkSize sizeValue
	var kdf kdfOptions
	cmd := &cobra.Command{
		Use:   "init --repo PATH",
		Short: "Create a new, empty repository",
		Long: `init creates a repository at --repo. It refuses a location that already
holds a repository or any other data. For s3://, gs:// and azure://
repositories the bucket (container) must exist, unless --create-bucket is
given; a local or sftp:// directory is
created with its parents.

The repository is encrypted: every stored byte but its config and key
files is sealed with a random master key, which the key file keys/<id>
holds wrapped under the password (--password-file, --password-command,
DELTABACKUP_PASSWORD_FILE, DELTABACKUP_PASSWORD, or asked twice on a
terminal). Lose every password and the data is lost. With
--insecure-no-encryption it stores plain bytes under plain BLAKE3 ids.`,
		Args: exactArgs(0, "no arguments"),
		RunE: func(cmd *cobra.Command, args []string) error {
			g.createDir = true // an sftp:// directory is made like a local one
			o, err := g.openLocation(cmd.Context(), g.repo)
			if err != nil {
				return err
			}
			opts := hashstore.Options{Logger: g.logger, Unencrypted: unencrypted, KeyCache: keycache.Kernel(g.keyCache)}
			if opts.KDF, err = kdf.kdf(); err != nil {
				return err
			}
			// Object Lock becomes the repository's: every later command
			// applies it, flag or not.
			if v, ok := g.s3Flags["object-lock"]; ok {
				if opts.ObjectLock, err = parseRetentionDuration(v); err != nil {
					return usagef("--s3-object-lock: %v", err)
				}
				opts.ObjectLockMode = g.s3Flags["object-lock-mode"]
			}
			switch {
			case noChunking:
				opts.Chunking = &hashstore.ChunkingConfig{}
			case chunkSize != 0:
				c := hashstore.ChunkingForAverage(int(chunkSize))
				// Checked as every command checks a config, with a stand-in key.
				if upload.SnapshotChunking(c, make([]byte, 32)).Check() != nil {
					return usagef("--chunk-size %d: give a power of two from %d to %d", int64(chunkSize), 2*snapshot.MinChunkSize, snapshot.MaxChunkSize/8)
				}
				opts.Chunking = &c
			}
			if !unencrypted {
				opts.Password = g.passwordFunc(&g.password, o.Location, true)
			}
			s, err := hashstore.Init(cmd.Context(), o.Backend, opts)
			if err != nil {
				return err
			}
			cfg := s.Config()
			if g.json {
				return g.printJSON(map[string]any{"message_type": "summary", "repository": o.Location, "id": cfg.ID, "encryption": cfg.Encryption})
			}
			g.printf("created repository %s at %s (encryption: %s)\n", cfg.ID, o.Location, cfg.Encryption)
			return nil
		},
	}
	cmd.Flags().BoolVar(&unencrypted, "insecure-no-encryption", false, "store plain bytes under plain BLAKE3 ids: whoever reads the storage reads the data (for storage that encrypts at rest, or rohmu-compatible hexdigests)")
	cmd.Flags().Var(&chunkSize, "chunk-size", "average chunk size of chunked files, a power of two (chunks are half to eight times as large; default 128KiB)")
	cmd.Flags().BoolVar(&noChunking, "no-chunking", false, "store every file whole, never in chunks")
	kdf.addFlags(cmd.Flags())
	cmd.Flags().BoolVar(&g.createBucket, "create-bucket", false, "for s3://, gs:// and azure:// repositories: create the bucket (container) if it does not exist")
	return cmd
}
