package snapshot

import (
	"bytes"
	"strings"
	"testing"
)

func FuzzDecodeManifest(f *testing.F) {
	h := strings.Repeat("ab", 32)
	f.Add([]byte(`{"version":1,"hash_algorithm":"blake3","root_globs":["**"],"exclude_globs":[],"files":[{"relative_path":"a","file_size":2,"mtime_ns":5,"mode":420,"hexdigest":"","content_b64":"aGk=","stored_file_size":0,"should_be_bundled":false}],"dirs":[],"empty_dirs":["e"],"symlinks":[{"relative_path":"l","target":"a"}],"hashes":[]}`))
	f.Add([]byte(`{"version":1,"hash_algorithm":"blake3","files":[{"relative_path":"d/x","file_size":300,"hexdigest":"` + h + `"}],"hashes":[{"hexdigest":"` + h + `","size":300}],"root":{"relative_path":".","mode":448,"mtime_ns":1}}`))
	f.Add([]byte(`{"version":1,"hash_algorithm":"blake3","files":[{"relative_path":"../x","file_size":0,"hexdigest":""}]}`))
	f.Add([]byte(`{"files":[[[[[[`))
	f.Add([]byte(`{"version":1,"hash_algorithm":"blake3","files":[{"relative_path":"b","file_size":300,"hexdigest":"` + h + `"}],"dirs":[],"empty_dirs":null,"symlinks":[{"relative_path":"l","target":"b"}],"hashes":[{"hexdigest":"` + h + `","size":300}],"base_manifest":"` + h + `","chain_depth":1,"removed":{"files":["a"],"dirs":null,"empty_dirs":["e"],"symlinks":null}}`))
	base, err := DecodeManifest([]byte(`{"version":1,"hash_algorithm":"blake3","root_globs":["**"],"exclude_globs":[],"files":[{"relative_path":"a","file_size":2,"mtime_ns":5,"mode":420,"hexdigest":"","content_b64":"aGk=","stored_file_size":0,"should_be_bundled":false},{"relative_path":"d/x","file_size":300,"hexdigest":"` + h + `"}],"dirs":[{"relative_path":"d","mode":493,"mtime_ns":1}],"empty_dirs":["e"],"symlinks":[{"relative_path":"l","target":"a"}],"hashes":[{"hexdigest":"` + h + `","size":300}]}`))
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := DecodeManifest(data)
		if err != nil {
			return
		}
		if !m.BaseManifest.IsZero() {
			// An incremental manifest applied to a base gives a manifest
			// that validates like any other before anyone uses it.
			b := *base
			b.ChainDepth = m.ChainDepth - 1
			if whole, err := Apply(&b, m); err == nil && whole.Validate() == nil {
				for _, file := range whole.Files {
					if ValidatePath(file.RelativePath) != nil {
						t.Fatalf("applied manifest has unsafe path %q", file.RelativePath)
					}
				}
			}
		}
		// Whatever decodes is safe to restore and survives a round trip.
		for _, file := range m.Files {
			if ValidatePath(file.RelativePath) != nil {
				t.Fatalf("accepted unsafe path %q", file.RelativePath)
			}
		}
		again, err := m.Encode()
		if err != nil {
			t.Fatal(err)
		}
		m2, err := DecodeManifest(again)
		if err != nil {
			t.Fatalf("re-encoded manifest does not decode: %v", err)
		}
		third, _ := m2.Encode()
		if !bytes.Equal(again, third) {
			t.Fatal("encoding is not stable")
		}
	})
}

func FuzzDecodeStatCache(f *testing.F) {
	good := encodeStatCache([]cacheRecord{
		{"a/b", cacheEntry{stat: fileStat{size: 3, mtimeNs: 4, ctimeNs: 5, inode: 6}, content: []byte("abc")}},
		{"big", cacheEntry{stat: fileStat{size: 1 << 20}}},
	})
	f.Add(good)
	f.Add([]byte("DBSC\x01"))
	f.Fuzz(func(t *testing.T, data []byte) {
		table, err := decodeStatCache(data)
		if err != nil {
			return
		}
		for i := range table.len() {
			rel := table.path(i)
			if len(rel) > maxPathLength || len(table.entry(int32(i)).content) > maxEmbeddedSize {
				t.Fatalf("entry %q exceeds limits", rel)
			}
			if j, ok := table.index[rel]; !ok || table.path(int(j)) != rel {
				t.Fatalf("index does not find %q", rel)
			}
		}
	})
}
