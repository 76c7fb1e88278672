package beneath

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strings"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ErrSymlink is returned (wrapped) when a component of a path is a
// symbolic link, or is not a directory where one is needed: the entry was
// swapped since it was listed, or the path was never safe to use.
var ErrSymlink = errors.New("a component of the path is a symbolic link or not a directory")

// Dir is an open directory. Every method takes a path relative to it
// (slash-separated, clean, no "..") and refuses to cross a symbolic link.
// A Dir is safe for concurrent use; Close it when done.
type Dir struct {
	fd   int
	name string // for messages
	refs atomic.Int32
}

// OpenRoot opens the directory at path as the top of a tree. path itself is
// resolved as usual (a symlink the caller named is the caller's choice);
// nothing below it will be.
func OpenRoot(path string) (*Dir, error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &fs.PathError{Op: "open", Path: path, Err: err}
	}
	return newDir(fd, path), nil
}

func newDir(fd int, name string) *Dir {
	d := &Dir{fd: fd, name: name}
	d.refs.Store(1)
	return d
}

// Fd returns the descriptor of the directory, valid until Close.
func (d *Dir) Fd() int { return d.fd }

// Name is the path the directory was opened with, for messages.
func (d *Dir) Name() string { return d.name }

// Acquire adds a reference: the directory stays open until Close has been
// called once for the Open and once per Acquire.
func (d *Dir) Acquire() { d.refs.Add(1) }

// Close releases a reference and closes the directory with the last one.
func (d *Dir) Close() error {
	if d.refs.Add(-1) == 0 {
		return unix.Close(d.fd)
	}
	return nil
}

func (d *Dir) pathErr(op, rel string, err error) error {
	if errors.Is(err, unix.ELOOP) || errors.Is(err, unix.ENOTDIR) || errors.Is(err, unix.EXDEV) {
		err = fmt.Errorf("%w (%v)", ErrSymlink, err)
	}
	return &fs.PathError{Op: op, Path: join(d.name, rel), Err: err}
}

func join(dir, rel string) string {
	if rel == "" || rel == "." {
		return dir
	}
	return strings.TrimSuffix(dir, "/") + "/" + rel
}

// openat2Missing is set once the kernel says it has no openat2 (before
// Linux 5.6); every later open walks one component at a time.
var openat2Missing atomic.Bool

// openat opens rel below dirfd with flags, following no symbolic link in
// any component.
func openat(dirfd int, rel string, flags int, mode uint32) (int, error) {
	if rel == "" || rel == "." {
		return unix.Openat(dirfd, ".", flags|unix.O_CLOEXEC, mode)
	}
	if err := checkRel(rel); err != nil {
		return -1, err
	}
	if !strings.Contains(rel, "/") {
		return unix.Openat(dirfd, rel, flags|unix.O_NOFOLLOW|unix.O_CLOEXEC, mode)
	}
	if !openat2Missing.Load() {
		how := unix.OpenHow{Flags: uint64(flags | unix.O_NOFOLLOW | unix.O_CLOEXEC), Mode: uint64(mode),
			Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS}
		if flags&unix.O_CREAT == 0 && flags&unix.O_TMPFILE != unix.O_TMPFILE {
			how.Mode = 0
		}
		for range 3 {
			fd, err := unix.Openat2(dirfd, rel, &how)
			switch {
			case err == nil:
				return fd, nil
			case errors.Is(err, unix.ENOSYS):
				openat2Missing.Store(true)
			case errors.Is(err, unix.EAGAIN):
				continue // a rename raced the lookup; try again
			default:
				return -1, err
			}
			break
		}
	}
	return openatWalk(dirfd, rel, flags, mode)
}

