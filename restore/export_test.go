package restore

import "os"

// SetEuidForTest makes restores act as the user uid (-1: the real one).
func SetEuidForTest(uid int) {
	if uid < 0 {
		geteuid = os.Geteuid
		return
	}
	geteuid = func() int { return uid }
}

// ResumeName is the temporary name a chunked file is put together under.
var ResumeName = resumeName
