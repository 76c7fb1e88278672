package restore_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/deltabackup/deltabackup/hashstore"
	"github.com/deltabackup/deltabackup/hashstore/storetest"
	"github.com/deltabackup/deltabackup/restore"
	"github.com/deltabackup/deltabackup/restore/restoretest"
	"github.com/deltabackup/deltabackup/snapshot"
	"github.com/deltabackup/deltabackup/snapshot/digest"
	"github.com/deltabackup/deltabackup/upload"
)

// backupDir backs src up into a new memory repository.
func backupDir(t *testing.T, src string) (*hashstore.Store, hashstore.BackupRecord) {
	t.Helper()
	ctx := context.Background()
	store, _ := hashstore.Init(ctx, hashstore.NewMemory(), storetest.Options(hashstore.Options{}))
	sum, err := upload.Backup(ctx, store, src, snapshot.DefaultOptions(), upload.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return store, sum.Record
}

func restoreRecord(t *testing.T, store *hashstore.Store, rec hashstore.BackupRecord, target string, opts restore.Options) *restore.Result {
	t.Helper()
	res, err := restore.Restore(context.Background(), &upload.Trees{Store: store}, rec.Root, target, []restore.Source{restore.StoreSource(store)}, opts)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

// aclXattr encodes a POSIX access ACL as system.posix_acl_access holds it.
func aclXattr(entries ...[3]uint32) []byte {
	b := binary.LittleEndian.AppendUint32(nil, 2)
	for _, e := range entries {
		b = binary.LittleEndian.AppendUint16(b, uint16(e[0]))
		b = binary.LittleEndian.AppendUint16(b, uint16(e[1]))
		b = binary.LittleEndian.AppendUint32(b, e[2])
	}
	return b
}

// TestNodeRestoredFaithfully: owners (as root), modes with setuid and the
// sticky bit, extended attributes, an ACL, hard links across directories,
// a 1 GiB sparse file holding 2 MiB, a FIFO and (as root) a device node
// come back as they were; the restored sparse file takes about 2 MiB.
func TestNodeRestoredFaithfully(t *testing.T) {
	src := t.TempDir()
	asRoot := os.Geteuid() == 0
	mustWrite := func(rel, content string, mode os.FileMode) {
		p := filepath.Join(src, rel)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte(content), mode); err != nil {
			t.Fatal(err)
		}
		os.Chmod(p, mode)
	}
	mustWrite("users/a/own", strings.Repeat("a", 3000), 0o640)
	mustWrite("users/b/own", strings.Repeat("b", 3000), 0o600)
	mustWrite("users/c/tool", strings.Repeat("c", 3000), 0o755|os.ModeSetuid)
	mustWrite("links/first", strings.Repeat("L", 5000), 0o644)
	os.MkdirAll(filepath.Join(src, "other"), 0o755)
	os.Link(filepath.Join(src, "links/first"), filepath.Join(src, "other/second"))
	os.Link(filepath.Join(src, "links/first"), filepath.Join(src, "links/third"))
	mustWrite("attrs", "x", 0o644)
	if err := unix.Setxattr(filepath.Join(src, "attrs"), "user.origin", []byte("db-1"), 0); err != nil {
		t.Skipf("no extended attributes here: %v", err)
	}
	acl := aclXattr([3]uint32{0x01, 6, 0xffffffff}, [3]uint32{0x02, 4, 4242}, [3]uint32{0x04, 4, 0xffffffff}, [3]uint32{0x10, 4, 0xffffffff}, [3]uint32{0x20, 0, 0xffffffff})
	unix.Setxattr(filepath.Join(src, "attrs"), "system.posix_acl_access", acl, 0)
	os.Mkdir(filepath.Join(src, "tmp"), 0o777)
	os.Chmod(filepath.Join(src, "tmp"), 0o777|os.ModeSticky)
	sparse := filepath.Join(src, "sparse")
	f, _ := os.Create(sparse)
	f.Truncate(1 << 30)
	f.WriteAt(bytes.Repeat([]byte("data"), 256<<10), 300<<20)
	f.WriteAt(bytes.Repeat([]byte("more"), 256<<10), 800<<20)
	f.Close()
	unix.Mkfifo(filepath.Join(src, "fifo"), 0o620)
	if asRoot {
		for i, rel := range []string{"users/a/own", "users/b/own", "users/c/tool"} {
			os.Chown(filepath.Join(src, rel), 5000+i, 6000+i)
		}
		os.Chmod(filepath.Join(src, "users/c/tool"), 0o755|os.ModeSetuid) // chown cleared it
		unix.Mknod(filepath.Join(src, "null"), unix.S_IFCHR|0o666, int(unix.Mkdev(1, 3)))
	}
	store, rec := backupDir(t, src)
	if rec.Stats.UploadedBytes > 4<<20 {
		t.Errorf("the backup stored %d MiB for a tree holding 2 MiB of sparse data and a few small files", rec.Stats.UploadedBytes>>20)
	}
	target := filepath.Join(t.TempDir(), "node")
	res := restoreRecord(t, store, rec, target, restore.Options{})
	restoretest.CompareTrees(t, src, target)
	if res.Links != 2 {
		t.Errorf("%d hard links made, want 2", res.Links)
	}
	var st unix.Stat_t
	unix.Stat(filepath.Join(target, "sparse"), &st)
	if st.Blocks*512 > 8<<20 {
		t.Errorf("the restored 1 GiB sparse file takes %d MiB", st.Blocks*512>>20)
	}
	if len(res.Warnings) != 0 {
		t.Errorf("warnings: %+v", res.Warnings)
	}
	// Run again: everything is up to date but the hard-link group, whose
	// first name is written again (a file with several names is never
	// changed in place: one may lie outside the target), and the links
	// stay links.
	again := restoreRecord(t, store, rec, target, restore.Options{})
	if again.ObjectsDownloaded > 1 {
		t.Errorf("a second restore fetched %d objects", again.ObjectsDownloaded)
	}
	restoretest.CompareTrees(t, src, target)
}

// TestOwnersMapByName: a recorded user name that exists here gives its
// number here; --numeric-owner keeps the recorded number.
func TestOwnersMapByName(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("restoring owners needs root")
	}
	ctx := context.Background()
	store, _ := hashstore.Init(ctx, hashstore.NewMemory(), storetest.Options(hashstore.Options{}))
	data, _ := (&snapshot.Tree{Nodes: []snapshot.Node{
		// "root" exists everywhere as uid 0; the backup's machine called it 777.
		{Name: "byname", Type: snapshot.TypeFile, Mode: 0o644, UID: 777, GID: 888, User: "root", Group: "root", Embedded: []byte{}},
		{Name: "nameless", Type: snapshot.TypeFile, Mode: 0o644, UID: 4242, GID: 4343, User: "no-such-user-here", Embedded: []byte{}},
	}}).Encode()
	root := hashstoreKey(t, store, data)
	for _, numeric := range []bool{false, true} {
		target := t.TempDir()
		restore.Restore(ctx, &upload.Trees{Store: store}, root, target, []restore.Source{restore.StoreSource(store)}, restore.Options{NumericOwner: numeric})
		var st unix.Stat_t
		unix.Lstat(filepath.Join(target, "byname"), &st)
		want := [2]uint32{0, 0}
		if numeric {
			want = [2]uint32{777, 888}
		}
		if [2]uint32{st.Uid, st.Gid} != want {
			t.Errorf("numeric %v: byname owned by %d:%d, want %v", numeric, st.Uid, st.Gid, want)
		}
		unix.Lstat(filepath.Join(target, "nameless"), &st)
		if st.Uid != 4242 || st.Gid != 4343 {
			t.Errorf("numeric %v: an unknown name falls back to the number: %d:%d", numeric, st.Uid, st.Gid)
		}
	}
}