// openatWalk opens rel one component at a time, each directory with
// O_NOFOLLOW|O_DIRECTORY, so a symbolic link anywhere fails the open.
func openatWalk(dirfd int, rel string, flags int, mode uint32) (int, error) {
	parts := strings.Split(rel, "/")
	cur := dirfd
	for i, part := range parts[:len(parts)-1] {
		fd, err := unix.Openat(cur, part, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if cur != dirfd {
			unix.Close(cur)
		}
		if err != nil {
			return -1, fmt.Errorf("%s: %w", strings.Join(parts[:i+1], "/"), err)
		}
		cur = fd
	}
	fd, err := unix.Openat(cur, parts[len(parts)-1], flags|unix.O_NOFOLLOW|unix.O_CLOEXEC, mode)
	if cur != dirfd {
		unix.Close(cur)
	}
	return fd, err
}

// checkRel refuses paths that are absolute, unclean or climb out.
func checkRel(rel string) error {
	if strings.HasPrefix(rel, "/") || strings.Contains(rel, "\x00") {
		return unix.EXDEV
	}
	for part := range strings.SplitSeq(rel, "/") {
		if part == "" || part == "." || part == ".." {
			return unix.EXDEV
		}
	}
	return nil
}

// OpenDir opens the directory rel below d ("" or "." is d itself, as a new
// handle).
func (d *Dir) OpenDir(rel string) (*Dir, error) {
	fd, err := openat(d.fd, rel, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		return nil, d.pathErr("open", rel, err)
	}
	return newDir(fd, join(d.name, rel)), nil
}

// Open opens the file rel below d with flags (O_RDONLY, O_WRONLY|O_CREAT|
// O_EXCL, ...) and perm for a new file. A symbolic link as the last
// component fails too.
func (d *Dir) Open(rel string, flags int, perm os.FileMode) (*os.File, error) {
	fd, err := openat(d.fd, rel, flags, uint32(perm.Perm()))
	if err != nil {
		return nil, d.pathErr("open", rel, err)
	}
	return os.NewFile(uintptr(fd), join(d.name, rel)), nil
}

// split returns the handle of rel's directory (d itself, or a new one the
// caller closes) and rel's last component.
func (d *Dir) split(rel string) (*Dir, string, func(), error) {
	if rel == "" || rel == "." {
		return d, ".", func() {}, nil
	}
	i := strings.LastIndexByte(rel, '/')
	if i < 0 {
		if err := checkRel(rel); err != nil {
			return nil, "", nil, d.pathErr("lookup", rel, err)
		}
		return d, rel, func() {}, nil
	}
	parent, err := d.OpenDir(rel[:i])
	if err != nil {
		return nil, "", nil, err
	}
	name := rel[i+1:]
	if err := checkRel(name); err != nil {
		parent.Close()
		return nil, "", nil, d.pathErr("lookup", rel, err)
	}
	return parent, name, func() { parent.Close() }, nil
}

// Lstat returns the status of rel itself (a link is not followed).
func (d *Dir) Lstat(rel string) (unix.Stat_t, error) {
	var st unix.Stat_t
	parent, name, done, err := d.split(rel)
	if err != nil {
		return st, err
	}
	defer done()
	if err := unix.Fstatat(parent.fd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return st, d.pathErr("lstat", rel, err)
	}
	return st, nil
}

// Mkdir creates the directory rel.
func (d *Dir) Mkdir(rel string, perm os.FileMode) error {
	parent, name, done, err := d.split(rel)
	if err != nil {
		return err
	}
	defer done()
	if err := unix.Mkdirat(parent.fd, name, uint32(perm.Perm())); err != nil {
		return d.pathErr("mkdir", rel, err)
	}
	return nil
}

// Remove removes the file, link or empty directory rel.
func (d *Dir) Remove(rel string) error {
	parent, name, done, err := d.split(rel)
	if err != nil {
		return err
	}
	defer done()
	err = unix.Unlinkat(parent.fd, name, 0)
	if errors.Is(err, unix.EISDIR) || errors.Is(err, unix.EPERM) {
		if e2 := unix.Unlinkat(parent.fd, name, unix.AT_REMOVEDIR); e2 == nil || !errors.Is(e2, unix.ENOTDIR) {
			err = e2
		}
	}
	if err != nil {
		return d.pathErr("remove", rel, err)
	}
	return nil
}

// Rename renames the entry oldName of d to newName of d, replacing what is
// at newName (never following a link there). Both are single names.
func (d *Dir) Rename(oldName, newName string) error {
	if err := checkRel(oldName); err != nil || strings.Contains(oldName, "/") {
		return d.pathErr("rename", oldName, unix.EXDEV)
	}
	if err := checkRel(newName); err != nil || strings.Contains(newName, "/") {
		return d.pathErr("rename", newName, unix.EXDEV)
	}
	if err := unix.Renameat(d.fd, oldName, d.fd, newName); err != nil {
		return d.pathErr("rename", newName, err)
	}
	return nil
}

// Symlink creates the symbolic link rel pointing to target.
func (d *Dir) Symlink(target, rel string) error {
	parent, name, done, err := d.split(rel)
	if err != nil {
		return err
	}
	defer done()
	if err := unix.Symlinkat(target, parent.fd, name); err != nil {
		return d.pathErr("symlink", rel, err)
	}
	return nil
}

// Readlink returns the target of the symbolic link rel.
func (d *Dir) Readlink(rel string) (string, error) {
	parent, name, done, err := d.split(rel)
	if err != nil {
		return "", err
	}
	defer done()
	for size := 256; ; size *= 2 {
		buf := make([]byte, size)
		n, err := unix.Readlinkat(parent.fd, name, buf)
		if err != nil {
			return "", d.pathErr("readlink", rel, err)
		}
		if n < size {
			return string(buf[:n]), nil
		}
	}
}

// Link makes newRel of dst a hard link to the file rel of d. A symbolic
// link at rel is linked as a link, never followed.
func (d *Dir) Link(rel string, dst *Dir, newRel string) error {
	parent, name, done, err := d.split(rel)
	if err != nil {
		return err
	}
	defer done()
	dparent, dname, ddone, err := dst.split(newRel)
	if err != nil {
		return err
	}
	defer ddone()
	if err := unix.Linkat(parent.fd, name, dparent.fd, dname, 0); err != nil {
		return dst.pathErr("link", newRel, err)
	}
	return nil
}

// ReadDir lists the directory rel ("" for d itself): names with the type
// the directory entry gives (fs.ModeDir, fs.ModeSymlink, 0 for regular
// files, fs.ModeIrregular when unknown), in directory order.
func (d *Dir) ReadDir(rel string) ([]Entry, error) {
	fd, err := openat(d.fd, rel, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		return nil, d.pathErr("open", rel, err)
	}
	f := os.NewFile(uintptr(fd), join(d.name, rel))
	defer f.Close()
	return readEntries(f)
}

// Entries lists d itself, like ReadDir("").
func (d *Dir) Entries() ([]Entry, error) { return d.ReadDir("") }

// Entry is one name of a directory listing.
type Entry struct {
	Name string
	Type fs.FileMode
}

func readEntries(f *os.File) ([]Entry, error) {
	var out []Entry
	for {
		// os.File.ReadDir gives names and types from the directory entries
		// without a stat (its Info would lstat by path, which is not safe).
		des, err := f.ReadDir(1024)
		for _, de := range des {
			out = append(out, Entry{Name: de.Name(), Type: de.Type()})
		}
		if err != nil {
			if errors.Is(err, io.EOF) || len(des) == 0 {
				return out, nil
			}
			return out, err
		}
		if len(des) == 0 {
			return out, nil
		}
	}
}

// Fstatat returns the status of the entry name of d (one component, not
// followed).
func (d *Dir) Fstatat(name string) (unix.Stat_t, error) {
	var st unix.Stat_t
	if err := unix.Fstatat(d.fd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return st, d.pathErr("lstat", name, err)
	}
	return st, nil
}

// SetTimes sets atime and mtime of an open file or directory through its
// descriptor: no path lookup, nanosecond precision.
func SetTimes(f *os.File, mtimeNs int64) error {
	ts := [2]unix.Timespec{unix.NsecToTimespec(mtimeNs), unix.NsecToTimespec(mtimeNs)}
	// utimensat(fd, NULL, ...) is futimens(fd, ...).
	_, _, errno := unix.Syscall6(unix.SYS_UTIMENSAT, f.Fd(), 0, uintptr(unsafe.Pointer(&ts[0])), 0, 0, 0)
	if errno != 0 {
		return &os.PathError{Op: "futimens", Path: f.Name(), Err: errno}
	}
	return nil
}

// ModTime converts a stat's mtime.
func ModTime(st *unix.Stat_t) time.Time { return time.Unix(st.Mtim.Unix()) }

// MkdirAll creates the directory rel and any missing parents below d.
// An existing directory is fine; anything else in the way is an error.
func (d *Dir) MkdirAll(rel string, perm os.FileMode) error {
	if rel == "" || rel == "." {
		return nil
	}
	if err := checkRel(rel); err != nil {
		return d.pathErr("mkdir", rel, err)
	}
	cur, err := d.OpenDir(".")
	if err != nil {
		return err
	}
	defer func() { cur.Close() }()
	for part := range strings.SplitSeq(rel, "/") {
		if err := unix.Mkdirat(cur.fd, part, uint32(perm.Perm())); err != nil && !errors.Is(err, unix.EEXIST) {
			return d.pathErr("mkdir", rel, err)
		}
		next, err := cur.OpenDir(part)
		if err != nil {
			return err
		}
		cur.Close()
		cur = next
	}
	return nil
}

// openPath opens rel with O_PATH: a handle on the entry itself, for
// metadata changes that need no read or write permission on it.
func (d *Dir) openPath(rel string) (int, error) {
	fd, err := openat(d.fd, rel, unix.O_PATH, 0)
	if err != nil {
		return -1, d.pathErr("open", rel, err)
	}
	return fd, nil
}

// procPath names an open descriptor for the calls that have no
// descriptor form for O_PATH handles (chmod, utimensat).
func procPath(fd int) string { return fmt.Sprintf("/proc/self/fd/%d", fd) }

// Chmod sets the permission bits (with setuid, setgid and sticky) of the
// file or directory rel. A symbolic link at rel is refused.
func (d *Dir) Chmod(rel string, mode uint32) error {
	fd, err := d.openPath(rel)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return d.pathErr("chmod", rel, err)
	}
	if st.Mode&unix.S_IFMT == unix.S_IFLNK {
		return d.pathErr("chmod", rel, unix.ELOOP)
	}
	if err := unix.Fchmodat(unix.AT_FDCWD, procPath(fd), mode&0o7777, 0); err != nil {
		return d.pathErr("chmod", rel, err)
	}
	return nil
}

