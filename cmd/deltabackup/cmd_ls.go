package main

import (
	"archive/tar"
	"bufio"
	"context"
	"fmt"
	"io"
	"path"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/deltabackup/deltabackup/hashstore"
	"github.com/deltabackup/deltabackup/snapshot"
	"github.com/deltabackup/deltabackup/snapshot/digest"
	"github.com/deltabackup/deltabackup/upload"
)

// lsEntry is one line of 'ls --json'.
type lsEntry struct {
	MessageType string    `json:"message_type"`
	Path        string    `json:"path"`
	Type        string    `json:"type"`
	Mode        string    `json:"mode"`
	UID         uint32    `json:"uid"`
	GID         uint32    `json:"gid"`
	User        string    `json:"user,omitempty"`
	Group       string    `json:"group,omitempty"`
	Size        int64     `json:"size"`
	Mtime       time.Time `json:"mtime"`
	Hexdigest   string    `json:"hexdigest,omitempty"`
	// Chunks hold a chunked file's data in order (it has no hexdigest).
	Chunks  []snapshot.Hash   `json:"chunks,omitempty"`
	Target  string            `json:"target,omitempty"`
	Sparse  bool              `json:"sparse,omitempty"`
	Links   bool              `json:"hard_linked,omitempty"`
	Xattrs  []string          `json:"xattrs,omitempty"`
	Subtree string            `json:"tree,omitempty"`
	Below   *snapshot.Counts  `json:"below,omitempty"`
	Extra   map[string]string `json:"-"`
}

func newLsCommand(g *globals) *cobra.Command {
	var sel selection
	var long bool
	var maxDepth int
	cmd := &cobra.Command{
		Use:   "ls --repo URL BACKUP [PATH]",
		Short: "List the entries of a backup, or of a path in it",
		Long: `ls lists what a backup holds below PATH (default: everything), read
from its trees one directory at a time. -l adds mode, owner, size and
mtime; --json prints one JSON object per entry.`,
		Args: rangeArgs(1, 2, "a backup name (or 'latest') and optionally a path in it"),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			store, rec, err := openSelectedBackup(ctx, g, sel, args[0])
			if err != nil {
				return err
			}
			sub := ""
			if len(args) == 2 {
				sub = strings.Trim(path.Clean("/"+args[1]), "/")
			}
			w := bufio.NewWriterSize(g.stdout, 1<<16)
			defer w.Flush()
			base := 0
			if sub != "" {
				base = strings.Count(sub, "/") + 1
			}
			return snapshot.WalkFrom(ctx, &upload.Trees{Store: store}, rec.Root, sub, func(rel string, n *snapshot.Node) error {
				if rel == "" {
					return nil // the root itself
				}
				if maxDepth > 0 && strings.Count(rel, "/")+1-base > maxDepth {
					return snapshot.SkipDir
				}
				if g.json {
					return g.printJSONTo(w, lsLine(rel, n))
				}
				if long {
					_, err := fmt.Fprintf(w, "%s %8s %8s %12d %s %s%s\n", modeString(n), owner(n.User, n.UID), owner(n.Group, n.GID), n.Size,
						time.Unix(0, n.MtimeNs).Local().Format(time.DateTime), quoteName(rel), linkSuffix(n))
					return err
				}
				_, err := fmt.Fprintln(w, quoteName(rel))
				return err
			})
		},
	}
	cmd.Flags().BoolVarP(&long, "long", "l", false, "show mode, owner, size and mtime")
	cmd.Flags().IntVar(&maxDepth, "depth", 0, "list this many levels below PATH (0: all; 1: PATH's own entries)")
	addSelectionFlags(cmd.Flags(), &sel, true)
	return cmd
}

func lsLine(rel string, n *snapshot.Node) lsEntry {
	e := lsEntry{MessageType: "node", Path: rel, Type: n.Type.String(), Mode: fmt.Sprintf("%04o", n.Mode), UID: n.UID, GID: n.GID,
		User: n.User, Group: n.Group, Size: n.Size, Mtime: time.Unix(0, n.MtimeNs).UTC(), Hexdigest: n.ID.String(), Target: n.Target,
		Sparse: n.Sparse, Links: n.Hardlinked(), Subtree: n.Subtree.String()}
	for _, x := range n.Xattrs {
		e.Xattrs = append(e.Xattrs, x.Name)
	}
	for _, c := range n.Chunks {
		e.Chunks = append(e.Chunks, snapshot.Hash{Hexdigest: c.ID, Size: c.Size})
	}
	if n.Type == snapshot.TypeDir {
		b := n.Below
		e.Below = &b
	}
	return e
}

func owner(name string, id uint32) string {
	if name != "" {
		return name
	}
	return fmt.Sprint(id)
}

func linkSuffix(n *snapshot.Node) string {
	if n.Type == snapshot.TypeSymlink {
		return " -> " + quoteName(n.Target)
	}
	return ""
}

