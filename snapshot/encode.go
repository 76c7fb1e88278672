package snapshot

import (
	"io"
	"strconv"
	"time"
	"unicode/utf8"
)

// AppendJSON appends m as JSON to buf. It writes what encoding/json would
// decode back into m, without reflection, because a manifest of a million
// files is encoded on every backup.
func (m *Manifest) AppendJSON(buf []byte) []byte {
	buf, _ = m.encode(buf, nil)
	return buf
}

// WriteJSON writes m as JSON to w in pieces of about 64 KiB, so that the
// whole encoding is never held in memory.
func (m *Manifest) WriteJSON(w io.Writer) error {
	_, err := m.encode(make([]byte, 0, 80<<10), func(buf []byte, final bool) ([]byte, error) {
		if len(buf) < 64<<10 && !final {
			return buf, nil
		}
		_, err := w.Write(buf)
		return buf[:0], err
	})
	return err
}

// encode appends m to buf, calling flush (when not nil) after each element
// and with final set at the end; flush returns the buffer to go on with.
func (m *Manifest) encode(buf []byte, flush func(buf []byte, final bool) ([]byte, error)) ([]byte, error) {
	var err error
	step := func() {
		if flush != nil && err == nil {
			buf, err = flush(buf, false)
		}
	}
	buf = append(buf, `{"version":`...)
	buf = strconv.AppendInt(buf, int64(m.Version), 10)
	buf = append(buf, `,"hash_algorithm":`...)
	buf = appendString(buf, m.HashAlgorithm)
	buf = append(buf, `,"root_globs":`...)
	buf = appendStrings(buf, m.RootGlobs)
	buf = append(buf, `,"exclude_globs":`...)
	buf = appendStrings(buf, m.ExcludeGlobs)
	buf = append(buf, `,"start":`...)
	buf = appendTime(buf, m.Start)
	buf = append(buf, `,"end":`...)
	buf = appendTime(buf, m.End)
	if m.Node != "" {
		buf = append(buf, `,"node":`...)
		buf = appendString(buf, m.Node)
	}
	buf = append(buf, `,"min_delta_file_size":`...)
	buf = strconv.AppendInt(buf, m.MinDeltaFileSize, 10)
	buf = append(buf, `,"files":[`...)
	for i := range m.Files {
		if i > 0 {
			buf = append(buf, ',')
		}
		buf = m.Files[i].appendJSON(buf)
		step()
	}
	buf = append(buf, ']')
	if m.Root != nil {
		buf = append(buf, `,"root":`...)
		buf = m.Root.appendJSON(buf)
	}
	buf = append(buf, `,"dirs":[`...)
	for i, d := range m.Dirs {
		if i > 0 {
			buf = append(buf, ',')
		}
		buf = d.appendJSON(buf)
		step()
	}
	buf = append(buf, `],"empty_dirs":`...)
	buf = appendStrings(buf, m.EmptyDirs)
	buf = append(buf, `,"symlinks":[`...)
	for i, s := range m.Symlinks {
		if i > 0 {
			buf = append(buf, ',')
		}
		buf = append(buf, `{"relative_path":`...)
		buf = appendString(buf, s.RelativePath)
		buf = append(buf, `,"target":`...)
		buf = appendString(buf, s.Target)
		buf = append(buf, '}')
		step()
	}
	buf = append(buf, `],"hashes":[`...)
	for i, h := range m.Hashes {
		if i > 0 {
			buf = append(buf, ',')
		}
		buf = h.appendJSON(buf)
		step()
	}
	buf = append(buf, ']')
	if !m.BaseManifest.IsZero() {
		buf = append(buf, `,"base_manifest":"`...)
		buf = m.BaseManifest.AppendHex(buf)
		buf = append(buf, '"')
		buf = append(buf, `,"chain_depth":`...)
		buf = strconv.AppendInt(buf, int64(m.ChainDepth), 10)
		if r := m.Removed; r != nil {
			buf = append(buf, `,"removed":{"files":`...)
			buf = appendStrings(buf, r.Files)
			buf = append(buf, `,"dirs":`...)
			buf = appendStrings(buf, r.Dirs)
			buf = append(buf, `,"empty_dirs":`...)
			buf = appendStrings(buf, r.EmptyDirs)
			buf = append(buf, `,"symlinks":`...)
			buf = appendStrings(buf, r.Symlinks)
			buf = append(buf, '}')
		}
	}
	buf = append(buf, '}')
	if flush != nil && err == nil {
		buf, err = flush(buf, true)
	}
	return buf, err
}

