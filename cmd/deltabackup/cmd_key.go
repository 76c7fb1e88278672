package main

import (
	"context"

	"github.com/spf13/cobra"

	"github.com/deltabackup/deltabackup/hashstore"
)

func newKeyCommand(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "key list|add|remove|passwd",
		Short: "Manage the passwords (key files) of an encrypted repository",
		Long: `An encrypted repository's master key is stored once per password, in a key
file keys/<id>. 'key add' adds a password, 'key remove ID' removes one
(not the one the command was opened with, so the last one can never go),
'key passwd' replaces the password in use. The new password comes from
--new-password-file, --new-password-command, DELTABACKUP_NEW_PASSWORD_FILE,
DELTABACKUP_NEW_PASSWORD, or is asked twice on a terminal.`,
		Args: exactArgs(0, "a subcommand: list, add, remove or passwd"),
		RunE: func(cmd *cobra.Command, args []string) error { return cmd.Help() },
	}
	newPassword := &passwordSource{flagPrefix: "new-", envPrefix: "DELTABACKUP_NEW_"}
	var kdf kdfOptions
	// addNew runs add or passwd with the new password.
	addNew := func(ctx context.Context, passwd bool) error {
		p, err := kdf.kdf()
		if err != nil {
			return err
		}
		store, err := openStoreAt(ctx, g, g.repo, hashstore.Options{KDF: p})
		if err != nil {
			return err
		}
		pw, err := newPassword.get(g, "new password", true)
		if err != nil {
			return err
		}
		var info hashstore.KeyInfo
		if passwd {
			info, err = store.ChangePassword(ctx, pw)
		} else {
			info, err = store.AddKey(ctx, pw)
		}
		if err != nil {
			return err
		}
		if g.json {
			return g.printJSON(map[string]any{"message_type": "summary", "key": info})
		}
		if passwd {
			g.printf("changed the password: key %s replaces the one in use\n", info.ID)
		} else {
			g.printf("added key %s\n", info.ID)
		}
		return nil
	}
	add := &cobra.Command{
		Use:   "add",
		Short: "Add a password to the repository",
		Args:  exactArgs(0, "no arguments"),
		RunE:  func(cmd *cobra.Command, args []string) error { return addNew(cmd.Context(), false) },
	}
	passwd := &cobra.Command{
		Use:   "passwd",
		Short: "Replace the password the repository was opened with",
		Args:  exactArgs(0, "no arguments"),
		RunE:  func(cmd *cobra.Command, args []string) error { return addNew(cmd.Context(), true) },
	}
	for _, c := range []*cobra.Command{add, passwd} {
		newPassword.addFlags(c.Flags(), "the new key")
		kdf.addFlags(c.Flags())
	}
	list := &cobra.Command{
		Use:   "list",
		Short: "List the key files",
		Args:  exactArgs(0, "no arguments"),
		RunE: func(cmd *cobra.Command, args []string) error {
			store, err := openStore(cmd.Context(), g)
			if err != nil {
				return err
			}
			keys, err := store.Keys(cmd.Context())
			if err != nil {
				return err
			}
			if g.json {
				return g.printJSON(map[string]any{"message_type": "summary", "keys": keys})
			}
			g.printf("%-2s%-12s  %-20s  %-24s  %s\n", "", "ID", "CREATED", "USER@HOST", "KDF")
			for _, k := range keys {
				mark := ""
				if k.Current {
					mark = "*"
				}
				g.printf("%-2s%-12s  %-20s  %-24s  argon2id %d MiB × %d\n", mark, k.ID[:12], k.Created.Local().Format("2006-01-02 15:04:05"),
					k.Username+"@"+k.Host, k.MemoryKiB>>10, k.Passes)
			}
			return nil
		},
	}
	remove := &cobra.Command{
		Use:   "remove ID",
		Short: "Remove a key file (by its id or a unique prefix of it)",
		Args:  exactArgs(1, "the key's id"),
		RunE: func(cmd *cobra.Command, args []string) error {
			store, err := openStore(cmd.Context(), g)
			if err != nil {
				return err
			}
			info, err := store.RemoveKey(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			if g.json {
				return g.printJSON(map[string]any{"message_type": "summary", "removed": info})
			}
			g.printf("removed key %s\n", info.ID)
			return nil
		},
	}
	cmd.AddCommand(list, add, remove, passwd)
	return cmd
}