func hashstoreKey(t *testing.T, store *hashstore.Store, data []byte) digest.Digest {
	t.Helper()
	id := digest.Of(data)
	if _, err := store.PutBytes(context.Background(), id, data); err != nil {
		t.Fatal(err)
	}
	return id
}

func TestDeleteRemovesOnlyWhatTheBackupLacksInsideTheTarget(t *testing.T) {
	src := t.TempDir()
	for rel, c := range map[string]string{"keep/a": "a", "keep/b": strings.Repeat("b", 400), "top": "t"} {
		p := filepath.Join(src, rel)
		os.MkdirAll(filepath.Dir(p), 0o755)
		os.WriteFile(p, []byte(c), 0o644)
	}
	store, rec := backupDir(t, src)
	top := t.TempDir()
	target, outside := filepath.Join(top, "target"), filepath.Join(top, "outside")
	os.MkdirAll(filepath.Join(target, "keep/extra-dir/deeper"), 0o755)
	os.WriteFile(filepath.Join(target, "keep/extra"), []byte("x"), 0o644)
	os.WriteFile(filepath.Join(target, "keep/extra-dir/deeper/f"), []byte("x"), 0o644)
	os.WriteFile(filepath.Join(target, "stray"), []byte("x"), 0o644)
	os.MkdirAll(outside, 0o755)
	os.WriteFile(filepath.Join(outside, "precious"), []byte("p"), 0o644)
	os.Symlink(outside, filepath.Join(target, "link-out")) // a link out: removed as a link, never followed
	// Without --delete the extras stay.
	restoreRecord(t, store, rec, target, restore.Options{})
	if _, err := os.Stat(filepath.Join(target, "stray")); err != nil {
		t.Fatal("an extra file was removed without --delete")
	}
	res := restoreRecord(t, store, rec, target, restore.Options{Delete: true})
	restoretest.CompareTrees(t, src, target)
	if res.Deleted != 4 {
		t.Errorf("deleted %d entries, want keep/extra, keep/extra-dir, stray and link-out", res.Deleted)
	}
	if data, err := os.ReadFile(filepath.Join(outside, "precious")); err != nil || string(data) != "p" {
		t.Fatalf("--delete touched a file outside the target: %v", err)
	}
}