func (f *File) appendJSON(buf []byte) []byte {
	buf = append(buf, `{"relative_path":`...)
	buf = appendString(buf, f.RelativePath)
	buf = append(buf, `,"file_size":`...)
	buf = strconv.AppendInt(buf, f.FileSize, 10)
	buf = append(buf, `,"mtime_ns":`...)
	buf = strconv.AppendInt(buf, f.MtimeNs, 10)
	buf = append(buf, `,"mode":`...)
	buf = strconv.AppendUint(buf, uint64(f.Mode), 10)
	buf = append(buf, `,"hexdigest":"`...)
	if !f.Embedded() {
		buf = f.Hexdigest.AppendHex(buf) // hex: nothing to escape
	}
	buf = append(buf, '"')
	if f.ContentB64 != "" {
		buf = append(buf, `,"content_b64":"`...)
		buf = append(buf, f.ContentB64...) // base64: nothing to escape
		buf = append(buf, '"')
	}
	buf = append(buf, `,"stored_file_size":`...)
	buf = strconv.AppendInt(buf, f.StoredFileSize, 10)
	buf = append(buf, `,"should_be_bundled":`...)
	buf = strconv.AppendBool(buf, f.ShouldBeBundled)
	if len(f.Chunks) > 0 {
		buf = append(buf, `,"chunks":[`...)
		for i, c := range f.Chunks {
			if i > 0 {
				buf = append(buf, ',')
			}
			buf = c.appendJSON(buf)
		}
		buf = append(buf, ']')
	}
	return append(buf, '}')
}

func (d *Dir) appendJSON(buf []byte) []byte {
	buf = append(buf, `{"relative_path":`...)
	buf = appendString(buf, d.RelativePath)
	buf = append(buf, `,"mode":`...)
	buf = strconv.AppendUint(buf, uint64(d.Mode), 10)
	buf = append(buf, `,"mtime_ns":`...)
	buf = strconv.AppendInt(buf, d.MtimeNs, 10)
	return append(buf, '}')
}

func (h *Hash) appendJSON(buf []byte) []byte {
	buf = append(buf, `{"hexdigest":"`...)
	buf = h.Hexdigest.AppendHex(buf)
	buf = append(buf, `","size":`...)
	buf = strconv.AppendInt(buf, h.Size, 10)
	return append(buf, '}')
}

func appendStrings(buf []byte, ss []string) []byte {
	if ss == nil {
		return append(buf, "null"...)
	}
	buf = append(buf, '[')
	for i, s := range ss {
		if i > 0 {
			buf = append(buf, ',')
		}
		buf = appendString(buf, s)
	}
	return append(buf, ']')
}

func appendTime(buf []byte, t time.Time) []byte {
	buf = append(buf, '"')
	buf = t.AppendFormat(buf, time.RFC3339Nano)
	return append(buf, '"')
}

const hexDigits = "0123456789abcdef"

// appendString appends s as a JSON string. s must be valid UTF-8 (the
// manifest's validation guarantees it): invalid bytes would be replaced by
// any JSON decoder, silently changing a path or a symlink target.
func appendString(buf []byte, s string) []byte {
	buf = append(buf, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c >= utf8.RuneSelf {
			r, size := utf8.DecodeRuneInString(s[i:])
			if r == '\u2028' || r == '\u2029' {
				buf = append(buf, s[start:i]...)
				buf = append(buf, `\u202`...)
				buf = append(buf, hexDigits[r&0xf])
				start = i + size
			}
			i += size
			continue
		}
		if c >= 0x20 && c != '"' && c != '\\' {
			i++
			continue
		}
		buf = append(buf, s[start:i]...)
		switch c {
		case '"', '\\':
			buf = append(buf, '\\', c)
		case '\n':
			buf = append(buf, '\\', 'n')
		case '\r':
			buf = append(buf, '\\', 'r')
		case '\t':
			buf = append(buf, '\\', 't')
		default:
			buf = append(buf, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
		}
		i++
		start = i
	}
	buf = append(buf, s[start:]...)
	return append(buf, '"')
}

// encodedSizeHint estimates the JSON size of m, to allocate once.
func (m *Manifest) encodedSizeHint() int {
	n := 512
	for i := range m.Files {
		n += len(m.Files[i].RelativePath) + len(m.Files[i].ContentB64) + 190
	}
	for i := range m.Dirs {
		n += len(m.Dirs[i].RelativePath) + 60
	}
	for i := range m.Symlinks {
		n += len(m.Symlinks[i].RelativePath) + len(m.Symlinks[i].Target) + 40
	}
	n += 100 * len(m.Hashes)
	return n
}
