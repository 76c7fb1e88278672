package restore

import (
	"os"

	"golang.org/x/sys/unix"

	"github.com/deltabackup/deltabackup/snapshot/beneath"
)

// preallocateMin: files at least this large get their blocks reserved
// ahead of the writes, which keeps them contiguous and fails early on a
// full disk; preallocateStep is how far ahead.
const (
	preallocateMin  = 1 << 20
	preallocateStep = 64 << 20
)

// preallocate reserves length bytes from offset without changing the
// file's size. Best effort: file systems without fallocate just write.
func preallocate(f *os.File, offset, length int64) {
	_ = unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_KEEP_SIZE, offset, length)
}

// syncFilesystem makes everything written under dir durable with one
// syncfs(2) instead of an fsync per file.
func syncFilesystem(dir *beneath.Dir) error {
	return unix.Syncfs(dir.Fd())
}
