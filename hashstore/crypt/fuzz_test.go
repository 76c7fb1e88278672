package crypt

import (
	"bytes"
	"errors"
	"testing"
)

// FuzzOpenEnvelope: any bytes either open to what was sealed (the seed's
// own) or fail as ErrAuth; nothing panics or opens to something else.
func FuzzOpenEnvelope(f *testing.F) {
	k := testKey(9)
	for _, n := range []int{0, 5, SegmentSize, SegmentSize + 1} {
		f.Add(Seal(k, bytes.Repeat([]byte{'x'}, n), []byte("ad")))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		plain, err := Open(k, data, []byte("ad"))
		inPlace, errInPlace := OpenInPlace(k, bytes.Clone(data), []byte("ad"))
		if (err == nil) != (errInPlace == nil) || !bytes.Equal(plain, inPlace) {
			t.Fatalf("Open and OpenInPlace disagree: %v / %v", err, errInPlace)
		}
		if err != nil {
			if !errors.Is(err, ErrAuth) {
				t.Fatalf("error not ErrAuth: %v", err)
			}
			return
		}
		// Only genuine seals open: their plaintext is all 'x'.
		if len(bytes.Trim(plain, "x")) != 0 {
			t.Fatalf("forged envelope opened to %q", plain[:min(len(plain), 32)])
		}
	})
}

// FuzzParseKeyFile: a parsed key file has parameters within the limits,
// so unwrapping it costs at most what Calibrate could choose.
func FuzzParseKeyFile(f *testing.F) {
	kf, _ := Wrap(NewMasterKey(), []byte("pw"), CheapKDF(), "r", "h", "u")
	seed, _ := kf.Marshal()
	f.Add(seed)
	f.Add([]byte(`{"version":1,"kdf":{"algorithm":"argon2id","time":4294967295,"memory_kib":4294967295,"threads":255,"salt":"AAAAAAAAAAAAAAAAAAAAAA=="},"wrapped":""}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		kf, err := ParseKeyFile(data)
		if err != nil {
			return
		}
		if err := kf.KDF.Check(); err != nil {
			t.Fatalf("parsed a key file with %v", err)
		}
		if kf.KDF.MemoryKiB > maxKDFMemoryKiB || kf.KDF.Time > maxKDFTime {
			t.Fatal("limits not enforced")
		}
	})
}