// Chtimes sets atime and mtime of the file or directory rel (a symbolic
// link at rel gets its own times, never its target's).
func (d *Dir) Chtimes(rel string, mtimeNs int64) error {
	parent, name, done, err := d.split(rel)
	if err != nil {
		return err
	}
	defer done()
	ts := []unix.Timespec{unix.NsecToTimespec(mtimeNs), unix.NsecToTimespec(mtimeNs)}
	if err := unix.UtimesNanoAt(parent.fd, name, ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return d.pathErr("chtimes", rel, err)
	}
	return nil
}

// entryPath names the entry name of d for the path-based l* calls that
// have no *at form (extended attributes): the kernel resolves the
// descriptor's magic link to d itself, and the l* call does not follow a
// link at name.
func (d *Dir) entryPath(name string) string {
	return fmt.Sprintf("/proc/self/fd/%d/%s", d.fd, name)
}

// ListXattrs returns the names of the extended attributes of the entry
// name of d (one component; a symbolic link's own). A file system without
// extended attributes gives none.
func (d *Dir) ListXattrs(name string) ([]string, error) {
	p := d.entryPath(name)
	return listXattrs(func(buf []byte) (int, error) { return unix.Llistxattr(p, buf) }, d.pathErr, name)
}

// FileXattrs is ListXattrs for an open file.
func FileXattrs(f Descriptor) ([]string, error) {
	fd := int(f.Fd())
	return listXattrs(func(buf []byte) (int, error) { return unix.Flistxattr(fd, buf) },
		func(op, _ string, err error) error { return &os.PathError{Op: op, Path: f.Name(), Err: err} }, "")
}

