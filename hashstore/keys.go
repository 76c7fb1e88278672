package hashstore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/user"
	"runtime/debug"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/deltabackup/deltabackup/hashstore/crypt"
	"github.com/deltabackup/deltabackup/snapshot/digest"
)

// Password errors, for callers that branch on them.
var (
	// ErrWrongPassword: no key file of the repository opens with the
	// password given.
	ErrWrongPassword = crypt.ErrWrongPassword
	// ErrNoPassword: the repository is encrypted and Options.Password was
	// not set (or gave an empty password).
	ErrNoPassword = errors.New("no password given")
	// ErrNotEncrypted: a key operation on a repository without keys.
	ErrNotEncrypted = errors.New("repository is not encrypted")
)

// KeyInfo describes a key file (keys/<id>, id = BLAKE3 of its bytes).
type KeyInfo struct {
	ID       string    `json:"id"`
	Created  time.Time `json:"created"`
	Host     string    `json:"host,omitempty"`
	Username string    `json:"username,omitempty"`
	// Current is the key file this store was opened (or created) with.
	Current bool `json:"current"`
	// MemoryKiB and Passes are its argon2id cost.
	MemoryKiB uint32 `json:"kdf_memory_kib"`
	Passes    uint32 `json:"kdf_passes"`
}

// defaultKDFTime and defaultKDFMemory are what unwrapping a key file
// costs by default: a password guess costs an attacker as much.
const (
	defaultKDFTime   = 500 * time.Millisecond
	defaultKDFMemory = 64 << 10 // KiB
)

var (
	calibrateOnce sync.Once
	calibrated    crypt.KDF
)

// keyKDF returns the parameters for a new key file, with a fresh salt.
func (s *Store) keyKDF() crypt.KDF {
	if s.kdf.Algorithm != "" {
		return s.kdf.WithNewSalt()
	}
	calibrateOnce.Do(func() { calibrated = crypt.Calibrate(defaultKDFTime, defaultKDFMemory) })
	return calibrated.WithNewSalt()
}

// password asks Options.Password.
func (s *Store) password(ctx context.Context) ([]byte, error) {
	if s.passwordFunc == nil {
		return nil, fmt.Errorf("repository is encrypted: %w", ErrNoPassword)
	}
	p, err := s.passwordFunc(ctx)
	if err != nil {
		return nil, err
	}
	if len(p) == 0 {
		return nil, fmt.Errorf("the password is empty: %w", ErrNoPassword)
	}
	return p, nil
}

// unlock makes the store seal with m, unwrapped from key file keyID.
func (s *Store) unlock(m crypt.MasterKey, keyID string) {
	s.master, s.keyID = m, keyID
	s.seal = newSealer(&m)
}

// Encrypted reports whether the store seals what it writes.
func (s *Store) Encrypted() bool { return s.seal != nil }

// readKeyFile reads and checks keys/<id>: its bytes must hash to its
// name and parse within the limits (crypt.ParseKeyFile), so a hostile
// key file costs nothing before it is refused.
func (s *Store) readKeyFile(ctx context.Context, id string) (*crypt.KeyFile, error) {
	data, err := s.readRaw(ctx, keysPrefix+id)
	if err != nil {
		return nil, fmt.Errorf("read key file %s: %w", id, err)
	}
	if got := digest.Of(data).String(); got != id {
		return nil, &damagedKeyError{id, "its bytes hash to " + got + " (changed, truncated or renamed)"}
	}
	kf, err := crypt.ParseKeyFile(data)
	if err != nil {
		return nil, &damagedKeyError{id, err.Error()}
	}
	if kf.Repository != s.config.ID {
		return nil, &damagedKeyError{id, fmt.Sprintf("it belongs to repository %s, not %s", kf.Repository, s.config.ID)}
	}
	return kf, nil
}

// damagedKeyError names a key file that cannot be used at all.
type damagedKeyError struct{ id, reason string }

