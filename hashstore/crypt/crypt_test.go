package crypt

import (
	"bytes"
	"crypto/rand"
	"errors"
	"io"
	"runtime"
	"strconv"
	"testing"
	"time"
)

func testKey(b byte) *Key {
	var k Key
	for i := range k {
		k[i] = b + byte(i)
	}
	return &k
}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

var sizes = []int{0, 1, 100, SegmentSize - 1, SegmentSize, SegmentSize + 1, 2 * SegmentSize, 3*SegmentSize + 777}

func TestEnvelopeRoundTrip(t *testing.T) {
	k := testKey(1)
	for _, n := range sizes {
		plain := randomBytes(n)
		sealed := Seal(k, plain, []byte("object"))
		if int64(len(sealed)) != SealedSize(int64(n)) {
			t.Fatalf("%d bytes sealed to %d, SealedSize says %d", n, len(sealed), SealedSize(int64(n)))
		}
		got, err := Open(k, sealed, []byte("object"))
		if err != nil || !bytes.Equal(got, plain) {
			t.Fatalf("%d bytes: open gave %d bytes, %v", n, len(got), err)
		}
		got, err = OpenInPlace(k, bytes.Clone(sealed), []byte("object"))
		if err != nil || !bytes.Equal(got, plain) {
			t.Fatalf("%d bytes: open in place gave %d bytes, %v", n, len(got), err)
		}
		// The streaming writer writes the same format, in pieces of any size.
		var buf bytes.Buffer
		w := NewWriter(&buf, k, []byte("object"))
		for rest := plain; len(rest) > 0; {
			c := min(len(rest), 1000+len(rest)%7777)
			w.Write(rest[:c])
			rest = rest[c:]
		}
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
		if buf.Len() != len(sealed) {
			t.Fatalf("%d bytes: the writer sealed %d bytes, Seal %d", n, buf.Len(), len(sealed))
		}
		got, err = io.ReadAll(NewReader(bytes.NewReader(buf.Bytes()), k, []byte("object")))
		if err != nil || !bytes.Equal(got, plain) {
			t.Fatalf("%d bytes through writer and reader: %d bytes, %v", n, len(got), err)
		}
	}
}

// TestEnvelopeRefusesEveryChange: a flipped bit anywhere, a cut at any
// segment boundary, segments swapped or repeated, another key and another
// purpose all fail to open, as ErrAuth.
func TestEnvelopeRefusesEveryChange(t *testing.T) {
	k := testKey(2)
	plain := randomBytes(3*SegmentSize + 10)
	ad := []byte("index")
	sealed := Seal(k, plain, ad)
	fails := func(what string, b []byte, key *Key, ad []byte) {
		t.Helper()
		if _, err := Open(key, b, ad); !errors.Is(err, ErrAuth) {
			t.Fatalf("%s: opened (%v)", what, err)
		}
		if _, err := OpenInPlace(key, bytes.Clone(b), ad); !errors.Is(err, ErrAuth) {
			t.Fatalf("%s: opened in place (%v)", what, err)
		}
	}
	for _, at := range []int{0, 1, headerSize - 1, headerSize, headerSize + 5, headerSize + SegmentSize + tagSize - 1, headerSize + SegmentSize + tagSize + 3, len(sealed) - 1} {
		b := bytes.Clone(sealed)
		b[at] ^= 0x10
		fails("bit flipped at "+strconv.Itoa(at), b, k, ad)
	}
	seg := SegmentSize + tagSize
	for cut := 0; cut <= 3; cut++ {
		fails("cut after "+strconv.Itoa(cut)+" segments", sealed[:headerSize+cut*seg], k, ad)
	}
	fails("cut inside the last segment", sealed[:len(sealed)-1], k, ad)
	fails("a byte appended", append(bytes.Clone(sealed), 0), k, ad)
	swapped := bytes.Clone(sealed)
	copy(swapped[headerSize:], sealed[headerSize+seg:headerSize+2*seg])
	copy(swapped[headerSize+seg:], sealed[headerSize:headerSize+seg])
	fails("two segments swapped", swapped, k, ad)
	repeated := append(bytes.Clone(sealed[:headerSize+seg]), sealed[headerSize:]...)
	fails("a segment repeated", repeated, k, ad)
	fails("another key", sealed, testKey(3), ad)
	fails("another purpose", sealed, k, []byte("record"))
	fails("empty", nil, k, ad)
}

