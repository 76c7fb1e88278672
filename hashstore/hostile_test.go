package hashstore

import (
	"bytes"
	"context"
	"errors"
	"io"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/deltabackup/deltabackup/hashstore/crypt"
	"github.com/deltabackup/deltabackup/snapshot/digest"

	"github.com/klauspost/compress/zstd"
)

// maxClaim is what the hostile objects claim to decode to.
const maxClaim = 1 << 32

// allocated returns the bytes fn allocates on the heap.
func allocated(fn func()) uint64 {
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	fn()
	runtime.ReadMemStats(&after)
	return after.TotalAlloc - before.TotalAlloc
}

// TestUntrustedSizesDoNotDriveAllocation stores tiny objects whose headers
// claim huge contents, and oversized or deeply nested records: each must
// be refused as corrupt or invalid without allocating what it claims.
func TestUntrustedSizesDoNotDriveAllocation(t *testing.T) {
	ctx := context.Background()
	const budget = 80 << 20 // the zstd decoder's window bound, with room
	var zstdFrame bytes.Buffer
	enc, _ := zstd.NewWriter(&zstdFrame)
	enc.Write([]byte("tiny"))
	enc.Close()
	objects := map[string][]byte{
		"raw claiming 4 GiB":  append(ObjectHeader{Codec: CodecRaw, DecodedSize: maxClaim}.marshal(), "only ten b"...),
		"zstd claiming 4 GiB": append(ObjectHeader{Codec: CodecZstd, DecodedSize: maxClaim}.marshal(), zstdFrame.Bytes()...),
		"s2 claiming 1 MiB":   append(ObjectHeader{Codec: CodecS2, DecodedSize: maxS2Size}.marshal(), 0x01, 0x00),
		"s2 claiming 64 TiB":  append(ObjectHeader{Codec: CodecS2, DecodedSize: maxDecodedSize}.marshal(), 0x01, 0x00),
		"header only":         ObjectHeader{Codec: CodecRaw, DecodedSize: 1 << 40}.marshal(),
		"truncated header":    []byte("DBOB\x01"),
	}
	for name, stored := range objects {
		t.Run(name, func(t *testing.T) {
			mem := NewMemory()
			s, _ := Init(ctx, mem, testOptions(Options{}))
			key := digest.Of([]byte(name))
			// Sealed with the key: a hostile writer holding it.
			sealed := s.seal.seal(stored, objectAD(key))
			mem.Put(ctx, s.ObjectKey(key), bytes.NewReader(sealed), int64(len(sealed)))
			var err error
			n := allocated(func() { _, err = s.ReadAll(ctx, key, maxClaim) })
			if err == nil {
				t.Fatal("accepted")
			}
			if !errors.Is(err, ErrCorrupt) && !strings.Contains(err.Error(), "limit") {
				t.Errorf("error %v is neither corrupt nor over a limit", err)
			}
			if !strings.Contains(err.Error(), key.String()) {
				t.Errorf("error %v does not name the object", err)
			}
			if n > budget {
				t.Errorf("allocated %d bytes for a %d-byte object", n, len(stored))
			}
		})
	}

	records := map[string]string{
		"oversized":     `{"version":1,"name":"big","node":"` + strings.Repeat("x", maxRecordSize) + `"}`,
		"deeply nested": `{"version":1,"name":"deep","stats":` + strings.Repeat(`{"a":`, 200000) + `1` + strings.Repeat(`}`, 200000) + `}`,
		"huge number":   `{"version":1,"name":"num","stats":{"files":1` + strings.Repeat("0", 5000) + `}}`,
		"not an object": `[` + strings.Repeat(`"x",`, 1000) + `"x"]`,
		"path name":     `{"version":1,"name":"../../etc/passwd","root_hexdigest":"` + digest.Of(nil).String() + `"}`,
		"invalid UTF-8": "{\"version\":1,\"name\":\"ok\",\"node\":\"\xff\xfe\",\"root_hexdigest\":\"zz\"}",
	}
	for name, data := range records {
		t.Run("record "+name, func(t *testing.T) {
			mem := NewMemory()
			s, _ := Init(ctx, mem, testOptions(Options{}))
			recName := strings.Fields(name)[0]
			sealed := s.seal.seal([]byte(data), recordAD(recName)) // a hostile writer holding the key
			mem.Put(ctx, backupKey(recName), bytes.NewReader(sealed), int64(len(sealed)))
			var err error
			n := allocated(func() { _, err = s.Backup(ctx, recName, BackupFilter{}) })
			if err == nil {
				t.Fatal("accepted")
			}
			if !strings.Contains(err.Error(), recName) {
				t.Errorf("error %v does not name the record", err)
			}
			if n > budget {
				t.Errorf("allocated %d bytes for a %d-byte record", n, len(data))
			}
			// The damaged record is left out of the list, not fatal to it.
			good := BackupRecord{Name: "good", Root: digest.Of(nil)}
			if err := s.PutBackup(ctx, good); err != nil {
				t.Fatal(err)
			}
			recs, err := s.Backups(ctx)
			if err != nil || len(recs) != 1 || recs[0].Name != "good" {
				t.Errorf("Backups with a damaged record: %v, %v", recs, err)
			}
		})
	}
}

// TestMetadataBombIsRefusedCheaply is the audit's M6: a metadata object
// (a tree) of a few hundred KB that decodes to 256 MiB of spaces. Every
// reader of trees (ls, restore, verify, gc) reads them with ReadMetadata,
// which must refuse it without holding what it decodes to.
func TestMetadataBombIsRefusedCheaply(t *testing.T) {
	ctx := context.Background()
	s, _ := Init(ctx, NewMemory(), testOptions(Options{}))
	root, _, err := s.PutGenerated(ctx, func(w io.Writer) error {
		spaces := bytes.Repeat([]byte{' '}, 1<<20)
		for range 256 {
			if _, err := w.Write(spaces); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	rec := BackupRecord{Name: "bomb", Root: root, Start: time.Now(), End: time.Now()}
	if err := s.PutBackup(ctx, rec); err != nil {
		t.Fatal(err)
	}
	n := allocated(func() { _, err = s.ReadMetadata(ctx, rec.Root, 1<<30) })
	if err == nil {
		t.Fatal("the bomb was accepted")
	}
	if n > 64<<20 {
		t.Fatalf("reading the bomb allocated %d MiB", n>>20)
	}
	if !strings.Contains(err.Error(), root.String()) {
		t.Errorf("error %v does not name the object", err)
	}
}

// testOptions makes o ready for an encrypted test repository (as
// storetest.Options does for the other packages' tests).
func testOptions(o Options) Options {
	if o.Password == nil {
		o.Password = func(context.Context) ([]byte, error) { return []byte("test password"), nil }
	}
	if o.KDF.Algorithm == "" {
		o.KDF = crypt.CheapKDF()
	}
	return o
}
