package restoretest

import (
	"bytes"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
)

// CompareTrees fails t for every difference between the tree at want and
// the tree at got, the roots included. Entries at the relative paths in
// ignore are not compared (directories there are still descended into).
func CompareTrees(t testing.TB, want, got string, ignore ...string) {
	t.Helper()
	skip := map[string]bool{}
	for _, p := range ignore {
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
	err := filepath.WalkDir(want, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(want, p)
		seen[rel] = true
		if skip[rel] {
			return nil
		}
		wi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		gi, err := os.Lstat(filepath.Join(got, rel))
		if err != nil {
			report("%s: missing after restore: %v", rel, err)
			return nil
		}
		if wi.Mode() != gi.Mode() {
			report("%s: mode %v, want %v", rel, gi.Mode(), wi.Mode())
		}
		switch {
		case wi.Mode()&fs.ModeSymlink != 0:
			wt, _ := os.Readlink(p)
			gt, _ := os.Readlink(filepath.Join(got, rel))
			if wt != gt {
				report("%s: symlink target %q, want %q", rel, gt, wt)
			}
			return nil
		case wi.Mode().IsRegular():
			wb, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			gb, _ := os.ReadFile(filepath.Join(got, rel))
			if !bytes.Equal(wb, gb) {
				report("%s: content differs (%d bytes, want %d)", rel, len(gb), len(wb))
			}
		}
		if !wi.ModTime().Equal(gi.ModTime()) {
			report("%s: mtime %v, want %v", rel, gi.ModTime(), wi.ModTime())
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