func TestPartialRestore(t *testing.T) {
	src := t.TempDir()
	for rel, c := range map[string]string{"etc/app.conf": "conf", "etc/other.conf": "o", "var/lib/db/table": strings.Repeat("t", 700), "var/log/x.log": "log", "README": "r"} {
		p := filepath.Join(src, rel)
		os.MkdirAll(filepath.Dir(p), 0o755)
		os.WriteFile(p, []byte(c), 0o644)
	}
	store, rec := backupDir(t, src)
	list := func(dir string) []string {
		var out []string
		filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
			if !d.IsDir() {
				rel, _ := filepath.Rel(dir, p)
				out = append(out, rel)
			}
			return nil
		})
		return out
	}
	cases := []struct {
		name string
		opts restore.Options
		want string
	}{
		{"a subdirectory as the root", restore.Options{Path: "var/lib"}, "db/table"},
		{"one file", restore.Options{Path: "etc/app.conf"}, "app.conf"},
		{"include", restore.Options{Includes: []string{"etc/*.conf"}}, "etc/app.conf,etc/other.conf"},
		{"exclude", restore.Options{Excludes: []string{"var", "etc/other.conf"}}, "README,etc/app.conf"},
		{"path and include", restore.Options{Path: "var", Includes: []string{"log"}}, "log/x.log"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			target := filepath.Join(t.TempDir(), "t")
			restoreRecord(t, store, rec, target, c.opts)
			if got := strings.Join(list(target), ","); got != c.want {
				t.Fatalf("restored %s, want %s", got, c.want)
			}
		})
	}
	_, err := restore.Restore(context.Background(), &upload.Trees{Store: store}, rec.Root, t.TempDir(), []restore.Source{restore.StoreSource(store)}, restore.Options{Path: "no/such"})
	if err == nil || !strings.Contains(err.Error(), "no such file or directory in the backup") {
		t.Fatalf("a path the backup lacks: %v", err)
	}
}

// TestPrivilegedXattrsNeedRoot: a user other than root cannot set
// trusted.* or security.* attributes; such a backup is refused before
// anything is written, naming the entry.
func TestPrivilegedXattrsNeedRoot(t *testing.T) {
	ctx := context.Background()
	store, _ := hashstore.Init(ctx, hashstore.NewMemory(), storetest.Options(hashstore.Options{}))
	data, _ := (&snapshot.Tree{Nodes: []snapshot.Node{
		{Name: "labelled", Type: snapshot.TypeFile, Mode: 0o644, Embedded: []byte{}, Xattrs: []snapshot.Xattr{{Name: "security.selinux", Value: []byte("x")}}},
	}}).Encode()
	root := hashstoreKey(t, store, data)
	restore.SetEuidForTest(1000)
	defer restore.SetEuidForTest(-1)
	parent := t.TempDir()
	_, err := restore.Restore(ctx, &upload.Trees{Store: store}, root, filepath.Join(parent, "t"), []restore.Source{restore.StoreSource(store)}, restore.Options{})
	if err == nil || !strings.Contains(err.Error(), `"labelled"`) || !strings.Contains(err.Error(), "security.selinux") {
		t.Fatalf("restore as a user of a backup with security.* attributes: %v", err)
	}
	if entries, _ := os.ReadDir(parent); len(entries) != 0 {
		t.Fatal("something was written")
	}
}
