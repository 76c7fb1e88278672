package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/pflag"

	"github.com/deltabackup/deltabackup/hashstore"
	"github.com/deltabackup/deltabackup/upload"
)

// selection is the --node, --source and --all-nodes flags of the commands
// that pick backups: a repository shared by a fleet has one "latest" per
// node and source.
type selection struct {
	node, source string
	tags         []string
	allNodes     bool
}

// addSelectionFlags registers the flags; latest says whether the command
// resolves "latest" (and so takes --all-nodes).
func addSelectionFlags(fl *pflag.FlagSet, s *selection, latest bool) {
	if latest {
		fl.StringVar(&s.node, "node", "", "the node whose backups are meant (default: this host's name); \"latest\" is that node's newest backup")
		fl.BoolVar(&s.allNodes, "all-nodes", false, "let \"latest\" be the newest backup of any node")
	} else {
		fl.StringVar(&s.node, "node", "", "only the backups of this node")
	}
	fl.StringVar(&s.source, "source", "", "only the backups of this source directory (as recorded: see 'list')")
	fl.StringArrayVar(&s.tags, "tag", nil, "only the backups carrying this tag (repeatable: all of them)")
}

// latest is the filter that says which backup "latest" means: the newest
// of this host (or --node) and, with --source, of that source.
func (s selection) latest() (hashstore.BackupFilter, error) {
	f := s.filter()
	if s.allNodes {
		if s.node != "" {
			return f, usagef("--node and --all-nodes exclude each other")
		}
		return f, nil
	}
	if f.Node == "" {
		host, err := os.Hostname()
		if err != nil {
			return f, usagef("cannot tell this host's name (%v): give --node or --all-nodes", err)
		}
		f.Node = host
	}
	return f, nil
}

// filter selects backups by the flags given, any node when none is.
func (s selection) filter() hashstore.BackupFilter {
	f := hashstore.BackupFilter{Node: s.node, Source: s.source, Tags: s.tags}
	// A stream's source ("stdin:NAME") is a name, not a path.
	if f.Source != "" && !strings.HasPrefix(f.Source, upload.StreamSource("")) {
		if abs, err := filepath.Abs(f.Source); err == nil {
			f.Source = abs // recorded sources are absolute
		}
	}
	return f
}

// openSelected checks the selection flags, then opens the repository: a
// usage error is reported before any storage is touched.
func openSelected(ctx context.Context, g *globals, sel selection) (*hashstore.Store, hashstore.BackupFilter, error) {
	filter, err := sel.latest()
	if err != nil {
		return nil, filter, err
	}
	store, err := openStore(ctx, g)
	return store, filter, err
}

// openSelectedBackup opens the repository and finds the backup name in
// it ("latest" as the selection flags say).
func openSelectedBackup(ctx context.Context, g *globals, sel selection, name string) (*hashstore.Store, hashstore.BackupRecord, error) {
	store, filter, err := openSelected(ctx, g, sel)
	if err != nil {
		return nil, hashstore.BackupRecord{}, err
	}
	rec, err := store.Backup(ctx, name, filter)
	return store, rec, err
}
