package hashstore

import (
	"crypto/subtle"
	"encoding/hex"
	"slices"

	"github.com/zeebo/blake3"

	"github.com/deltabackup/deltabackup/hashstore/crypt"
)

// KeyCache keeps what Open unwrapped, so that a command run soon after
// another skips the key derivation (argon2id costs about half a second
// by design), as sudo, ssh-agent and gpg-agent spare repeated
// passphrases. It stores opaque entries by repository id; the store
// decides what an entry proves. hashstore/keycache keeps them in the
// Linux kernel's keyring of the user, never in a file.
type KeyCache interface {
	// Load returns the entry of a repository, or nil.
	Load(repository string) []byte
	// Save replaces the entry of a repository.
	Save(repository string, entry []byte)
}

// A key cache entry: version (1) | key file id (32 bytes) | master key
// (32) | check (32), where check is BLAKE3 keyed with the master key of
// "deltabackup key cache v1", the repository id, the key file id and the
// password. An entry is used only when the password given now matches
// its check, and only while its key file is still in the repository: a
// wrong password, or one whose key was removed, does not open the
// repository through the cache. Whoever can read the entry holds the
// master key already, so the check protects only against opening with a
// wrong password, and the password's reuse elsewhere against a fast
// guess (it is keyed with the master key).
const keyCacheEntrySize = 1 + 32 + 32 + 32

func keyCacheCheck(m *crypt.MasterKey, repository, keyID string, password []byte) []byte {
	h, _ := blake3.NewKeyed(m[:])
	h.WriteString("deltabackup key cache v1\x00" + repository + "\x00" + keyID + "\x00")
	h.Write(password)
	return h.Sum(nil)
}

// cacheKey saves the unlocked key in the key cache.
func (s *Store) cacheKey(password []byte) {
	if s.keyCache == nil || s.seal == nil {
		return
	}
	id, err := hex.DecodeString(s.keyID)
	if err != nil || len(id) != 32 {
		return
	}
	entry := make([]byte, 0, keyCacheEntrySize)
	entry = append(entry, 1)
	entry = append(entry, id...)
	entry = append(entry, s.master[:]...)
	entry = append(entry, keyCacheCheck(&s.master, s.config.ID, s.keyID, password)...)
	s.keyCache.Save(s.config.ID, entry)
}

// cachedKey unlocks the store from the key cache if its entry matches
// password and names one of keyIDs (the key files there are now).
func (s *Store) cachedKey(password []byte, keyIDs []string) bool {
	if s.keyCache == nil {
		return false
	}
	entry := s.keyCache.Load(s.config.ID)
	if len(entry) != keyCacheEntrySize || entry[0] != 1 {
		return false
	}
	keyID := hex.EncodeToString(entry[1:33])
	if !slices.Contains(keyIDs, keyID) {
		return false
	}
	var m crypt.MasterKey
	copy(m[:], entry[33:65])
	if subtle.ConstantTimeCompare(entry[65:], keyCacheCheck(&m, s.config.ID, keyID, password)) != 1 {
		return false
	}
	s.unlock(m, keyID)
	return true
}
