package hashstore_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/deltabackup/deltabackup/snapshot/digest"

	"github.com/deltabackup/deltabackup/hashstore"
	"github.com/deltabackup/deltabackup/hashstore/storetest"
)

func newStore(t *testing.T) (*hashstore.Store, *hashstore.Memory) {
	t.Helper()
	b := hashstore.NewMemory()
	s, err := hashstore.Init(context.Background(), b, storetest.Options(hashstore.Options{}))
	if err != nil {
		t.Fatal(err)
	}
	return s, b
}

func randomContent(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, 1))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

func compressible(n int) []byte {
	return bytes.Repeat([]byte("the quick brown fox jumps over the lazy dog\n"), n/44+1)[:n]
}

func readObject(t *testing.T, s *hashstore.Store, h digest.Digest) ([]byte, error) {
	t.Helper()
	o, err := s.Get(context.Background(), h)
	if err != nil {
		return nil, err
	}
	defer o.Close()
	return io.ReadAll(o)
}

func storedBytes(t *testing.T, b hashstore.Backend, key string) []byte {
	t.Helper()
	rc, err := b.Get(context.Background(), key)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	data, _ := io.ReadAll(rc)
	return data
}

func TestPutGetRoundTripAndCodec(t *testing.T) {
	s, b := newStore(t)
	cases := []struct {
		name      string
		content   []byte
		wantCodec hashstore.Codec
	}{
		{"empty", nil, hashstore.CodecRaw},
		{"random small", randomContent(1, 5000), hashstore.CodecRaw},
		{"text small", compressible(5000), hashstore.CodecS2},
		{"text medium", compressible(200000), hashstore.CodecS2},
		{"text of 1 MiB", compressible(1 << 20), hashstore.CodecS2},
		{"text above 1 MiB", compressible(1<<20 + 1), hashstore.CodecZstd},
		{"random streamed", randomContent(2, 9<<20), hashstore.CodecRaw},
		{"text streamed", compressible(12 << 20), hashstore.CodecZstd},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			h := digest.Of(c.content)
			res, err := s.Put(context.Background(), h, bytes.NewReader(c.content), int64(len(c.content)))
			if err != nil {
				t.Fatal(err)
			}
			if res.Codec != c.wantCodec {
				t.Errorf("codec %v, want %v", res.Codec, c.wantCodec)
			}
			stored := storedBytes(t, b, s.ObjectKey(h))
			if int64(len(stored)) != res.StoredSize {
				t.Errorf("PutResult.StoredSize %d, backend holds %d bytes", res.StoredSize, len(stored))
			}
			if c.wantCodec != hashstore.CodecRaw && len(stored) > len(c.content)/2 {
				t.Errorf("compressible content stored in %d bytes of %d", len(stored), len(c.content))
			}
			got, err := readObject(t, s, h)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, c.content) {
				t.Fatalf("round trip returned %d bytes that differ from the %d stored", len(got), len(c.content))
			}
		})
	}
}

func TestPutRefusesContentThatDoesNotMatch(t *testing.T) {
	s, b := newStore(t)
	for _, n := range []int{100, 10 << 20} {
		content := randomContent(3, n)
		h := digest.Of(content)
		changed := bytes.Clone(content)
		changed[n/2] ^= 1
		cases := map[string]struct {
			r    io.Reader
			size int64
		}{
			"changed":   {bytes.NewReader(changed), int64(n)},
			"truncated": {bytes.NewReader(content[:n-1]), int64(n)},
			"appended":  {io.MultiReader(bytes.NewReader(content), strings.NewReader("more")), int64(n)},
		}
		for name, c := range cases {
			_, err := s.Put(context.Background(), h, c.r, c.size)
			if !errors.Is(err, hashstore.ErrContentMismatch) {
				t.Errorf("%d bytes %s: Put returned %v, want ErrContentMismatch", n, name, err)
			}
			if _, err := b.Stat(context.Background(), s.ObjectKey(h)); !errors.Is(err, hashstore.ErrNotFound) {
				t.Fatalf("%d bytes %s: an object was stored under the wrong key", n, name)
			}
		}
	}
}

