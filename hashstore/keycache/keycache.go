package keycache

import (
	"time"

	"github.com/deltabackup/deltabackup/hashstore"
)

// description names a repository's entry in the keyring.
func description(repository string) string { return "deltabackup:" + repository }

// Kernel returns a key cache in the user's kernel keyring whose entries
// expire ttl after they were last saved, or nil where the keyring cannot
// be used (another OS, or keyctl refused, as container seccomp profiles
// often do); a nil cache makes every open derive the key.
func Kernel(ttl time.Duration) hashstore.KeyCache {
	if ttl <= 0 || !available() {
		return nil
	}
	return kernel{ttl: ttl}
}

type kernel struct{ ttl time.Duration }