// Descriptor is an open file: an *os.File or a *File.
type Descriptor interface {
	Fd() uintptr
	Name() string
}

func listXattrs(list func([]byte) (int, error), wrap func(op, rel string, err error) error, name string) ([]string, error) {
	size := 256
	for {
		buf := make([]byte, size)
		n, err := list(buf)
		switch {
		case errors.Is(err, unix.ERANGE):
			size *= 4
			if size > 1<<20 {
				return nil, wrap("listxattr", name, err)
			}
			continue
		case errors.Is(err, unix.ENOTSUP):
			return nil, nil
		case err != nil:
			return nil, wrap("listxattr", name, err)
		}
		var names []string
		for s := range strings.SplitSeq(string(buf[:n]), "\x00") {
			if s != "" {
				names = append(names, s)
			}
		}
		return names, nil
	}
}

// GetXattr returns the value of the extended attribute attr of the entry
// name of d (a symbolic link's own).
func (d *Dir) GetXattr(name, attr string) ([]byte, error) {
	p := d.entryPath(name)
	return getXattr(func(buf []byte) (int, error) { return unix.Lgetxattr(p, attr, buf) }, func(err error) error { return d.pathErr("getxattr "+attr, name, err) })
}

// FileGetXattr is GetXattr for an open file.
func FileGetXattr(f Descriptor, attr string) ([]byte, error) {
	fd := int(f.Fd())
	return getXattr(func(buf []byte) (int, error) { return unix.Fgetxattr(fd, attr, buf) },
		func(err error) error { return &os.PathError{Op: "getxattr " + attr, Path: f.Name(), Err: err} })
}

