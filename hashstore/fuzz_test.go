package hashstore

import (
	"bytes"
	"context"
	"io"
	"strings"
	"testing"

	"github.com/deltabackup/deltabackup/snapshot/digest"
)

func FuzzParseObjectHeader(f *testing.F) {
	f.Add(ObjectHeader{Codec: CodecZstd, DecodedSize: 12345}.marshal())
	f.Add(ObjectHeader{Codec: CodecRaw}.marshal())
	f.Add([]byte("DBOB\x01\x07\x00\x00\xff\xff\xff\xff\xff\xff\xff\xff"))
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := ParseObjectHeader(b)
		if err != nil {
			return
		}
		if h.DecodedSize < 0 || h.DecodedSize > maxDecodedSize {
			t.Fatalf("accepted size %d", h.DecodedSize)
		}
		if !bytes.Equal(h.marshal(), b[:objectHeaderSize]) {
			t.Fatal("header does not round trip")
		}
	})
}

// FuzzObjectDecode feeds arbitrary object bytes, sealed with the
// repository's key (as a node holding the key, but hostile or broken,
// could write them), to the object reader: it must return the content
// that hashes to the key, or an error; never panic, never wrong bytes.
// Opening fails for any bytes not sealed with the key (FuzzOpenEnvelope
// in hashstore/crypt), so only sealed inputs reach the decoder.
func FuzzObjectDecode(f *testing.F) {
	ctx := context.Background()
	content := bytes.Repeat([]byte("fuzz me "), 200)
	key := digest.Of(content)
	// One store for every input: a new one costs a key derivation.
	mem := NewMemory()
	s, err := Init(ctx, mem, testOptions(Options{}))
	if err != nil {
		f.Fatal(err)
	}
	for _, c := range [][]byte{content, []byte("x"), bytes.Repeat([]byte("zstd seed "), 10000)} {
		id := digest.Of(c)
		s.Put(ctx, id, bytes.NewReader(c), int64(len(c)))
		rc, _ := s.backend.Get(ctx, s.ObjectKey(id))
		stored, _ := io.ReadAll(rc)
		plain, err := s.seal.open(stored, objectAD(id))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(plain)
	}
	f.Fuzz(func(t *testing.T, object []byte) {
		sealed := s.seal.seal(object, objectAD(key))
		mem.Put(ctx, s.ObjectKey(key), bytes.NewReader(sealed), int64(len(sealed)))
		got, err := s.ReadAll(ctx, key, 1<<20)
		if err != nil {
			return
		}
		if !bytes.Equal(got, content) {
			t.Fatal("returned bytes that are not the object's content")
		}
	})
}

func FuzzDecodeBackupRecord(f *testing.F) {
	f.Add([]byte(`{"version":1,"name":"n1","root_hexdigest":"` + digest.Of(nil).String() + `","start":"2026-01-01T00:00:00Z","end":"2026-01-01T00:01:00Z","stats":{"files":3}}`))
	f.Add([]byte(`{"version":1,"name":"../../x","root_hexdigest":"zz"}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		rec, err := DecodeBackupRecord(data)
		if err != nil {
			return
		}
		if ValidateBackupName(rec.Name) != nil || rec.Root.IsZero() {
			t.Fatalf("accepted record %+v", rec)
		}
	})
}

func FuzzDecodeIndex(f *testing.F) {
	idx := encodeIndex([]packEntries{{entries: []PackEntry{{Offset: 0, Length: 40, DecodedSize: 30}, {Offset: 40, Length: 17, DecodedSize: 1}}}})
	f.Add(idx)
	f.Add([]byte("DBIX\x01"))
	f.Fuzz(func(t *testing.T, data []byte) {
		packs, err := decodeIndex(data)
		if err != nil {
			return
		}
		for _, p := range packs {
			var end uint64
			for _, e := range p.entries {
				if uint64(e.Offset) < end || e.Length < objectHeaderSize {
					t.Fatalf("accepted overlapping or short entry %+v", e)
				}
				end = uint64(e.Offset) + uint64(e.Length)
			}
		}
	})
}

func FuzzDecodePending(f *testing.F) {
	f.Add([]byte(`{"version":1,"marked":"2026-01-01T00:00:00Z","gc_lock":"locks/exclusive/20260101T000000Z-ab.json","complete":true,` +
		`"waits":["locks/shared/20260101T000000Z-cd.json"],"packs":[{"id":"` + digest.Of([]byte("p")).String() + `","size":100,"freed":60}],` +
		`"loose":[{"name":"` + digest.Of([]byte("o")).String() + `","size":7}]}`))
	f.Add([]byte(`{"version":1,"gc_lock":"locks/exclusive/../../config","waits":["objects/aa/bb"]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := decodePending(data)
		if err != nil {
			return
		}
		if !isLockKey(p.GCLock) {
			t.Fatalf("accepted gc lock %q", p.GCLock)
		}
		for _, w := range p.Waits {
			if !strings.HasPrefix(w, locksPrefix) || strings.Contains(w, "..") {
				t.Fatalf("accepted a wait for %q", w)
			}
		}
		for _, pk := range p.Packs {
			if pk.ID.IsZero() || pk.Freed > pk.Size || pk.Size < 0 {
				t.Fatalf("accepted pack %+v", pk)
			}
		}
		for _, o := range p.Loose {
			if o.Name.IsZero() || o.Size < 0 {
				t.Fatalf("accepted object %+v", o)
			}
		}
	})
}