func TestSealNeverRepeatsANonce(t *testing.T) {
	k := testKey(4)
	a, b := Seal(k, []byte("same"), nil), Seal(k, []byte("same"), nil)
	if bytes.Equal(a[:headerSize], b[:headerSize]) || bytes.Equal(a, b) {
		t.Fatal("two seals of the same plaintext share their nonce prefix")
	}
}

func TestKeyFileWrapsTheMasterKey(t *testing.T) {
	m := NewMasterKey()
	f, err := Wrap(m, []byte("correct horse"), CheapKDF(), "repo-1", "db-1", "postgres")
	if err != nil {
		t.Fatal(err)
	}
	data, err := f.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(data, m[:]) || bytes.Contains(data, []byte("correct horse")) {
		t.Fatal("the key file holds the master key or the password in the clear")
	}
	parsed, err := ParseKeyFile(data)
	if err != nil {
		t.Fatal(err)
	}
	got, err := parsed.Unwrap([]byte("correct horse"))
	if err != nil || !got.Equal(&m) {
		t.Fatalf("unwrap: %v", err)
	}
	if _, err := parsed.Unwrap([]byte("wrong horse")); !errors.Is(err, ErrWrongPassword) {
		t.Fatalf("wrong password: %v", err)
	}
	parsed.Wrapped[len(parsed.Wrapped)-1] ^= 1
	if _, err := parsed.Unwrap([]byte("correct horse")); !errors.Is(err, ErrWrongPassword) {
		t.Fatalf("changed wrapped key: %v", err)
	}
	// Derived keys differ from each other and from the master key.
	s, i := m.SealKey(), m.IDKey()
	if s == i || bytes.Equal(s[:], m[:]) || bytes.Equal(i[:], m[:]) {
		t.Fatal("derived keys are not distinct")
	}
}

// TestKeyFileClaimingAbsurdParametersIsRefusedFirst: a hostile key file
// cannot make unwrapping allocate or spin: it is refused before argon2id
// runs.
func TestKeyFileClaimingAbsurdParametersIsRefusedFirst(t *testing.T) {
	f, _ := Wrap(NewMasterKey(), []byte("pw"), CheapKDF(), "", "", "")
	for name, change := range map[string]func(*KeyFile){
		"4 GiB of memory":  func(f *KeyFile) { f.KDF.MemoryKiB = 4 << 20 },
		"a million passes": func(f *KeyFile) { f.KDF.Time = 1_000_000 },
		"no threads":       func(f *KeyFile) { f.KDF.Threads = 0 },
		"255 threads":      func(f *KeyFile) { f.KDF.Threads = 255 },
		"short salt":       func(f *KeyFile) { f.KDF.Salt = f.KDF.Salt[:4] },
		"another kdf":      func(f *KeyFile) { f.KDF.Algorithm = "scrypt" },
		"truncated key":    func(f *KeyFile) { f.Wrapped = f.Wrapped[:10] },
	} {
		bad := *f
		bad.KDF.Salt = bytes.Clone(f.KDF.Salt)
		change(&bad)
		data, _ := bad.Marshal()
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		_, perr := ParseKeyFile(data)
		_, uerr := bad.Unwrap([]byte("pw"))
		runtime.ReadMemStats(&after)
		if perr == nil {
			t.Errorf("%s: parsed", name)
		}
		if uerr == nil || errors.Is(uerr, ErrWrongPassword) {
			t.Errorf("%s: unwrap did not refuse the parameters: %v", name, uerr)
		}
		if grown := after.TotalAlloc - before.TotalAlloc; grown > 4<<20 {
			t.Errorf("%s: refusing it allocated %d bytes", name, grown)
		}
	}
	if _, err := ParseKeyFile(bytes.Repeat([]byte(" "), maxKeyFileSize+1)); err == nil {
		t.Error("a key file larger than any real one was parsed")
	}
}

func TestCalibrateStaysWithinLimits(t *testing.T) {
	p := Calibrate(20*time.Millisecond, 16<<10)
	if err := p.Check(); err != nil {
		t.Fatal(err)
	}
	if p.MemoryKiB != 16<<10 {
		t.Fatalf("memory %d KiB, asked for %d", p.MemoryKiB, 16<<10)
	}
	q := Calibrate(20*time.Millisecond, 16<<10)
	if bytes.Equal(p.Salt, q.Salt) {
		t.Fatal("two calibrations share a salt")
	}
}
