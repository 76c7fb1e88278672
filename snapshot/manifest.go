package snapshot

import (
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"path"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	jsonv2 "github.com/go-json-experiment/json"

	"github.com/deltabackup/deltabackup/snapshot/digest"
)

// ManifestVersion is the manifest format this package writes and reads.
const ManifestVersion = 1

// HashAlgorithm names the content hash of every hexdigest.
const HashAlgorithm = "blake3"

// Manifest describes one snapshot of a directory. Field names follow
// rohmu's delta-backup models where the concept is the same.
type Manifest struct {
	Version          int       `json:"version"`
	HashAlgorithm    string    `json:"hash_algorithm"`
	RootGlobs        []string  `json:"root_globs"`
	ExcludeGlobs     []string  `json:"exclude_globs"`
	Start            time.Time `json:"start"`
	End              time.Time `json:"end"`
	Node             string    `json:"node,omitempty"`
	MinDeltaFileSize int64     `json:"min_delta_file_size"`
	Files            []File    `json:"files"`
	// Root carries mode and mtime of the source directory itself
	// (relative_path "."), and Dirs those of every directory that holds a
	// selected entry, so a restore puts directory metadata back too.
	Root      *Dir      `json:"root,omitempty"`
	Dirs      []Dir     `json:"dirs"`
	EmptyDirs []string  `json:"empty_dirs"`
	Symlinks  []Symlink `json:"symlinks"`
	Hashes    []Hash    `json:"hashes"`
	// BaseManifest makes this an incremental manifest: it holds only what
	// changed since the manifest object with that hexdigest — entries new
	// or different in Files, Dirs, EmptyDirs and Symlinks (Hashes lists
	// the contents of those Files) and, in Removed, the paths gone from
	// each list. Apply makes the whole manifest of it. ChainDepth counts
	// the manifests down to a whole one; a manifest read through Apply
	// keeps it, so the next incremental one can be numbered.
	BaseManifest digest.Digest `json:"base_manifest,omitzero"`
	ChainDepth   int           `json:"chain_depth,omitempty"`
	Removed      *Removed      `json:"removed,omitempty"`
}

// Removed lists, per list of a manifest, the paths an incremental manifest
// drops from its base. Each list is sorted.
type Removed struct {
	Files     []string `json:"files,omitempty"`
	Dirs      []string `json:"dirs,omitempty"`
	EmptyDirs []string `json:"empty_dirs,omitempty"`
	Symlinks  []string `json:"symlinks,omitempty"`
}

// MaxChainDepth bounds how many incremental manifests a reader follows
// down to a whole one.
const MaxChainDepth = 64

// File is one regular file of a snapshot. Embedded files (at most the embed
// threshold) carry their content and have no hexdigest and no object.
type File struct {
	RelativePath    string        `json:"relative_path"`
	FileSize        int64         `json:"file_size"`
	MtimeNs         int64         `json:"mtime_ns"`
	Mode            uint32        `json:"mode"`
	Hexdigest       digest.Digest `json:"hexdigest"`
	ContentB64      string        `json:"content_b64,omitempty"`
	StoredFileSize  int64         `json:"stored_file_size"`
	ShouldBeBundled bool          `json:"should_be_bundled"`
	// Chunks is reserved for content-defined chunking and is empty in
	// version 1.
	Chunks []Hash `json:"chunks,omitempty"`
}

// Embedded reports whether the file's content is in the manifest.
func (f File) Embedded() bool { return f.Hexdigest.IsZero() }

// Content decodes the content of an embedded file.
func (f File) Content() ([]byte, error) {
	return base64.StdEncoding.DecodeString(f.ContentB64)
}

// Dir is the metadata of one directory.
type Dir struct {
	RelativePath string `json:"relative_path"`
	Mode         uint32 `json:"mode"`
	MtimeNs      int64  `json:"mtime_ns"`
}