func getXattr(get func([]byte) (int, error), wrap func(error) error) ([]byte, error) {
	size := 256
	for {
		buf := make([]byte, size)
		n, err := get(buf)
		if errors.Is(err, unix.ERANGE) && size < 1<<20 {
			size *= 4
			continue
		}
		if err != nil {
			return nil, wrap(err)
		}
		return buf[:n], nil
	}
}

// SetXattr sets the extended attribute attr of the entry name of d (a
// symbolic link's own).
func (d *Dir) SetXattr(name, attr string, value []byte) error {
	if err := unix.Lsetxattr(d.entryPath(name), attr, value, 0); err != nil {
		return d.pathErr("setxattr "+attr, name, err)
	}
	return nil
}

// RemoveXattr removes the extended attribute attr of the entry name of d.
func (d *Dir) RemoveXattr(name, attr string) error {
	if err := unix.Lremovexattr(d.entryPath(name), attr); err != nil {
		return d.pathErr("removexattr "+attr, name, err)
	}
	return nil
}

// Lchown sets the owner and group of the entry name of d (a symbolic
// link's own, never its target's).
func (d *Dir) Lchown(name string, uid, gid int) error {
	if err := unix.Fchownat(d.fd, name, uid, gid, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return d.pathErr("chown", name, err)
	}
	return nil
}

// Mknod creates a FIFO or device node name in d (mode holds the type
// bits, S_IFIFO, S_IFCHR or S_IFBLK, and the permission bits).
func (d *Dir) Mknod(name string, mode uint32, dev uint64) error {
	if err := unix.Mknodat(d.fd, name, mode, int(dev)); err != nil {
		return d.pathErr("mknod", name, err)
	}
	return nil
}

// RemoveAll removes rel and, when it is a directory, everything in it,
// never following a symbolic link (a link is removed as a link).
func (d *Dir) RemoveAll(rel string) error {
	parent, name, done, err := d.split(rel)
	if err != nil {
		return err
	}
	defer done()
	return parent.removeAll(name, 0)
}

// maxRemoveDepth bounds the recursion of RemoveAll.
const maxRemoveDepth = 4096

func (d *Dir) removeAll(name string, depth int) error {
	err := unix.Unlinkat(d.fd, name, 0)
	if err == nil || errors.Is(err, unix.ENOENT) {
		return nil
	}
	if !errors.Is(err, unix.EISDIR) && !errors.Is(err, unix.EPERM) {
		return d.pathErr("remove", name, err)
	}
	if depth >= maxRemoveDepth {
		return d.pathErr("remove", name, unix.ELOOP)
	}
	child, err := d.OpenDir(name)
	if err != nil {
		return err
	}
	entries, err := child.Entries()
	if err == nil {
		for _, e := range entries {
			if err = child.removeAll(e.Name, depth+1); err != nil {
				break
			}
		}
	}
	child.Close()
	if err != nil {
		return err
	}
	if err := unix.Unlinkat(d.fd, name, unix.AT_REMOVEDIR); err != nil && !errors.Is(err, unix.ENOENT) {
		return d.pathErr("remove", name, err)
	}
	return nil
}