func TestCorruptObjectsAreDetectedAndNamed(t *testing.T) {
	contents := map[string][]byte{"raw": randomContent(4, 3000), "s2": compressible(30000), "zstd": compressible(300000), "streamed": compressible(9 << 20)}
	damage := map[string]func([]byte) []byte{
		"flip payload byte": func(b []byte) []byte { b[len(b)-10] ^= 0x40; return b },
		"flip header size":  func(b []byte) []byte { b[15] ^= 1; return b },
		"bad magic":         func(b []byte) []byte { b[0] = 'X'; return b },
		"truncate":          func(b []byte) []byte { return b[:len(b)-7] },
		"truncate header":   func(b []byte) []byte { return b[:9] },
		"append":            func(b []byte) []byte { return append(b, 1, 2, 3) },
		"empty":             func(b []byte) []byte { return nil },
	}
	for cname, content := range contents {
		for dname, fn := range damage {
			t.Run(cname+"/"+dname, func(t *testing.T) {
				s, b := newStore(t)
				h := digest.Of(content)
				if _, err := s.Put(context.Background(), h, bytes.NewReader(content), int64(len(content))); err != nil {
					t.Fatal(err)
				}
				key := s.ObjectKey(h)
				bad := fn(storedBytes(t, b, key))
				if err := b.Put(context.Background(), key, bytes.NewReader(bad), int64(len(bad))); err != nil {
					t.Fatal(err)
				}
				_, err := readObject(t, s, h)
				if !errors.Is(err, hashstore.ErrCorrupt) {
					t.Fatalf("read of a damaged object returned %v, want ErrCorrupt", err)
				}
				if !strings.Contains(err.Error(), h.String()) {
					t.Fatalf("error %q does not name the object", err)
				}
			})
		}
	}
}

func TestSwappedObjectIsCorrupt(t *testing.T) {
	s, b := newStore(t)
	a, c := []byte(strings.Repeat("a", 500)), []byte(strings.Repeat("c", 500))
	ha, hc := digest.Of(a), digest.Of(c)
	for _, x := range [][]byte{a, c} {
		if _, err := s.Put(context.Background(), digest.Of(x), bytes.NewReader(x), int64(len(x))); err != nil {
			t.Fatal(err)
		}
	}
	other := storedBytes(t, b, s.ObjectKey(hc))
	if err := b.Put(context.Background(), s.ObjectKey(ha), bytes.NewReader(other), int64(len(other))); err != nil {
		t.Fatal(err)
	}
	if _, err := readObject(t, s, ha); !errors.Is(err, hashstore.ErrCorrupt) {
		t.Fatalf("object swapped for another one: %v, want ErrCorrupt", err)
	}
}

func TestMissingAndLookup(t *testing.T) {
	s, _ := newStore(t)
	var have, all []digest.Digest
	for i := range 50 {
		c := randomContent(uint64(100+i), 200)
		h := digest.Of(c)
		all = append(all, h)
		if i%3 == 0 {
			have = append(have, h)
			if _, err := s.Put(context.Background(), h, bytes.NewReader(c), 200); err != nil {
				t.Fatal(err)
			}
		}
	}
	missing, err := s.Missing(context.Background(), append(all, all[1], all[0]))
	if err != nil {
		t.Fatal(err)
	}
	if len(missing) != len(all)-len(have) {
		t.Fatalf("Missing returned %d hashes, want %d", len(missing), len(all)-len(have))
	}
	for i, h := range missing {
		if i > 0 && h == missing[i-1] {
			t.Fatal("Missing returned a duplicate")
		}
	}
	found, err := s.LookupAll(context.Background(), have)
	if err != nil {
		t.Fatal(err)
	}
	for i, h := range have {
		if found[i].StoredSize <= 0 {
			t.Fatalf("LookupAll has no stored size for %s", h)
		}
	}
}

func TestInitAndOpen(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	b := hashstore.NewLocal(dir)
	if _, err := hashstore.Open(ctx, b, storetest.Options(hashstore.Options{})); !errors.Is(err, hashstore.ErrNotRepository) {
		t.Fatalf("Open of an empty dir: %v, want ErrNotRepository", err)
	}
	s, err := hashstore.Init(ctx, b, storetest.Options(hashstore.Options{}))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := hashstore.Init(ctx, b, storetest.Options(hashstore.Options{})); !errors.Is(err, hashstore.ErrRepositoryExists) {
		t.Fatalf("second Init: %v, want ErrRepositoryExists", err)
	}
	s2, err := hashstore.Open(ctx, b, storetest.Options(hashstore.Options{}))
	if err != nil {
		t.Fatal(err)
	}
	if s2.Config().ID != s.Config().ID || len(s.Config().ID) != 32 {
		t.Fatalf("Open read id %q, Init wrote %q", s2.Config().ID, s.Config().ID)
	}

	other := hashstore.NewMemory()
	if err := other.Put(ctx, "photos/cat.jpg", strings.NewReader("meow"), 4); err != nil {
		t.Fatal(err)
	}
	if _, err := hashstore.Init(ctx, other, storetest.Options(hashstore.Options{})); !errors.Is(err, hashstore.ErrRepositoryExists) || !strings.Contains(err.Error(), "not empty") {
		t.Fatalf("Init over unrelated data: %v", err)
	}
	if _, err := hashstore.Open(ctx, other, storetest.Options(hashstore.Options{})); !errors.Is(err, hashstore.ErrNotRepository) {
		t.Fatalf("Open of unrelated data: %v, want ErrNotRepository", err)
	}
	newer := hashstore.NewMemory()
	cfg := `{"id":"x","version":99,"hash_algorithm":"blake3"}`
	if err := newer.Put(ctx, "config", strings.NewReader(cfg), int64(len(cfg))); err != nil {
		t.Fatal(err)
	}
	if _, err := hashstore.Open(ctx, newer, storetest.Options(hashstore.Options{})); !errors.Is(err, hashstore.ErrNewerFormat) {
		t.Fatalf("Open of a newer format: %v", err)
	}
}