// Symlink is a symbolic link, stored as a link and never followed.
type Symlink struct {
	RelativePath string `json:"relative_path"`
	Target       string `json:"target"`
}

// Hash is one distinct content: what must exist in storage for the
// manifest to restore. Size lets a restore balance sources by bytes.
type Hash struct {
	Hexdigest digest.Digest `json:"hexdigest"`
	Size      int64         `json:"size"`
}

// Limits bound what DecodeManifest accepts, so untrusted input cannot
// drive unbounded allocation.
const (
	MaxManifestSize = 1 << 32
	maxEmbeddedSize = 1 << 20
	maxPathLength   = 4096
	maxFileSize     = 1 << 50
)

// Encode returns m as JSON.
func (m *Manifest) Encode() ([]byte, error) {
	return m.AppendJSON(make([]byte, 0, m.encodedSizeHint())), nil
}

// DecodeManifest parses and validates a manifest from untrusted bytes.
func DecodeManifest(data []byte) (*Manifest, error) {
	if len(data) > MaxManifestSize {
		return nil, fmt.Errorf("manifest is %d bytes, more than the limit of %d", len(data), MaxManifestSize)
	}
	// The JSON v2 decoder is twice as fast as encoding/json here, and
	// stricter where untrusted input needs it: invalid UTF-8, duplicate
	// member names, unknown members and trailing data are all errors.
	var m Manifest
	if err := jsonv2.Unmarshal(data, &m, jsonv2.RejectUnknownMembers(true)); err != nil {
		return nil, fmt.Errorf("manifest is not valid JSON: %w", err)
	}
	return m.checked()
}

// MaxManifestExpansion bounds how many times larger than its stored
// (compressed) form a manifest may decode: JSON of paths, sizes and
// random hexdigests compresses about 3 to 10 times. A manifest object
// expanding further is not one this program wrote.
const MaxManifestExpansion = 256

// ReadManifest decodes and validates a manifest from untrusted bytes as
// they are read, without holding the encoded form in memory: memory
// follows the entries, not the bytes (whitespace costs nothing). It reads
// r to its end.
func ReadManifest(r io.Reader) (*Manifest, error) {
	var m Manifest
	rd := &stickyReader{r: io.LimitReader(r, MaxManifestSize+1)}
	if err := jsonv2.UnmarshalRead(rd, &m, jsonv2.RejectUnknownMembers(true)); err != nil {
		if rd.err != nil {
			return nil, rd // the reader's failure (a corrupt object, say), not the JSON's
		}
		return nil, fmt.Errorf("%w: %w", errNotJSON, err)
	}
	return m.checked()
}

// errNotJSON marks a manifest that does not decode.
var errNotJSON = errors.New("manifest is not valid JSON")

// stickyReader remembers the first error of r other than io.EOF; as an
// error, it is that error.
type stickyReader struct {
	r   io.Reader
	err error
}

func (s *stickyReader) Error() string { return s.err.Error() }
func (s *stickyReader) Unwrap() error { return s.err }

func (s *stickyReader) Read(p []byte) (int, error) {
	n, err := s.r.Read(p)
	if err != nil && err != io.EOF && s.err == nil {
		s.err = err
	}
	return n, err
}

// checked validates a decoded manifest.
func (m *Manifest) checked() (*Manifest, error) {
	if err := m.Validate(); err != nil {
		return nil, err
	}
	if m.BaseManifest.IsZero() && (m.ChainDepth != 0 || m.Removed != nil) {
		return nil, errors.New("manifest has chain_depth or removed but no base_manifest")
	}
	return m, nil
}

