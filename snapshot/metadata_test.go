package snapshot

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/sys/unix"
)

// aclXattr encodes a POSIX access ACL as the kernel stores it in
// system.posix_acl_access: version 2, then (tag, perm, id) entries.
func aclXattr(entries ...[3]uint32) []byte {
	b := binary.LittleEndian.AppendUint32(nil, 2)
	for _, e := range entries {
		b = binary.LittleEndian.AppendUint16(b, uint16(e[0]))
		b = binary.LittleEndian.AppendUint16(b, uint16(e[1]))
		b = binary.LittleEndian.AppendUint32(b, e[2])
	}
	return b
}

// ACL tags.
const (
	aclUserObj  = 0x01
	aclUser     = 0x02
	aclGroupObj = 0x04
	aclMask     = 0x10
	aclOther    = 0x20
	aclNoID     = 0xffffffff
)

func TestMetadataIsRecorded(t *testing.T) {
	src := t.TempDir()
	writeTree(t, src, map[string]string{"owned": strings.Repeat("o", 300), "attrs": strings.Repeat("a", 300), "acl": "x"})
	if err := unix.Setxattr(filepath.Join(src, "attrs"), "user.note", []byte("kept"), 0); err != nil {
		if errors.Is(err, unix.ENOTSUP) {
			t.Skip("the file system of the test directory has no extended attributes")
		}
		t.Fatal(err)
	}
	unix.Setxattr(filepath.Join(src, "attrs"), "user.empty", nil, 0)
	acl := aclXattr([3]uint32{aclUserObj, 6, aclNoID}, [3]uint32{aclUser, 4, 4242}, [3]uint32{aclGroupObj, 4, aclNoID},
		[3]uint32{aclMask, 4, aclNoID}, [3]uint32{aclOther, 0, aclNoID})
	aclErr := unix.Setxattr(filepath.Join(src, "acl"), "system.posix_acl_access", acl, 0)
	if err := unix.Setxattr(src, "user.dir", []byte("root dir"), 0); err != nil {
		t.Fatal(err)
	}
	asRoot := os.Geteuid() == 0
	if asRoot {
		os.Lchown(filepath.Join(src, "owned"), 4242, 4343)
	}
	sink := newMemSink()
	res := snap(t, src, sink, DefaultOptions())
	ns := nodes(t, sink, res.Root)

	if x := ns["attrs"].Xattrs; len(x) != 2 || x[0].Name != "user.empty" || len(x[0].Value) != 0 || x[1].Name != "user.note" || string(x[1].Value) != "kept" {
		t.Errorf("xattrs %+v", x)
	}
	if x := ns[""].Xattrs; len(x) != 1 || string(x[0].Value) != "root dir" {
		t.Errorf("the source directory's own xattrs %+v", x)
	}
	if aclErr == nil {
		x := ns["acl"].Xattrs
		if len(x) != 1 || x[0].Name != "system.posix_acl_access" || !bytes.Equal(x[0].Value, acl) {
			t.Errorf("ACL %+v", x)
		}
	} else {
		t.Logf("ACLs not checked: %v", aclErr)
	}
	me := ns["attrs"]
	if me.UID != uint32(os.Geteuid()) || me.User == "" {
		t.Errorf("owner of a file of this user: %d %q", me.UID, me.User)
	}
	if asRoot {
		if o := ns["owned"]; o.UID != 4242 || o.GID != 4343 || o.User != "" {
			t.Errorf("a file owned by a uid with no name: %+v", o)
		}
	}
}

func TestHardLinksAreOneGroup(t *testing.T) {
	src := t.TempDir()
	writeTree(t, src, map[string]string{"a/first": strings.Repeat("h", 3000), "lonely": strings.Repeat("l", 3000)})
	os.MkdirAll(filepath.Join(src, "b"), 0o755)
	if err := os.Link(filepath.Join(src, "a/first"), filepath.Join(src, "b/second")); err != nil {
		t.Fatal(err)
	}
	os.Link(filepath.Join(src, "a/first"), filepath.Join(src, "third"))
	sink := newMemSink()
	res := snap(t, src, sink, DefaultOptions())
	ns := nodes(t, sink, res.Root)
	a, b, c := ns["a/first"], ns["b/second"], ns["third"]
	if !a.Hardlinked() || a.LinkIno != b.LinkIno || a.LinkIno != c.LinkIno || a.LinkDev != b.LinkDev {
		t.Fatalf("names of one inode are not one group: %+v %+v %+v", a, b, c)
	}
	if a.ID != b.ID || a.ID != c.ID {
		t.Fatal("names of one inode hold different contents")
	}
	if ns["lonely"].Hardlinked() {
		t.Fatal("a file with one name is in a group")
	}
	if res.Stats.HashedFiles != 2 {
		t.Errorf("hashed %d files, want the inode once and lonely once", res.Stats.HashedFiles)
	}
}

