package crypt

import (
	"crypto/rand"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"runtime"
	"time"

	"github.com/zeebo/blake3"
	"golang.org/x/crypto/argon2"
)

// MasterKey is a repository's secret: 32 random bytes, stored only
// wrapped in key files.
type MasterKey [32]byte

// NewMasterKey returns a new random master key.
func NewMasterKey() MasterKey {
	var k MasterKey
	if _, err := rand.Read(k[:]); err != nil {
		panic(err)
	}
	return k
}

// Purposes of the keys derived from a master key (BLAKE3 key derivation
// contexts: globally unique, hard-coded, never reused for another use).
const (
	contextSeal = "deltabackup 2026-11-29 repository sealing key"
	contextIDs  = "deltabackup 2026-11-29 repository object id key"
)

// SealKey is the key every stored byte of the repository is sealed with.
func (m *MasterKey) SealKey() Key { return m.derive(contextSeal) }

// IDKey is the key of the keyed BLAKE3 that names objects, so that equal
// contents get equal ids in the repository but nobody without the key
// can compute the id of a known content.
func (m *MasterKey) IDKey() Key { return m.derive(contextIDs) }

func (m *MasterKey) derive(context string) Key {
	var k Key
	blake3.DeriveKey(context, m[:], k[:])
	return k
}

// KDF holds the argon2id parameters of a key file.
type KDF struct {
	Algorithm string `json:"algorithm"` // "argon2id"
	Time      uint32 `json:"time"`
	MemoryKiB uint32 `json:"memory_kib"`
	Threads   uint8  `json:"threads"`
	Salt      []byte `json:"salt"` // 16 bytes, base64 in JSON
}

// Limits on what a key file may claim: beyond any parameters Calibrate
// chooses, so that a hostile key file cannot make opening a repository
// allocate gigabytes or spin for hours.
const (
	maxKDFMemoryKiB = 1 << 20 // 1 GiB
	minKDFMemoryKiB = 8 << 10 // 8 MiB
	maxKDFTime      = 64
	maxKDFThreads   = 16
	saltSize        = 16
	keyFileVersion  = 1
	maxKeyFileSize  = 64 << 10
)

// Check refuses parameters outside the limits a key file may claim.
func (p KDF) Check() error {
	switch {
	case p.Algorithm != "argon2id":
		return fmt.Errorf("unknown key derivation %q", p.Algorithm)
	case p.MemoryKiB < minKDFMemoryKiB || p.MemoryKiB > maxKDFMemoryKiB:
		return fmt.Errorf("argon2id memory of %d KiB is outside %d..%d", p.MemoryKiB, minKDFMemoryKiB, maxKDFMemoryKiB)
	case p.Time < 1 || p.Time > maxKDFTime:
		return fmt.Errorf("argon2id time %d is outside 1..%d", p.Time, maxKDFTime)
	case p.Threads < 1 || p.Threads > maxKDFThreads:
		return fmt.Errorf("argon2id threads %d is outside 1..%d", p.Threads, maxKDFThreads)
	case len(p.Salt) != saltSize:
		return fmt.Errorf("salt of %d bytes, want %d", len(p.Salt), saltSize)
	}
	return nil
}

func (p KDF) key(password []byte) Key {
	var k Key
	copy(k[:], argon2.IDKey(password, p.Salt, p.Time, p.MemoryKiB, p.Threads, uint32(len(k))))
	return k
}

// Calibrate chooses argon2id parameters that take about target on this
// machine with memoryKiB of memory: the number of passes is scaled by
// what the last try took until it settles (a few tries; the first one
// only faults the memory in, which would make passes look dear).
func Calibrate(target time.Duration, memoryKiB uint32) KDF {
	memoryKiB = min(max(memoryKiB, minKDFMemoryKiB), maxKDFMemoryKiB)
	p := KDF{Algorithm: "argon2id", Time: 1, MemoryKiB: memoryKiB, Threads: uint8(min(runtime.NumCPU(), 4)), Salt: make([]byte, saltSize)}
	p.key([]byte("calibration"))
	for range 4 {
		start := time.Now()
		p.key([]byte("calibration"))
		took := time.Since(start)
		if took <= 0 {
			break
		}
		next := uint32(min(max(int64(p.Time)*int64(target)/int64(took), 1), maxKDFTime))
		if next == p.Time || (next > p.Time && next-p.Time <= p.Time/10) || (next < p.Time && p.Time-next <= p.Time/10) {
			break
		}
		p.Time = next
	}
	return p.WithNewSalt()
}