// modeString renders a node's type and mode as ls -l does
// ("-rwsr-xr-x", "drwxrwxrwt", "crw-r--r--").
func modeString(n *snapshot.Node) string {
	b := []byte("?rwxrwxrwx")
	b[0] = map[snapshot.NodeType]byte{snapshot.TypeFile: '-', snapshot.TypeDir: 'd', snapshot.TypeSymlink: 'l',
		snapshot.TypeFIFO: 'p', snapshot.TypeCharDevice: 'c', snapshot.TypeBlockDevice: 'b'}[n.Type]
	for i := range 9 {
		if n.Mode&(1<<(8-i)) == 0 {
			b[i+1] = '-'
		}
	}
	special := func(bit uint32, at int, set, unset byte) {
		if n.Mode&bit != 0 {
			if b[at] == '-' {
				b[at] = unset
			} else {
				b[at] = set
			}
		}
	}
	special(0o4000, 3, 's', 'S')
	special(0o2000, 6, 's', 'S')
	special(0o1000, 9, 't', 'T')
	return string(b)
}

func newDumpCommand(g *globals) *cobra.Command {
	var sel selection
	cmd := &cobra.Command{
		Use:   "dump --repo URL BACKUP PATH",
		Short: "Write a file of a backup to standard output, or a directory as a tar archive",
		Long: `dump writes the file at PATH of BACKUP to standard output, verified
byte by byte; for a directory ("" or "/" for the whole backup) it writes a
tar archive (PAX) of everything below it, with owners, modes, mtimes,
extended attributes, symlinks, hard links and special files. Only the
trees dump needs are read.`,
		Args: exactArgs(2, "a backup name (or 'latest') and a path in it"),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			store, rec, err := openSelectedBackup(ctx, g, sel, args[0])
			if err != nil {
				return err
			}
			sub := strings.Trim(path.Clean("/"+args[1]), "/")
			trees := &upload.Trees{Store: store}
			n, _, err := snapshot.Lookup(ctx, trees, rec.Root, sub)
			if err != nil {
				return err
			}
			w := bufio.NewWriterSize(g.stdout, 1<<20)
			if n.Type == snapshot.TypeDir {
				err = dumpTar(ctx, w, store, trees, rec.Root, sub)
			} else if n.Type == snapshot.TypeFile {
				err = writeContent(ctx, w, store, n)
			} else {
				return fmt.Errorf("%s is a %s, not a file or directory", quoteName(sub), n.Type)
			}
			if err != nil {
				return err
			}
			return w.Flush()
		},
	}
	addSelectionFlags(cmd.Flags(), &sel, true)
	return cmd
}

// writeContent writes a file's data, verified, with its holes as zeros.
func writeContent(ctx context.Context, w io.Writer, store *hashstore.Store, n *snapshot.Node) error {
	data, err := upload.OpenContent(ctx, store, n)
	if err != nil {
		return err
	}
	defer data.Close()
	if !n.Sparse {
		_, err = io.Copy(w, io.LimitReader(data, n.Size+1))
		return err
	}
	var at int64
	for _, r := range n.Data {
		if _, err := io.CopyN(w, zeros{}, r.Offset-at); err != nil {
			return err
		}
		if _, err := io.CopyN(w, data, r.Length); err != nil {
			return err
		}
		at = r.Offset + r.Length
	}
	_, err = io.CopyN(w, zeros{}, n.Size-at)
	return err
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}

// dumpTar writes the subtree at sub as a tar archive.
func dumpTar(ctx context.Context, out io.Writer, store *hashstore.Store, trees snapshot.TreeReader, root digest.Digest, sub string) error {
	tw := tar.NewWriter(out)
	links := map[[2]uint64]string{}
	prefix := ""
	if sub != "" {
		prefix = sub + "/"
	}
	err := snapshot.WalkFrom(ctx, trees, root, sub, func(rel string, n *snapshot.Node) error {
		name := strings.TrimPrefix(rel, prefix)
		if rel == sub {
			name = "."
		}
		hdr := &tar.Header{Name: name, Mode: int64(n.Mode), Uid: int(n.UID), Gid: int(n.GID), Uname: n.User, Gname: n.Group,
			ModTime: time.Unix(0, n.MtimeNs), Format: tar.FormatPAX}
		for _, x := range n.Xattrs {
			if hdr.PAXRecords == nil {
				hdr.PAXRecords = map[string]string{}
			}
			hdr.PAXRecords["SCHILY.xattr."+x.Name] = string(x.Value)
		}
		switch n.Type {
		case snapshot.TypeDir:
			hdr.Typeflag, hdr.Name = tar.TypeDir, name+"/"
		case snapshot.TypeSymlink:
			hdr.Typeflag, hdr.Linkname = tar.TypeSymlink, n.Target
		case snapshot.TypeFIFO:
			hdr.Typeflag = tar.TypeFifo
		case snapshot.TypeCharDevice, snapshot.TypeBlockDevice:
			hdr.Typeflag = tar.TypeChar
			if n.Type == snapshot.TypeBlockDevice {
				hdr.Typeflag = tar.TypeBlock
			}
			hdr.Devmajor, hdr.Devminor = int64(unix.Major(n.Rdev)), int64(unix.Minor(n.Rdev))
		case snapshot.TypeFile:
			if n.Hardlinked() {
				key := [2]uint64{n.LinkDev, n.LinkIno}
				if first, ok := links[key]; ok {
					hdr.Typeflag, hdr.Linkname = tar.TypeLink, first
					return tw.WriteHeader(hdr)
				}
				links[key] = name
			}
			hdr.Typeflag, hdr.Size = tar.TypeReg, n.Size
			if err := tw.WriteHeader(hdr); err != nil {
				return err
			}
			return writeContent(ctx, tw, store, n)
		}
		return tw.WriteHeader(hdr)
	})
	if err != nil {
		return err
	}
	return tw.Close()
}
