package keycache

import (
	"golang.org/x/sys/unix"
)

// Permissions of an entry: everything for its possessor, view, read and
// search for its user (a later process of the same user does not possess
// it), nothing for anyone else (linux/keyctl.h).
const (
	posAll    = 0x3f000000
	usrView   = 0x00010000
	usrRead   = 0x00020000
	usrSearch = 0x00080000
)

func available() bool {
	_, err := unix.KeyctlGetKeyringID(unix.KEY_SPEC_USER_KEYRING, true)
	return err == nil
}

func (k kernel) Load(repository string) []byte {
	id, err := unix.KeyctlSearch(unix.KEY_SPEC_USER_KEYRING, "user", description(repository), 0)
	if err != nil {
		return nil
	}
	buf := make([]byte, 256)
	n, err := unix.KeyctlBuffer(unix.KEYCTL_READ, id, buf, 0)
	if err != nil || n > len(buf) {
		return nil
	}
	return buf[:n]
}

func (k kernel) Save(repository string, entry []byte) {
	id, err := unix.AddKey("user", description(repository), entry, unix.KEY_SPEC_USER_KEYRING)
	if err != nil {
		return
	}
	_ = unix.KeyctlSetperm(id, posAll|usrView|usrRead|usrSearch)
	_, _ = unix.KeyctlInt(unix.KEYCTL_SET_TIMEOUT, id, int(max(k.ttl.Seconds(), 1)), 0, 0)
}