// CheapKDF returns the cheapest parameters a key file may hold (8 MiB,
// one pass: milliseconds to unwrap). For tests and throwaway
// repositories only: a password behind it is as easy to guess as the
// password itself.
func CheapKDF() KDF {
	return KDF{Algorithm: "argon2id", Time: 1, MemoryKiB: minKDFMemoryKiB, Threads: 1}.WithNewSalt()
}

// WithNewSalt returns p's costs with a new random salt: every key file
// gets its own.
func (p KDF) WithNewSalt() KDF {
	p.Salt = make([]byte, saltSize)
	if _, err := rand.Read(p.Salt); err != nil {
		panic(err)
	}
	return p
}

// KeyFile is a master key wrapped under a password: what keys/<id> holds.
type KeyFile struct {
	Version int       `json:"version"`
	Created time.Time `json:"created"`
	// Repository is the id of the repository the key belongs to, bound
	// into the wrapping: a key file copied from another repository does
	// not open here even under the same password.
	Repository string `json:"repository"`
	Host       string `json:"host,omitempty"`
	Username   string `json:"username,omitempty"`
	KDF        KDF    `json:"kdf"`
	// Wrapped is the master key sealed (envelope) under the KDF's key.
	Wrapped []byte `json:"wrapped"`
}

// ErrWrongPassword: the password does not open the key file (or the key
// file's wrapped key was changed, which cannot be told apart).
var ErrWrongPassword = errors.New("wrong password")

// wrapAD binds the wrapped key to its purpose, key file format and
// repository.
func wrapAD(repository string) []byte { return []byte("deltabackup key file v1\x00" + repository) }

// Wrap wraps m, the master key of repository, under password with the KDF
// parameters p (from Calibrate or CheapKDF). Host and username say where
// the key file was made (shown by key list).
func Wrap(m MasterKey, password []byte, p KDF, repository, host, username string) (*KeyFile, error) {
	if err := p.Check(); err != nil {
		return nil, err
	}
	k := p.key(password)
	return &KeyFile{Version: keyFileVersion, Created: time.Now().UTC(), Repository: repository, Host: host, Username: username,
		KDF: p, Wrapped: Seal(&k, m[:], wrapAD(repository))}, nil
}

// Unwrap returns the master key if password opens the key file.
func (f *KeyFile) Unwrap(password []byte) (MasterKey, error) {
	var m MasterKey
	if err := f.KDF.Check(); err != nil {
		return m, fmt.Errorf("key file: %w", err)
	}
	if want := SealedSize(int64(len(m))); int64(len(f.Wrapped)) != want {
		return m, fmt.Errorf("key file: wrapped key of %d bytes, want %d", len(f.Wrapped), want)
	}
	k := f.KDF.key(password)
	plain, err := Open(&k, f.Wrapped, wrapAD(f.Repository))
	if err != nil || len(plain) != len(m) {
		return m, ErrWrongPassword
	}
	copy(m[:], plain)
	return m, nil
}

// Marshal encodes the key file as JSON.
func (f *KeyFile) Marshal() ([]byte, error) { return json.MarshalIndent(f, "", "  ") }

// ParseKeyFile decodes a key file and checks everything it claims before
// any key derivation can run: version, KDF parameters, sizes.
func ParseKeyFile(data []byte) (*KeyFile, error) {
	if len(data) > maxKeyFileSize {
		return nil, fmt.Errorf("key file of %d bytes, more than %d", len(data), maxKeyFileSize)
	}
	var f KeyFile
	if err := json.Unmarshal(data, &f); err != nil {
		return nil, fmt.Errorf("key file: %w", err)
	}
	if f.Version != keyFileVersion {
		return nil, fmt.Errorf("key file version %d, want %d", f.Version, keyFileVersion)
	}
	if err := f.KDF.Check(); err != nil {
		return nil, fmt.Errorf("key file: %w", err)
	}
	if want := SealedSize(int64(len(MasterKey{}))); int64(len(f.Wrapped)) != want {
		return nil, fmt.Errorf("key file: wrapped key of %d bytes, want %d", len(f.Wrapped), want)
	}
	return &f, nil
}

// Equal reports whether two master keys are the same, in constant time.
func (m *MasterKey) Equal(o *MasterKey) bool { return subtle.ConstantTimeCompare(m[:], o[:]) == 1 }

// contextChunker derives the key of the chunker's gear table.
const contextChunker = "deltabackup 2026-11-29 chunker gear table key"

// ChunkerKey keys the gear table of the content-defined chunker, so that
// chunk boundaries (visible as the sizes of sealed chunks) depend on a
// secret and do not reveal which known file a repository holds.
func (m *MasterKey) ChunkerKey() Key { return m.derive(contextChunker) }