func (e *damagedKeyError) Error() string {
	return fmt.Sprintf("key file %s%s is damaged: %s", keysPrefix, e.id, e.reason)
}

// Is makes a damaged key file a corruption (ErrCorrupt).
func (e *damagedKeyError) Is(target error) bool { return target == ErrCorrupt }

// keyIDs lists the key files' ids.
func (s *Store) keyIDs(ctx context.Context) ([]string, error) {
	var ids []string
	err := s.backend.List(ctx, keysPrefix, func(info Info) error {
		if id, ok := strings.CutPrefix(info.Key, keysPrefix); ok && len(id) == 2*digest.Size && !strings.Contains(id, "/") {
			ids = append(ids, id)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list key files: %w", err)
	}
	sort.Strings(ids)
	return ids, nil
}

// openKey finds the key file the password opens and unlocks the store.
func (s *Store) openKey(ctx context.Context) error {
	ids, err := s.keyIDs(ctx)
	if err != nil {
		return fmt.Errorf("open repository %s: %w", s, err)
	}
	if len(ids) == 0 {
		return fmt.Errorf("%s: repository is encrypted but holds no key file (%s): %w", s, keysPrefix, ErrCorrupt)
	}
	password, err := s.password(ctx)
	if err != nil {
		return fmt.Errorf("open repository %s: %w", s, err)
	}
	if s.cachedKey(password, ids) {
		s.logger.Debug("master key from the key cache", "key", s.keyID)
		return nil
	}
	var damaged []error
	tried := 0
	for _, id := range ids {
		kf, err := s.readKeyFile(ctx, id)
		var dk *damagedKeyError
		if errors.As(err, &dk) {
			damaged = append(damaged, err)
			continue
		}
		if err != nil {
			return fmt.Errorf("open repository %s: %w", s, err)
		}
		tried++
		m, err := kf.Unwrap(password)
		// argon2id's memory (64 MiB by default) is garbage now: hand it
		// back at once, so it does not stay in the process's footprint
		// under the work that follows.
		debug.FreeOSMemory()
		if errors.Is(err, crypt.ErrWrongPassword) {
			continue
		}
		if err != nil {
			return fmt.Errorf("open repository %s: key file %s: %w", s, id, err)
		}
		for _, d := range damaged {
			s.logger.Warn("skipped a damaged key file", "err", d)
		}
		s.unlock(m, id)
		s.cacheKey(password)
		return nil
	}
	if tried == 0 {
		return fmt.Errorf("open repository %s: no usable key file: %w", s, errors.Join(damaged...))
	}
	msg := fmt.Sprintf("%s: the password opens none of its %d key files", s, tried)
	if len(damaged) > 0 {
		msg += fmt.Sprintf(" (%d more are damaged: %v)", len(damaged), errors.Join(damaged...))
	}
	return fmt.Errorf("%s: %w", msg, ErrWrongPassword)
}

// writeKeyFile wraps the master key under password in a new key file.
func (s *Store) writeKeyFile(ctx context.Context, password []byte) (KeyInfo, error) {
	host := thisProcess().Host
	username := ""
	if u, err := user.Current(); err == nil {
		username = u.Username
	}
	kf, err := crypt.Wrap(s.master, password, s.keyKDF(), s.config.ID, host, username)
	if err != nil {
		return KeyInfo{}, err
	}
	data, err := kf.Marshal()
	if err != nil {
		return KeyInfo{}, err
	}
	id := digest.Of(data).String()
	if err := s.backend.Put(ctx, keysPrefix+id, bytes.NewReader(data), int64(len(data))); err != nil {
		return KeyInfo{}, fmt.Errorf("write key file: %w", err)
	}
	return keyInfo(id, kf, false), nil
}

func keyInfo(id string, kf *crypt.KeyFile, current bool) KeyInfo {
	return KeyInfo{ID: id, Created: kf.Created, Host: kf.Host, Username: kf.Username, Current: current,
		MemoryKiB: kf.KDF.MemoryKiB, Passes: kf.KDF.Time}
}

// Keys lists the key files, oldest first. Damaged ones are errors.
func (s *Store) Keys(ctx context.Context) ([]KeyInfo, error) {
	if !s.Encrypted() {
		return nil, fmt.Errorf("%s: %w", s, ErrNotEncrypted)
	}
	ids, err := s.keyIDs(ctx)
	if err != nil {
		return nil, err
	}
	var infos []KeyInfo
	for _, id := range ids {
		kf, err := s.readKeyFile(ctx, id)
		if err != nil {
			return nil, err
		}
		infos = append(infos, keyInfo(id, kf, id == s.keyID))
	}
	sort.SliceStable(infos, func(i, j int) bool { return infos[i].Created.Before(infos[j].Created) })
	return infos, nil
}

// AddKey wraps the master key under another password, in a new key file.
func (s *Store) AddKey(ctx context.Context, password []byte) (KeyInfo, error) {
	if !s.Encrypted() {
		return KeyInfo{}, fmt.Errorf("%s: %w", s, ErrNotEncrypted)
	}
	if len(password) == 0 {
		return KeyInfo{}, fmt.Errorf("the new password is empty: %w", ErrNoPassword)
	}
	return s.writeKeyFile(ctx, password)
}

// ErrKeyInUse: RemoveKey was asked to remove the key the store was opened
// with (which would leave nothing to open the repository with if it were
// the last; use ChangePassword, or open with another key).
var ErrKeyInUse = errors.New("key is in use")

// RemoveKey removes the key file whose id starts with prefix (unique).
// The key the store was opened with is refused with ErrKeyInUse, so the
// last key can never be removed.
func (s *Store) RemoveKey(ctx context.Context, prefix string) (KeyInfo, error) {
	if !s.Encrypted() {
		return KeyInfo{}, fmt.Errorf("%s: %w", s, ErrNotEncrypted)
	}
	ids, err := s.keyIDs(ctx)
	if err != nil {
		return KeyInfo{}, err
	}
	var match []string
	for _, id := range ids {
		if prefix != "" && strings.HasPrefix(id, prefix) {
			match = append(match, id)
		}
	}
	switch {
	case len(match) == 0:
		return KeyInfo{}, fmt.Errorf("no key file %q: %w", prefix, ErrNotFound)
	case len(match) > 1:
		return KeyInfo{}, fmt.Errorf("key id %q is ambiguous (%d key files start with it)", prefix, len(match))
	case match[0] == s.keyID:
		return KeyInfo{}, fmt.Errorf("key %s opened this repository: %w", match[0], ErrKeyInUse)
	}
	if err := s.checkDeletable(ctx, "key file "+keysPrefix+match[0], keysPrefix+match[0]); err != nil {
		return KeyInfo{}, err
	}
	info := KeyInfo{ID: match[0]}
	if kf, err := s.readKeyFile(ctx, match[0]); err == nil {
		info = keyInfo(match[0], kf, false)
	}
	if err := s.backend.Delete(ctx, keysPrefix+match[0]); err != nil {
		return KeyInfo{}, fmt.Errorf("remove key file %s: %w", match[0], err)
	}
	return info, nil
}

// ChangePassword replaces the key file the store was opened with by one
// under password: the new one is written before the old one is removed.
func (s *Store) ChangePassword(ctx context.Context, password []byte) (KeyInfo, error) {
	if s.Encrypted() {
		if err := s.checkDeletable(ctx, "key file "+keysPrefix+s.keyID+" (the one in use)", keysPrefix+s.keyID); err != nil {
			return KeyInfo{}, err
		}
	}
	info, err := s.AddKey(ctx, password)
	if err != nil {
		return KeyInfo{}, err
	}
	old := s.keyID
	if err := s.backend.Delete(ctx, keysPrefix+old); err != nil {
		return info, fmt.Errorf("new key %s written, but the old key file %s was not removed: %w", info.ID, old, err)
	}
	s.keyID = info.ID
	s.cacheKey(password)
	info.Current = true
	return info, nil
}
