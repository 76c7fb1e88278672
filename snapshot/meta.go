package snapshot

import (
	"errors"
	"io"
	"os/user"
	"slices"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/deltabackup/deltabackup/snapshot/beneath"
)

// owners turns uids and gids into names once per run: a restore on
// another machine maps owners by name where the name exists there.
type owners struct {
	mu     sync.Mutex
	users  map[uint32]string
	groups map[uint32]string
}

func newOwners() *owners {
	return &owners{users: map[uint32]string{}, groups: map[uint32]string{}}
}

func (o *owners) user(uid uint32) string {
	o.mu.Lock()
	defer o.mu.Unlock()
	name, ok := o.users[uid]
	if !ok {
		if u, err := user.LookupId(strconv.FormatUint(uint64(uid), 10)); err == nil && len(u.Username) <= maxOwnerName && !strings.ContainsRune(u.Username, 0) {
			name = u.Username
		}
		o.users[uid] = name
	}
	return name
}

func (o *owners) group(gid uint32) string {
	o.mu.Lock()
	defer o.mu.Unlock()
	name, ok := o.groups[gid]
	if !ok {
		if g, err := user.LookupGroupId(strconv.FormatUint(uint64(gid), 10)); err == nil && len(g.Name) <= maxOwnerName && !strings.ContainsRune(g.Name, 0) {
			name = g.Name
		}
		o.groups[gid] = name
	}
	return name
}

// readXattrs reads the extended attributes names lists with get, keeping
// those a tree may hold, sorted by name. An attribute that vanished
// between the listing and the read is left out.
func readXattrs(names []string, get func(attr string) ([]byte, error)) ([]Xattr, error) {
	var out []Xattr
	for _, name := range names {
		if !XattrAllowed(name) || len(name) > maxNameLength {
			continue
		}
		value, err := get(name)
		if errors.Is(err, unix.ENODATA) {
			continue
		}
		if err != nil {
			return nil, err
		}
		if len(value) > maxXattrValue {
			continue
		}
		out = append(out, Xattr{Name: name, Value: value})
	}
	slices.SortFunc(out, func(a, b Xattr) int { return strings.Compare(a.Name, b.Name) })
	return out, nil
}

// entryXattrs reads the extended attributes of the entry name of d.
func entryXattrs(d *beneath.Dir, name string) ([]Xattr, error) {
	names, err := d.ListXattrs(name)
	if err != nil || len(names) == 0 {
		return nil, err
	}
	return readXattrs(names, func(attr string) ([]byte, error) { return d.GetXattr(name, attr) })
}

// fileXattrs reads the extended attributes of an open file or directory.
func fileXattrs(f beneath.Descriptor) ([]Xattr, error) {
	names, err := beneath.FileXattrs(f)
	if err != nil || len(names) == 0 {
		return nil, err
	}
	return readXattrs(names, func(attr string) ([]byte, error) { return beneath.FileGetXattr(f, attr) })
}

// DataRanges returns the data ranges of an open file of size bytes that
// may be sparse (fewer blocks than its size needs), or nil when it has no
// holes or the file system cannot tell. The ranges come from
// SEEK_DATA/SEEK_HOLE, so they are as fine as the file system's
// allocation. The file offset is left at the start.
func DataRanges(f beneath.Descriptor, size int64) ([]Range, error) {
	fd := int(f.Fd())
	var out []Range
	for off := int64(0); off < size; {
		data, err := unix.Seek(fd, off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			break // no data after off: a hole to the end
		}
		if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.EOPNOTSUPP) {
			return nil, nil // no hole support: treat as dense
		}
		if err != nil {
			return nil, err
		}
		hole, err := unix.Seek(fd, data, unix.SEEK_HOLE)
		if err != nil {
			return nil, err
		}
		hole = min(hole, size)
		if hole > data {
			out = append(out, Range{Offset: data, Length: hole - data})
		}
		off = hole
	}
	if _, err := unix.Seek(fd, 0, io.SeekStart); err != nil {
		return nil, err
	}
	if len(out) == 1 && out[0].Offset == 0 && out[0].Length == size {
		return nil, nil
	}
	if out == nil {
		out = []Range{}
	}
	return out, nil
}

// rangeReader reads the data ranges of a file one after the other with
// pread, so it does not depend on (or move) the file offset.
type rangeReader struct {
	f      io.ReaderAt
	ranges []Range
	off    int64 // within ranges[0]
}

// newDataReader reads the data of f: its ranges when sparse, else its
// size bytes from the start.
func newDataReader(f io.ReaderAt, size int64, sparse bool, ranges []Range) io.Reader {
	return RangeReader(f, dataLayout(size, sparse, ranges))
}

// RangeReader reads the ranges of f one after the other, with pread; a
// range that ends early (the file shrank) is io.ErrUnexpectedEOF.
func RangeReader(f io.ReaderAt, ranges []Range) io.Reader {
	return &rangeReader{f: f, ranges: ranges}
}

func (r *rangeReader) Read(p []byte) (int, error) {
	for len(r.ranges) > 0 && r.off >= r.ranges[0].Length {
		r.ranges, r.off = r.ranges[1:], 0
	}
	if len(r.ranges) == 0 {
		return 0, io.EOF
	}
	cur := r.ranges[0]
	if left := cur.Length - r.off; int64(len(p)) > left {
		p = p[:left]
	}
	n, err := r.f.ReadAt(p, cur.Offset+r.off)
	r.off += int64(n)
	if err == io.EOF {
		if r.off < cur.Length {
			return n, io.ErrUnexpectedEOF // the file shrank
		}
		err = nil
	}
	return n, err
}

// FileRanges returns where the data bytes [off, off+length) of a file
// lie in it: data lists the file's data ranges in order (for a dense
// file, one range over the whole file).
func FileRanges(data []Range, off, length int64) []Range {
	var out []Range
	for _, r := range data {
		if length <= 0 {
			break
		}
		if off >= r.Length {
			off -= r.Length
			continue
		}
		n := min(r.Length-off, length)
		out = append(out, Range{Offset: r.Offset + off, Length: n})
		off, length = 0, length-n
	}
	return out
}

// DataLayout returns the data ranges of node n's file: its ranges when
// it is sparse, else one range over the whole file.
func DataLayout(n *Node) []Range { return dataLayout(n.Size, n.Sparse, n.Data) }

func dataLayout(size int64, sparse bool, ranges []Range) []Range {
	if sparse {
		return ranges
	}
	return []Range{{Offset: 0, Length: size}}
}
