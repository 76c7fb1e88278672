package hashstore

import (
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"strconv"
	"strings"

	"github.com/zeebo/blake3"
)

// Subset selects part of a repository's data for Verify to read, so that
// N nights together read all of it without one night paying for all:
// "n/m" is the n-th of m disjoint parts that together cover everything,
// the same part every time for an unchanged repository; "p%" is a random
// p percent, chosen anew on every run. The unit of choice is a pack (all
// of its objects are read, or none) or a loose object.
type Subset struct {
	N, M    int
	Percent float64
	salt    [16]byte
}

// ParseSubset reads "n/m" (1 ≤ n ≤ m) or "p%" (0 < p ≤ 100).
func ParseSubset(s string) (Subset, error) {
	if p, ok := strings.CutSuffix(s, "%"); ok {
		v, err := strconv.ParseFloat(p, 64)
		if err != nil || !(v > 0 && v <= 100) {
			return Subset{}, fmt.Errorf("subset %q: want a percentage above 0 and at most 100", s)
		}
		sub := Subset{Percent: v}
		if _, err := rand.Read(sub.salt[:]); err != nil {
			return Subset{}, err
		}
		return sub, nil
	}
	ns, ms, ok := strings.Cut(s, "/")
	n, err1 := strconv.Atoi(ns)
	m, err2 := strconv.Atoi(ms)
	if !ok || err1 != nil || err2 != nil || m < 1 || n < 1 || n > m {
		return Subset{}, fmt.Errorf("subset %q: want n/m with 1 <= n <= m, or p%%", s)
	}
	return Subset{N: n, M: m}, nil
}

// IsZero reports whether the subset is unset (read everything).
func (s Subset) IsZero() bool { return s.M == 0 && s.Percent == 0 }

func (s Subset) String() string {
	switch {
	case s.M > 0:
		return fmt.Sprintf("%d/%d", s.N, s.M)
	case s.Percent > 0:
		return strconv.FormatFloat(s.Percent, 'g', -1, 64) + "%"
	}
	return "all"
}

// Contains reports whether the unit named by key (a pack's or a loose
// object's storage key) belongs to the subset. Keys are spread evenly by
// hashing them, so each part holds about 1/m of the units whatever the
// keys look like.
func (s Subset) Contains(key string) bool {
	switch {
	case s.M > 0:
		h := blake3.Sum256([]byte(key))
		return binary.LittleEndian.Uint64(h[:8])%uint64(s.M) == uint64(s.N-1)
	case s.Percent > 0:
		h := blake3.New()
		h.Write(s.salt[:])
		h.Write([]byte(key))
		var sum [32]byte
		h.Sum(sum[:0])
		// The top 53 bits as a fraction in [0, 1).
		f := float64(binary.LittleEndian.Uint64(sum[:8])>>11) / (1 << 53)
		return f < s.Percent/100
	}
	return true
}
