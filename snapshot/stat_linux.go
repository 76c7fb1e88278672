package snapshot

import (
	"syscall"

	"golang.org/x/sys/unix"
)

func statFromSys(st *syscall.Stat_t) fileStat {
	return fileStat{size: st.Size, mtimeNs: st.Mtim.Nano(), ctimeNs: st.Ctim.Nano(), inode: st.Ino}
}

func statFromUnix(st *unix.Stat_t) fileStat {
	return fileStat{size: st.Size, mtimeNs: st.Mtim.Nano(), ctimeNs: st.Ctim.Nano(), inode: st.Ino}
}