func TestSparseFilesStoreOnlyTheirData(t *testing.T) {
	src := t.TempDir()
	p := filepath.Join(src, "sparse")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	data := bytes.Repeat([]byte("data"), 256<<10) // 1 MiB
	f.Truncate(1 << 30)
	f.WriteAt(data, 100<<20)
	f.WriteAt(data, 900<<20)
	f.Close()
	var st unix.Stat_t
	unix.Stat(p, &st)
	if st.Blocks*512 >= 1<<30 {
		t.Skip("the file system of the test directory does not keep holes")
	}
	sink := newMemSink()
	res := snap(t, src, sink, DefaultOptions())
	n := nodes(t, sink, res.Root)["sparse"]
	if !n.Sparse || n.Size != 1<<30 {
		t.Fatalf("sparse file: %+v", n)
	}
	if ds := n.DataSize(); ds < 2<<20 || ds > 4<<20 {
		t.Fatalf("data of a 1 GiB file holding 2 MiB: %d bytes in %v", ds, n.Data)
	}
	if res.Stats.HashedBytes > 4<<20 {
		t.Fatalf("read %d bytes of a file holding 2 MiB", res.Stats.HashedBytes)
	}
	stored := sink.objects[n.ID]
	if int64(len(stored)) != n.DataSize() || !bytes.Contains(stored, data[:4096]) {
		t.Fatalf("stored %d bytes, want the data ranges' %d", len(stored), n.DataSize())
	}
}

func TestSpecialFiles(t *testing.T) {
	src := t.TempDir()
	writeTree(t, src, map[string]string{"plain": "p"})
	unix.Mkfifo(filepath.Join(src, "fifo"), 0o600)
	l, err := net.Listen("unix", filepath.Join(src, "sock"))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	asRoot := os.Geteuid() == 0
	if asRoot {
		if err := unix.Mknod(filepath.Join(src, "null"), unix.S_IFCHR|0o666, int(unix.Mkdev(1, 3))); err != nil {
			t.Fatal(err)
		}
	}
	sink := newMemSink()
	res := snap(t, src, sink, DefaultOptions())
	ns := nodes(t, sink, res.Root)
	if ns["fifo"] == nil || ns["fifo"].Type != TypeFIFO {
		t.Errorf("fifo: %+v", ns["fifo"])
	}
	if ns["sock"] != nil {
		t.Error("a socket is in the tree")
	}
	if diff := cmp.Diff([]string{"sock"}, problemPaths(res.Skipped)); diff != "" {
		t.Errorf("skipped (-want +got):\n%s", diff)
	}
	if asRoot {
		if d := ns["null"]; d == nil || d.Type != TypeCharDevice || d.Rdev != unix.Mkdev(1, 3) {
			t.Errorf("device node: %+v", d)
		}
	}
}

func TestExclusionOptions(t *testing.T) {
	src := t.TempDir()
	writeTree(t, src, map[string]string{
		"keep/a": "a", "tagged/.nobackup": "", "tagged/x": "x", "tagged/sub/y": "y",
		"cache/CACHEDIR.TAG": cacheDirSignature + "\n# a cache\n", "cache/blob": "b",
		"fake/CACHEDIR.TAG": "not a signature", "fake/kept": "k",
		"big": strings.Repeat("B", 5000), "small": "s",
	})
	opts := DefaultOptions()
	opts.ExcludeIfPresent = []string{".nobackup"}
	opts.ExcludeCaches = true
	opts.ExcludeLargerThan = 4096
	sink := newMemSink()
	res := snap(t, src, sink, opts)
	ns := nodes(t, sink, res.Root)
	want := []string{"cache/CACHEDIR.TAG", "fake/CACHEDIR.TAG", "fake/kept", "keep/a", "small", "tagged/.nobackup"}
	if diff := cmp.Diff(want, filePaths(ns)); diff != "" {
		t.Errorf("files (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"big"}, problemPaths(res.Skipped)); diff != "" {
		t.Errorf("skipped (-want +got):\n%s", diff)
	}
	if ns["tagged"] == nil || ns["cache"] == nil {
		t.Error("a marked directory itself must stay in the tree")
	}
}

func TestOneFileSystem(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("mounting a file system below the source needs root")
	}
	src := t.TempDir()
	writeTree(t, src, map[string]string{"here": "h"})
	mnt := filepath.Join(src, "mnt")
	os.Mkdir(mnt, 0o755)
	if err := unix.Mount("tmpfs", mnt, "tmpfs", 0, "size=1m"); err != nil {
		t.Skipf("cannot mount a tmpfs here: %v", err)
	}
	defer unix.Unmount(mnt, unix.MNT_DETACH)
	os.WriteFile(filepath.Join(mnt, "there"), []byte("t"), 0o644)
	for _, one := range []bool{false, true} {
		opts := DefaultOptions()
		opts.OneFileSystem = one
		sink := newMemSink()
		ns := nodes(t, sink, snap(t, src, sink, opts).Root)
		if ns["mnt"] == nil || ns["mnt"].Type != TypeDir {
			t.Fatalf("one-file-system %v: the mount point is not in the tree", one)
		}
		if got := ns["mnt/there"] != nil; got == one {
			t.Errorf("one-file-system %v: the other file system's file in the tree: %v", one, got)
		}
	}
}