func TestBackupRecords(t *testing.T) {
	ctx := context.Background()
	s, b := newStore(t)
	if _, err := s.Backup(ctx, hashstore.LatestBackup, hashstore.BackupFilter{}); !errors.Is(err, hashstore.ErrNotFound) {
		t.Fatalf("latest of an empty repository: %v, want ErrNotFound", err)
	}
	root := digest.Of([]byte("manifest"))
	t0 := time.Date(2026, 11, 1, 3, 0, 0, 0, time.UTC)
	for i, name := range []string{"b-old", "a-new", "c-mid"} {
		end := t0.Add(time.Duration([]int{0, 2, 1}[i]) * time.Hour)
		rec := hashstore.BackupRecord{Name: name, Root: root, Start: end.Add(-time.Minute), End: end, Stats: hashstore.BackupStats{Files: int64(i)}}
		if err := s.PutBackup(ctx, rec); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.PutBackup(ctx, hashstore.BackupRecord{Name: "a-new", Root: root}); !errors.Is(err, hashstore.ErrBackupExists) {
		t.Fatalf("duplicate name: %v, want ErrBackupExists", err)
	}
	for _, bad := range []string{"latest", "../x", "", ".hidden", strings.Repeat("x", 200), "a/b"} {
		if err := s.PutBackup(ctx, hashstore.BackupRecord{Name: bad, Root: root}); err == nil {
			t.Errorf("PutBackup accepted the name %q", bad)
		}
	}
	list, err := s.Backups(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 3 || list[0].Name != "b-old" || list[2].Name != "a-new" {
		t.Fatalf("Backups order: %+v", list)
	}
	latest, err := s.Backup(ctx, "latest", hashstore.BackupFilter{})
	if err != nil || latest.Name != "a-new" || latest.Stats.Files != 1 {
		t.Fatalf("latest = %+v, %v", latest, err)
	}
	if _, err := s.Backup(ctx, "nope", hashstore.BackupFilter{}); !errors.Is(err, hashstore.ErrNotFound) {
		t.Fatalf("unknown backup: %v", err)
	}
	// A record that is not sealed does not open in an encrypted
	// repository; in an unencrypted one, its content is checked.
	bad := `{"version":2,"name":"c-mid","root":"../../etc"}`
	if err := b.Put(ctx, "backups/c-mid.json", strings.NewReader(bad), int64(len(bad))); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Backup(ctx, "c-mid", hashstore.BackupFilter{}); err == nil || !strings.Contains(err.Error(), "does not authenticate") {
		t.Fatalf("unsealed record in an encrypted repository: %v", err)
	}
	plain := hashstore.NewMemory()
	ps, err := hashstore.Init(ctx, plain, hashstore.Options{Unencrypted: true})
	if err != nil {
		t.Fatal(err)
	}
	if err := plain.Put(ctx, "backups/c-mid.json", strings.NewReader(bad), int64(len(bad))); err != nil {
		t.Fatal(err)
	}
	if _, err := ps.Backup(ctx, "c-mid", hashstore.BackupFilter{}); err == nil || !strings.Contains(err.Error(), "not a hexdigest") {
		t.Fatalf("record with a bad root: %v", err)
	}
}

func TestPutGenerated(t *testing.T) {
	s, _ := newStore(t)
	content := compressible(3 << 20)
	h, res, err := s.PutGenerated(context.Background(), func(w io.Writer) error {
		for off := 0; off < len(content); off += 100000 {
			if _, err := w.Write(content[off:min(off+100000, len(content))]); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if h != digest.Of(content) || res.StoredSize >= int64(len(content))/4 {
		t.Fatalf("PutGenerated: key %s, stored %d bytes", h, res.StoredSize)
	}
	got, err := readObject(t, s, h)
	if err != nil || !bytes.Equal(got, content) {
		t.Fatalf("read back: %v", err)
	}
	if _, _, err := s.PutGenerated(context.Background(), func(w io.Writer) error { return errors.New("generator failed") }); err == nil {
		t.Fatal("a failing generator stored something")
	}
}

func TestCompressionLevels(t *testing.T) {
	contents := [][]byte{compressible(3000), compressible(300000), compressible(9 << 20), randomContent(8, 70000)}
	sizes := map[hashstore.Compression]int64{}
	for _, level := range []hashstore.Compression{hashstore.CompressionOff, hashstore.CompressionFast, hashstore.CompressionBetter, hashstore.CompressionMax} {
		b := hashstore.NewMemory()
		s, err := hashstore.Init(context.Background(), b, storetest.Options(hashstore.Options{Compression: level}))
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range contents {
			h := digest.Of(c)
			res, err := s.Put(context.Background(), h, bytes.NewReader(c), int64(len(c)))
			if err != nil {
				t.Fatal(err)
			}
			if level == hashstore.CompressionOff && res.Codec != hashstore.CodecRaw {
				t.Fatalf("compression off stored %v", res.Codec)
			}
			sizes[level] += int64(len(storedBytes(t, b, s.ObjectKey(h))))
			if got, err := readObject(t, s, h); err != nil || !bytes.Equal(got, c) {
				t.Fatalf("%v: round trip: %v", level, err)
			}
		}
	}
	if !(sizes[hashstore.CompressionOff] > sizes[hashstore.CompressionFast] && sizes[hashstore.CompressionFast] >= sizes[hashstore.CompressionMax]) {
		t.Fatalf("stored sizes by level: %v", sizes)
	}
	if _, err := hashstore.ParseCompression("ultra"); err == nil {
		t.Fatal("unknown level accepted")
	}
}

// TestCompressionDecidedAcrossTheContent: pages that begin with dense
// bytes and end in free space (a database table's) are compressed,
// although their first bytes look random; random content is stored raw.
func TestCompressionDecidedAcrossTheContent(t *testing.T) {
	s, _ := newStore(t)
	pages := func(n int) []byte {
		b := make([]byte, n)
		for p := 0; p < n; p += 8192 {
			copy(b[p:], randomContent(uint64(p), 2048))
		}
		return b
	}
	for _, c := range []struct {
		name      string
		content   []byte
		maxStored float64 // share of the content's size
	}{
		{"buffered pages", pages(512 << 10), 0.4},
		{"streamed pages", pages(6 << 20), 0.4},
		{"buffered random", randomContent(5, 512<<10), 1.01},
		{"streamed random", randomContent(6, 6<<20), 1.01},
	} {
		res, err := s.Put(context.Background(), digest.Of(c.content), bytes.NewReader(c.content), int64(len(c.content)))
		if err != nil {
			t.Fatal(err)
		}
		share := float64(res.StoredSize) / float64(len(c.content))
		if share > c.maxStored {
			t.Errorf("%s: stored %.0f%% of its size (%v), want at most %.0f%%", c.name, 100*share, res.Codec, 100*c.maxStored)
		}
		if c.maxStored > 1 && res.Codec != hashstore.CodecRaw {
			t.Errorf("%s: stored as %v, want raw", c.name, res.Codec)
		}
	}
}

// TestObjectLockNeedsStorageThatKeepsIt: a repository whose config asks
// for Object Lock is refused by storage that cannot retain (rather than
// written to without retention), and so is a config whose duration is
// not one.
func TestObjectLockNeedsStorageThatKeepsIt(t *testing.T) {
	ctx := context.Background()
	if _, err := hashstore.Init(ctx, hashstore.NewMemory(), storetest.Options(hashstore.Options{ObjectLock: time.Hour})); err == nil || !strings.Contains(err.Error(), "only s3://") {
		t.Errorf("init with object lock on memory: %v", err)
	}
	for value, want := range map[string]string{"1h": "only s3://", "forever": "not a duration"} {
		b := hashstore.NewMemory()
		cfg := fmt.Sprintf(`{"id":"0123456789abcdef0123456789abcdef","version":2,"hash_algorithm":"blake3","created":"2026-11-29T00:00:00Z","encryption":"none","object_lock":%q}`, value)
		b.Put(ctx, "config", strings.NewReader(cfg), int64(len(cfg)))
		if _, err := hashstore.Open(ctx, b, hashstore.Options{}); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("object_lock %q: %v, want %q", value, err, want)
		}
	}
}
