package restore

import (
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

// preallocateMin: files at least this large get their blocks reserved up
// front, which keeps them contiguous and fails early on a full disk.
const preallocateMin = 1 << 20

func preallocate(f *os.File, size int64) {
	if size >= preallocateMin {
		// Best effort: file systems without fallocate just write as usual.
		_ = unix.Fallocate(int(f.Fd()), 0, 0, size)
	}
}

// syncFilesystem makes everything written under dir durable with one
// syncfs(2) instead of an fsync per file.
func syncFilesystem(dir *os.Root) error {
	f, err := dir.Open(".")
	if err != nil {
		return err
	}
	defer f.Close()
	return unix.Syncfs(int(f.Fd()))
}

// setFileMtime sets atime and mtime of an open file with utimensat(fd,
// NULL, ...): no path lookup, nanosecond precision.
func setFileMtime(f *os.File, mtimeNs int64) error {
	ts := [2]unix.Timespec{unix.NsecToTimespec(mtimeNs), unix.NsecToTimespec(mtimeNs)}
	_, _, errno := unix.Syscall6(unix.SYS_UTIMENSAT, f.Fd(), 0, uintptr(unsafe.Pointer(&ts[0])), 0, 0, 0)
	if errno != 0 {
		return &os.PathError{Op: "futimens", Path: f.Name(), Err: errno}
	}
	return nil
}