// ValidatePath checks that p is a clean, relative, slash-separated path
// that stays inside the directory it is relative to.
func ValidatePath(p string) error {
	switch {
	case p == "":
		return errors.New("empty path")
	case len(p) > maxPathLength:
		return fmt.Errorf("path %.60q...: longer than %d bytes", p, maxPathLength)
	case !utf8.ValidString(p):
		return fmt.Errorf("path %q: not valid UTF-8", p)
	case strings.ContainsRune(p, 0):
		return fmt.Errorf("path %q: contains a NUL byte", p)
	case strings.HasPrefix(p, "/"):
		return fmt.Errorf("path %q: absolute", p)
	case p == "." || path.Clean(p) != p:
		return fmt.Errorf("path %q: not clean (use %q)", p, path.Clean(p))
	}
	for part := range strings.SplitSeq(p, "/") {
		if part == ".." {
			return fmt.Errorf("path %q: contains '..'", p)
		}
	}
	return nil
}

// Validate checks everything a restore relies on: supported version, safe
// and unique paths, no entry below a file or symlink, consistent sizes and
// hexdigests. Errors name the offending entry.
func (m *Manifest) Validate() error {
	_, err := m.validate()
	return err
}

// validate is Validate that also returns how many directories it looked
// up to check that no entry lies below a file, for the test that this
// work stays linear in the length of the paths.
func (m *Manifest) validate() (steps int, err error) {
	if m.Version != ManifestVersion {
		return steps, fmt.Errorf("manifest version %d is not supported (want %d)", m.Version, ManifestVersion)
	}
	if m.HashAlgorithm != HashAlgorithm {
		return steps, fmt.Errorf("manifest hash algorithm %q is not supported", m.HashAlgorithm)
	}
	kind := make(map[string]string, len(m.Files)+len(m.Symlinks)+len(m.EmptyDirs))
	claim := func(p, k string) error {
		if err := ValidatePath(p); err != nil {
			return fmt.Errorf("manifest %s entry: %w", k, err)
		}
		if prev, ok := kind[p]; ok {
			return fmt.Errorf("manifest entry %q appears twice (as %s and as %s)", p, prev, k)
		}
		kind[p] = k
		return nil
	}
	sizes := make(map[digest.Digest]int64, len(m.Hashes))
	for _, h := range m.Hashes {
		if h.Hexdigest.IsZero() {
			return steps, errors.New("manifest hash without a hexdigest")
		}
		if h.Size < 0 || h.Size > maxFileSize {
			return steps, fmt.Errorf("manifest hash %s: invalid size %d", h.Hexdigest, h.Size)
		}
		if _, dup := sizes[h.Hexdigest]; dup {
			return steps, fmt.Errorf("manifest hash %s listed twice", h.Hexdigest)
		}
		sizes[h.Hexdigest] = h.Size
	}
	for i, f := range m.Files {
		if err := claim(f.RelativePath, "file"); err != nil {
			return steps, err
		}
		if i > 0 && m.Files[i-1].RelativePath >= f.RelativePath {
			return steps, fmt.Errorf("manifest files are not sorted at %q", f.RelativePath)
		}
		if err := f.validate(sizes); err != nil {
			return steps, fmt.Errorf("manifest file %q: %w", f.RelativePath, err)
		}
	}
	for _, s := range m.Symlinks {
		if err := claim(s.RelativePath, "symlink"); err != nil {
			return steps, err
		}
		if s.Target == "" || strings.ContainsRune(s.Target, 0) || len(s.Target) > maxPathLength || !utf8.ValidString(s.Target) {
			return steps, fmt.Errorf("manifest symlink %q: invalid target %.60q", s.RelativePath, s.Target)
		}
	}
	for _, d := range m.EmptyDirs {
		if err := claim(d, "empty dir"); err != nil {
			return steps, err
		}
	}
	dirSeen := make(map[string]bool, len(m.Dirs))
	for _, d := range m.Dirs {
		if err := ValidatePath(d.RelativePath); err != nil {
			return steps, fmt.Errorf("manifest dir entry: %w", err)
		}
		if k, ok := kind[d.RelativePath]; (ok && k != "empty dir") || dirSeen[d.RelativePath] {
			return steps, fmt.Errorf("manifest dir %q is also a %s or listed twice", d.RelativePath, k)
		}
		dirSeen[d.RelativePath] = true
		if d.Mode > 0o7777 {
			return steps, fmt.Errorf("manifest dir %q: invalid mode %o", d.RelativePath, d.Mode)
		}
	}
	if err := m.validateIncremental(); err != nil {
		return steps, err
	}
	if m.Root != nil && (m.Root.RelativePath != "." || m.Root.Mode > 0o7777) {
		return steps, fmt.Errorf("manifest root entry must have relative_path \".\" and a valid mode, has %q and %o", m.Root.RelativePath, m.Root.Mode)
	}
	// No entry may live below a file or a symlink: writing it would mean
	// writing through that file or link. Each directory on the way is
	// looked at once, so the check is linear in the total length of the
	// paths, however deep they are.
	clear := make(map[string]bool, len(m.Dirs))
	below := func(p string) error {
		for i := strings.LastIndexByte(p, '/'); i > 0; i = strings.LastIndexByte(p[:i], '/') {
			parent := p[:i]
			if clear[parent] {
				return nil
			}
			steps++
			if k := kind[parent]; k == "file" || k == "symlink" {
				return fmt.Errorf("manifest entry %q lies below %s %q", p, k, parent)
			}
			clear[parent] = true
		}
		return nil
	}
	for p := range kind {
		if err := below(p); err != nil {
			return steps, err
		}
	}
	for _, d := range m.Dirs {
		if err := below(d.RelativePath); err != nil {
			return steps, err
		}
	}
	return steps, nil
}

