package snapshot

import (
	"os"
	"syscall"
)

func statFromSys(st *syscall.Stat_t) fileStat {
	return fileStat{size: st.Size, mtimeNs: st.Mtim.Nano(), ctimeNs: st.Ctim.Nano(), inode: st.Ino}
}

// unixMode returns the permission bits (with setuid, setgid and sticky) of
// fi, which must come from an lstat or fstat.
func unixMode(fi os.FileInfo) uint32 {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return st.Mode & 0o7777
	}
	return uint32(fi.Mode().Perm())
}

func statOf(fi os.FileInfo) fileStat {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return statFromSys(st)
	}
	return fileStat{size: fi.Size(), mtimeNs: fi.ModTime().UnixNano()}
}

func sameFile(a, b os.FileInfo) bool {
	sa, oka := a.Sys().(*syscall.Stat_t)
	sb, okb := b.Sys().(*syscall.Stat_t)
	return oka && okb && sa.Dev == sb.Dev && sa.Ino == sb.Ino
}

// openNoFollow opens a regular file for reading without following a
// symlink that replaced it, and without blocking on a FIFO that did.
func openNoFollow(path string) (*os.File, error) {
	return os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0)
}
