package beneath

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// tree makes root/a/b/file, root/outside/secret, and root/a/link -> ../outside
// (a link inside the tree) and root/a/abs -> /etc (a link out of it).
func tree(t *testing.T) string {
	t.Helper()
	root := t.TempDir()
	for _, d := range []string{"a/b", "outside"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	os.WriteFile(filepath.Join(root, "a/b/file"), []byte("ok"), 0o644)
	os.WriteFile(filepath.Join(root, "outside/secret"), []byte("secret"), 0o600)
	os.Symlink("../outside", filepath.Join(root, "a/link"))
	os.Symlink("/etc", filepath.Join(root, "a/abs"))
	os.Symlink("b/file", filepath.Join(root, "a/filelink"))
	return root
}

// Both ways of resolving (openat2, and one component at a time for kernels
// without it) must refuse a symbolic link in any component, even one that
// stays inside the tree.
func TestNoSymlinkIsFollowed(t *testing.T) {
	for _, walk := range []bool{false, true} {
		name := "openat2"
		if walk {
			name = "component walk"
		}
		t.Run(name, func(t *testing.T) {
			openat2Missing.Store(walk)
			defer openat2Missing.Store(false)
			root := tree(t)
			d, err := OpenRoot(root)
			if err != nil {
				t.Fatal(err)
			}
			defer d.Close()
			f, err := d.Open("a/b/file", os.O_RDONLY, 0)
			if err != nil {
				t.Fatalf("a plain path: %v", err)
			}
			f.Close()
			for _, rel := range []string{"a/link/secret", "a/abs/passwd", "a/filelink", "a/link", "../x", "/etc/passwd", "a/../outside/secret", "a//b/file"} {
				if f, err := d.Open(rel, os.O_RDONLY, 0); err == nil {
					f.Close()
					t.Errorf("Open(%q) followed a link or climbed out", rel)
				}
				if _, err := d.OpenDir(rel); err == nil {
					t.Errorf("OpenDir(%q) followed a link or climbed out", rel)
				}
			}
			if _, err := d.Open("a/link/secret", os.O_RDONLY, 0); !errors.Is(err, ErrSymlink) {
				t.Errorf("a link in the path is not reported as ErrSymlink: %v", err)
			}
			// Writes through a link in the path are refused as well.
			if f, err := d.Open("a/link/new", os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600); err == nil {
				f.Close()
				t.Error("created a file through a link")
			}
			if err := d.Mkdir("a/link/newdir", 0o700); err == nil {
				t.Error("made a directory through a link")
			}
			if err := d.Symlink("x", "a/link/newlink"); err == nil {
				t.Error("made a link through a link")
			}
			if _, err := os.Stat(filepath.Join(root, "outside/new")); err == nil {
				t.Error("something was written outside")
			}
			// The last component: Lstat and Readlink see the link itself.
			st, err := d.Lstat("a/link")
			if err != nil || st.Mode&unix.S_IFMT != unix.S_IFLNK {
				t.Errorf("Lstat of a link: %v %o", err, st.Mode)
			}
			if target, err := d.Readlink("a/link"); err != nil || target != "../outside" {
				t.Errorf("Readlink: %q %v", target, err)
			}
		})
	}
}

func TestDirOperations(t *testing.T) {
	root := tree(t)
	d, err := OpenRoot(root)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if err := d.Mkdir("a/new", 0o755); err != nil {
		t.Fatal(err)
	}
	sub, err := d.OpenDir("a/new")
	if err != nil {
		t.Fatal(err)
	}
	f, err := sub.Open("tmp", os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString("data")
	if err := SetTimes(f, 1_000_000_123); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if err := sub.Rename("tmp", "final"); err != nil {
		t.Fatal(err)
	}
	sub.Close()
	fi, err := os.Lstat(filepath.Join(root, "a/new/final"))
	if err != nil || fi.ModTime().UnixNano() != 1_000_000_123 {
		t.Fatalf("renamed file: %v %v", fi, err)
	}
	entries, err := d.ReadDir("a")
	if err != nil {
		t.Fatal(err)
	}
	types := map[string]os.FileMode{}
	for _, e := range entries {
		types[e.Name] = e.Type
	}
	if types["b"] != os.ModeDir || types["link"] != os.ModeSymlink || types["new"] != os.ModeDir {
		t.Errorf("entries: %v", types)
	}
	if err := d.Link("a/b/file", d, "a/new/hard"); err != nil {
		t.Fatal(err)
	}
	if err := d.Link("a/filelink", d, "a/new/hardlink"); err != nil {
		t.Fatal(err)
	}
	if st, err := d.Lstat("a/new/hardlink"); err != nil || st.Mode&unix.S_IFMT != unix.S_IFLNK {
		t.Errorf("a hard link to a symlink must be the symlink itself: %v %o", err, st.Mode)
	}
	for _, rel := range []string{"a/new/final", "a/new/hard", "a/new/hardlink", "a/new"} {
		if err := d.Remove(rel); err != nil {
			t.Errorf("remove %s: %v", rel, err)
		}
	}
	if _, err := os.Lstat(filepath.Join(root, "a/new")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a/new still there: %v", err)
	}
}

func TestReferences(t *testing.T) {
	d, err := OpenRoot(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	d.Acquire()
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Entries(); err != nil {
		t.Fatalf("closed while a reference remained: %v", err)
	}
	d.Close()
	if _, err := d.Entries(); err == nil {
		t.Fatal("still open after the last reference")
	}
}