func (f File) validate(sizes map[digest.Digest]int64) error {
	if f.FileSize < 0 || f.FileSize > maxFileSize {
		return fmt.Errorf("invalid size %d", f.FileSize)
	}
	if f.Mode > 0o7777 {
		return fmt.Errorf("invalid mode %o", f.Mode)
	}
	if f.StoredFileSize < 0 {
		return fmt.Errorf("invalid stored size %d", f.StoredFileSize)
	}
	if len(f.Chunks) > 0 {
		return errors.New("chunks are not supported in manifest version 1")
	}
	if f.Embedded() {
		if f.FileSize > maxEmbeddedSize || int64(base64.StdEncoding.DecodedLen(len(f.ContentB64))) > maxEmbeddedSize+3 {
			return fmt.Errorf("embedded content of %d bytes exceeds the limit of %d", f.FileSize, maxEmbeddedSize)
		}
		content, err := f.Content()
		if err != nil {
			return fmt.Errorf("content_b64: %w", err)
		}
		if int64(len(content)) != f.FileSize {
			return fmt.Errorf("embedded content is %d bytes, file_size says %d", len(content), f.FileSize)
		}
		return nil
	}
	if f.ContentB64 != "" {
		return errors.New("has both a hexdigest and embedded content")
	}
	size, ok := sizes[f.Hexdigest]
	if !ok {
		return fmt.Errorf("hexdigest %s is not listed in hashes", f.Hexdigest)
	}
	if size != f.FileSize {
		return fmt.Errorf("file_size %d differs from the size %d listed for %s", f.FileSize, size, f.Hexdigest)
	}
	return nil
}

// SetHashes recomputes Hashes from Files: the distinct contents that have
// objects, sorted by hexdigest.
func (m *Manifest) SetHashes() {
	seen := make(map[digest.Digest]bool)
	m.Hashes = m.Hashes[:0]
	for _, f := range m.Files {
		if !f.Embedded() && !seen[f.Hexdigest] {
			seen[f.Hexdigest] = true
			m.Hashes = append(m.Hashes, Hash{Hexdigest: f.Hexdigest, Size: f.FileSize})
		}
	}
	slices.SortFunc(m.Hashes, func(a, b Hash) int { return digest.Compare(a.Hexdigest, b.Hexdigest) })
}

// TotalBytes is the sum of all file sizes.
func (m *Manifest) TotalBytes() int64 {
	var n int64
	for _, f := range m.Files {
		n += f.FileSize
	}
	return n
}
