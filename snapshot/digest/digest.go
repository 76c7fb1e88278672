// Package digest is the content address every other package passes
// around: 32 bytes, written as 64 lower-case hex digits. It is parsed once
// where bytes enter the program (decoders, HTTP handlers, arguments) and
// is never re-validated as a string afterwards. It computes digests (Of,
// Hasher) with the fastest BLAKE3 kernel of the CPU, and imports nothing
// of the project but that kernel (snapshot/internal/treehash), so both
// snapshot and hashstore can use it.
package digest

import (
	"encoding/hex"
	"errors"
	"fmt"
)

// Size is the length of a digest in bytes.
const Size = 32

// Digest is the BLAKE3-256 of a content. The zero Digest means "none"
// (an embedded file has no object); it prints and marshals as "".
type Digest [Size]byte

// ErrInvalid is returned (wrapped) by Parse.
var ErrInvalid = errors.New("not a hexdigest")

// Parse reads 64 lower-case hex digits. Upper case, other lengths and
// anything else are refused: a digest has exactly one spelling, so that
// keys and comparisons never depend on how it was written.
func Parse(s string) (Digest, error) {
	var d Digest
	if len(s) != 2*Size {
		return d, fmt.Errorf("%w: %q has %d characters, want %d", ErrInvalid, truncate(s), len(s), 2*Size)
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return d, fmt.Errorf("%w: %q holds %q", ErrInvalid, truncate(s), c)
		}
	}
	hex.Decode(d[:], []byte(s))
	return d, nil
}

// MustParse is Parse for constants in tests; it panics on invalid input.
func MustParse(s string) Digest {
	d, err := Parse(s)
	if err != nil {
		panic(err)
	}
	return d
}

func truncate(s string) string {
	if len(s) > 80 {
		return s[:80] + "..."
	}
	return s
}

// IsZero reports whether d is the zero Digest ("none").
func (d Digest) IsZero() bool { return d == Digest{} }

// String returns the 64 hex digits, or "" for the zero Digest.
func (d Digest) String() string {
	if d.IsZero() {
		return ""
	}
	return hex.EncodeToString(d[:])
}

// AppendHex appends the 64 hex digits of d (also for the zero Digest).
func (d Digest) AppendHex(b []byte) []byte {
	return hex.AppendEncode(b, d[:])
}

// Short is the first 12 hex digits, for tables.
func (d Digest) Short() string { return hex.EncodeToString(d[:6]) }

// Prefix16 is the first two bytes as a number, for filters.
func (d Digest) Prefix16() uint16 { return uint16(d[0])<<8 | uint16(d[1]) }

// MarshalText writes the hex digits ("" for the zero Digest).
func (d Digest) MarshalText() ([]byte, error) {
	if d.IsZero() {
		return []byte{}, nil
	}
	return d.AppendHex(nil), nil
}

// UnmarshalText reads what MarshalText writes, strictly.
func (d *Digest) UnmarshalText(b []byte) error {
	if len(b) == 0 {
		*d = Digest{}
		return nil
	}
	p, err := Parse(string(b))
	if err != nil {
		return err
	}
	*d = p
	return nil
}

// Compare orders digests by their bytes (as their hex strings sort).
func Compare(a, b Digest) int {
	for i := range a {
		if a[i] != b[i] {
			if a[i] < b[i] {
				return -1
			}
			return 1
		}
	}
	return 0
}
