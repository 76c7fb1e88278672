package restoretest

import (
	"bytes"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// CompareTrees fails t for every difference between the tree at want and
// the tree at got, the roots included. Entries at the relative paths in
// ignore are not compared (directories there are still descended into).
// Owners are compared when the test runs as root.
func CompareTrees(t testing.TB, want, got string, ignore ...string) {
	t.Helper()
	CompareTreesWith(t, want, got, Options{Ignore: ignore, Owners: os.Geteuid() == 0})
}

// Options say what CompareTreesWith compares.
type Options struct {
	// Ignore lists relative paths not compared.
	Ignore []string
	// Owners compares uid and gid (a restore by root puts them back).
	Owners bool
}

// CompareTreesWith is CompareTrees with options.
func CompareTreesWith(t testing.TB, want, got string, opts Options) {
	t.Helper()
	skip := map[string]bool{}
	for _, p := range opts.Ignore {
		skip[p] = true
	}
	seen := map[string]bool{}
	errs := 0
	report := func(format string, args ...any) {
		t.Helper()
		if errs++; errs <= 20 {
			t.Errorf(format, args...)
		}
	}
	asRoot := opts.Owners
	// Names of one inode in want must be names of one inode in got.
	wantLinks := map[[2]uint64]string{}
	gotLinks := map[[2]uint64]string{}
	err := filepath.WalkDir(want, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(want, p)
		seen[rel] = true
		if skip[rel] {
			return nil
		}
		gp := filepath.Join(got, rel)
		var ws, gs unix.Stat_t
		if err := unix.Lstat(p, &ws); err != nil {
			return err
		}
		if err := unix.Lstat(gp, &gs); err != nil {
			report("%s: missing after restore: %v", rel, err)
			return nil
		}
		if ws.Mode != gs.Mode {
			report("%s: mode %o, want %o", rel, gs.Mode, ws.Mode)
		}
		if asRoot && (ws.Uid != gs.Uid || ws.Gid != gs.Gid) {
			report("%s: owner %d:%d, want %d:%d", rel, gs.Uid, gs.Gid, ws.Uid, ws.Gid)
		}
		if wx, gx := xattrs(p), xattrs(gp); !equalXattrs(wx, gx) {
			report("%s: extended attributes %v, want %v", rel, names(gx), names(wx))
		}
		switch ws.Mode & unix.S_IFMT {
		case unix.S_IFLNK:
			wt, _ := os.Readlink(p)
			gt, _ := os.Readlink(gp)
			if wt != gt {
				report("%s: symlink target %q, want %q", rel, gt, wt)
			}
		case unix.S_IFREG:
			same, err := sameContent(p, gp)
			if err != nil {
				return err
			}
			if !same {
				report("%s: content differs (%d bytes, want %d)", rel, gs.Size, ws.Size)
			}
			if ws.Nlink > 1 {
				wk, gk := [2]uint64{ws.Dev, ws.Ino}, [2]uint64{gs.Dev, gs.Ino}
				if first, ok := wantLinks[wk]; ok {
					if gotLinks[gk] != first {
						report("%s: not a hard link of %s as in the source", rel, first)
					}
				} else {
					wantLinks[wk] = rel
					gotLinks[gk] = rel
				}
			}
			// A sparse source stays sparse: the restore writes no holes.
			if ws.Blocks*512 < ws.Size && gs.Blocks > ws.Blocks+2048 {
				report("%s: restored with %d blocks, the source has %d (holes written)", rel, gs.Blocks, ws.Blocks)
			}
		case unix.S_IFCHR, unix.S_IFBLK:
			if ws.Rdev != gs.Rdev {
				report("%s: device %d, want %d", rel, gs.Rdev, ws.Rdev)
			}
		}
		if ws.Mtim != gs.Mtim {
			report("%s: mtime %v, want %v", rel, gs.Mtim, ws.Mtim)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("walk %s: %v", want, err)
	}
	_ = filepath.WalkDir(got, func(p string, d fs.DirEntry, err error) error {
		rel, _ := filepath.Rel(got, p)
		if !seen[rel] && !skip[rel] {
			report("%s: in the restore but not in the source", rel)
		}
		return nil
	})
	if errs > 20 {
		t.Errorf("... and %d more differences", errs-20)
	}
}

type xattr struct {
	name  string
	value []byte
}

// xattrs lists the extended attributes of p itself (not a link's target).
func xattrs(p string) []xattr {
	buf := make([]byte, 64<<10)
	n, err := unix.Llistxattr(p, buf)
	if err != nil {
		return nil
	}
	var out []xattr
	for _, name := range bytes.Split(buf[:n], []byte{0}) {
		if len(name) == 0 {
			continue
		}
		v := make([]byte, 64<<10)
		m, err := unix.Lgetxattr(p, string(name), v)
		if errors.Is(err, syscall.ENODATA) {
			continue
		}
		out = append(out, xattr{string(name), v[:max(m, 0)]})
	}
	slices.SortFunc(out, func(a, b xattr) int { return bytes.Compare([]byte(a.name), []byte(b.name)) })
	return out
}

func equalXattrs(a, b []xattr) bool {
	return slices.EqualFunc(a, b, func(x, y xattr) bool { return x.name == y.name && bytes.Equal(x.value, y.value) })
}

func names(x []xattr) []string {
	var out []string
	for _, a := range x {
		out = append(out, a.name)
	}
	return out
}

// sameContent compares two files a buffer at a time, so large (sparse)
// files cost no memory.
func sameContent(a, b string) (bool, error) {
	fa, err := os.Open(a)
	if err != nil {
		return false, err
	}
	defer fa.Close()
	fb, err := os.Open(b)
	if err != nil {
		return false, nil
	}
	defer fb.Close()
	ba, bb := make([]byte, 1<<20), make([]byte, 1<<20)
	for {
		na, ea := io.ReadFull(fa, ba)
		nb, eb := io.ReadFull(fb, bb)
		if na != nb || !bytes.Equal(ba[:na], bb[:nb]) {
			return false, nil
		}
		if ea != nil || eb != nil {
			return (ea == io.EOF || ea == io.ErrUnexpectedEOF) && (eb == io.EOF || eb == io.ErrUnexpectedEOF), nil
		}
	}
}
