package snapshot

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"unsafe"

	"github.com/deltabackup/deltabackup/snapshot/digest"
)

// NodeType is what kind of file system entry a Node describes.
type NodeType uint8

// Node types, as stored.
const (
	TypeFile        NodeType = 1
	TypeDir         NodeType = 2
	TypeSymlink     NodeType = 3
	TypeFIFO        NodeType = 4
	TypeCharDevice  NodeType = 5
	TypeBlockDevice NodeType = 6
)

func (t NodeType) String() string {
	switch t {
	case TypeFile:
		return "file"
	case TypeDir:
		return "dir"
	case TypeSymlink:
		return "symlink"
	case TypeFIFO:
		return "fifo"
	case TypeCharDevice:
		return "chardev"
	case TypeBlockDevice:
		return "blockdev"
	}
	return fmt.Sprintf("type %d", uint8(t))
}

// Node is one entry of a directory with everything a restore needs to
// bring it back: type, permission bits (setuid, setgid and sticky
// included), owner by number and name, mtime, extended attributes (POSIX
// ACLs are the system.posix_acl_* ones) and, by type, the content of a
// regular file, the tree of a directory, the target of a symlink or the
// device number of a device node.
type Node struct {
	Name    string
	Type    NodeType
	Mode    uint32
	UID     uint32
	GID     uint32
	User    string
	Group   string
	MtimeNs int64
	// Xattrs are sorted by name.
	Xattrs []Xattr

	// Size is a regular file's length, holes included.
	Size int64
	// Embedded is the whole data of a small file (non-nil, possibly
	// empty, when the content is embedded in the tree).
	Embedded []byte
	// ID is the object holding the file's data, when it has one object.
	ID digest.Digest
	// Chunks hold the data of a large file in order, when it is chunked.
	Chunks []Chunk
	// Sparse files list their data ranges (the rest reads as zeros); the
	// content stored is the ranges' bytes one after the other.
	Sparse bool
	Data   []Range
	// LinkDev and LinkIno name the inode of a file that has more than
	// one name (a hard-link group): every name carries the same content,
	// and a restore links the names of one group together. Zero when the
	// file has one name.
	LinkDev uint64
	LinkIno uint64

	// Subtree is a directory's tree object, and Below sums up what it
	// holds (all levels down); the root tree's own node sums up the whole
	// tree. Below is a claim of the writer, for statistics and progress,
	// never trusted for safety.
	Subtree digest.Digest
	Below   Counts
	// Target is a symlink's target, stored as it is and never followed.
	Target string
	// Rdev is a device node's device number.
	Rdev uint64
}

// Counts sum up the entries of a directory tree.
type Counts struct {
	Files    int64 `json:"files"`
	Dirs     int64 `json:"dirs"`
	Symlinks int64 `json:"symlinks"`
	Specials int64 `json:"specials"`
	// Bytes is the files' total size, DataBytes what is stored of it
	// (holes excluded); Embedded files have no object.
	Bytes     int64 `json:"total_bytes"`
	DataBytes int64 `json:"data_bytes"`
	Embedded  int64 `json:"embedded_files"`
}

// Add adds o to c.
func (c *Counts) Add(o Counts) {
	c.Files += o.Files
	c.Dirs += o.Dirs
	c.Symlinks += o.Symlinks
	c.Specials += o.Specials
	c.Bytes += o.Bytes
	c.DataBytes += o.DataBytes
	c.Embedded += o.Embedded
}

// Count adds one entry (and, for a directory, what it holds) to c.
func (c *Counts) Count(n *Node) {
	switch n.Type {
	case TypeFile:
		c.Files++
		c.Bytes += n.Size
		c.DataBytes += n.DataSize()
		if n.IsEmbedded() {
			c.Embedded++
		}
	case TypeDir:
		c.Dirs++
		c.Add(n.Below)
	case TypeSymlink:
		c.Symlinks++
	default:
		c.Specials++
	}
}

func (c *Counts) fields() []*int64 {
	return []*int64{&c.Files, &c.Dirs, &c.Symlinks, &c.Specials, &c.Bytes, &c.DataBytes, &c.Embedded}
}

// Xattr is one extended attribute.
type Xattr struct {
	Name  string
	Value []byte
}

// Range is a run of data in a sparse file.
type Range struct {
	Offset int64
	Length int64
}

// Chunk is one piece of a chunked file's data.
type Chunk struct {
	ID   digest.Digest
	Size int64
}

// DataSize is how many bytes of a regular file's content are stored:
// its size, or for a sparse file the length of its data ranges.
func (n *Node) DataSize() int64 {
	if !n.Sparse {
		return n.Size
	}
	var total int64
	for _, r := range n.Data {
		total += r.Length
	}
	return total
}

// IsEmbedded reports whether a regular file's data is in the tree.
func (n *Node) IsEmbedded() bool { return n.Embedded != nil }

// Hardlinked reports whether the file belongs to a hard-link group.
func (n *Node) Hardlinked() bool { return n.LinkIno != 0 }

// Tree is one directory: its entries sorted by name. The tree of the
// source directory (the root of a backup) also carries the directory's
// own node in Self, so the root hash covers its metadata too.
type Tree struct {
	Self  *Node
	Nodes []Node
}

// The tree encoding (README "Formats"): the magic, a flags byte, for a
// root tree the source directory's own node, the number of entries and
// the entries, all integers as (u)varints.
const (
	treeMagic    = "DBT2"
	treeFlagRoot = 1

	contentEmbedded = 0
	contentObject   = 1
	contentChunks   = 2
)

// Limits on what DecodeTree accepts, so a hostile repository cannot make
// a reader allocate without bound or write what a file system refuses.
const (
	// MaxTreeSize bounds one tree object (a directory of several million
	// entries fits).
	MaxTreeSize     = 1 << 30
	maxNameLength   = 255
	maxOwnerName    = 255
	maxTargetLength = 4096
	maxXattrs       = 1024
	maxXattrValue   = 64 << 10
	maxFileSize     = 1 << 50
	// MaxEmbeddedSize bounds the data embedded in a tree entry.
	MaxEmbeddedSize = 1 << 20
	maxRanges       = 1 << 20
	maxChunks       = 1 << 24
	maxCount        = 1 << 62
)

// xattrNamespaces are the extended attribute namespaces a tree may hold.
var xattrNamespaces = []string{"user.", "trusted.", "security.", "system.posix_acl_access", "system.posix_acl_default"}

// XattrAllowed reports whether name is in a namespace a tree may hold.
func XattrAllowed(name string) bool {
	for _, ns := range xattrNamespaces {
		if strings.HasSuffix(ns, ".") && strings.HasPrefix(name, ns) && len(name) > len(ns) {
			return true
		}
		if name == ns {
			return true
		}
	}
	return false
}

// Encode returns the tree's bytes; its id is their digest. Nodes must be
// sorted by name: the encoding of a tree is unique, so identical trees
// have identical ids.
func (t *Tree) Encode() ([]byte, error) {
	return t.AppendEncoded(make([]byte, 0, 64+len(t.Nodes)*64))
}

// AppendEncoded appends the tree's encoding to b.
func (t *Tree) AppendEncoded(b []byte) ([]byte, error) {
	return appendTree(b, t.Self, len(t.Nodes), func(i int) *Node { return &t.Nodes[i] })
}

// appendTree is AppendEncoded for a tree given as validateTree takes it,
// so the walker encodes its entries' nodes where they are rather than
// copying each into a Tree first.
func appendTree(b []byte, self *Node, count int, node func(i int) *Node) ([]byte, error) {
	if err := validateTree(self, count, node); err != nil {
		return nil, err
	}
	b = append(b, treeMagic...)
	if self != nil {
		b = append(b, treeFlagRoot)
		b = appendNode(b, self, true)
	} else {
		b = append(b, 0)
	}
	b = binary.AppendUvarint(b, uint64(count))
	for i := range count {
		b = appendNode(b, node(i), false)
	}
	return b, nil
}

func appendString(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

func appendNode(b []byte, n *Node, self bool) []byte {
	if !self {
		b = appendString(b, n.Name)
	}
	b = append(b, byte(n.Type))
	b = binary.AppendUvarint(b, uint64(n.Mode))
	b = binary.AppendUvarint(b, uint64(n.UID))
	b = binary.AppendUvarint(b, uint64(n.GID))
	b = appendString(b, n.User)
	b = appendString(b, n.Group)
	b = binary.AppendVarint(b, n.MtimeNs)
	b = binary.AppendUvarint(b, uint64(len(n.Xattrs)))
	for _, x := range n.Xattrs {
		b = appendString(b, x.Name)
		b = binary.AppendUvarint(b, uint64(len(x.Value)))
		b = append(b, x.Value...)
	}
	switch n.Type {
	case TypeFile:
		b = binary.AppendUvarint(b, uint64(n.Size))
		switch {
		case n.Embedded != nil:
			b = append(b, contentEmbedded)
			b = binary.AppendUvarint(b, uint64(len(n.Embedded)))
			b = append(b, n.Embedded...)
		case len(n.Chunks) > 0:
			b = append(b, contentChunks)
			b = binary.AppendUvarint(b, uint64(len(n.Chunks)))
			for _, c := range n.Chunks {
				b = append(b, c.ID[:]...)
				b = binary.AppendUvarint(b, uint64(c.Size))
			}
		default:
			b = append(b, contentObject)
			b = append(b, n.ID[:]...)
		}
		if n.Sparse {
			b = append(b, 1)
			b = binary.AppendUvarint(b, uint64(len(n.Data)))
			var end int64
			for _, r := range n.Data {
				b = binary.AppendUvarint(b, uint64(r.Offset-end))
				b = binary.AppendUvarint(b, uint64(r.Length))
				end = r.Offset + r.Length
			}
		} else {
			b = append(b, 0)
		}
		if n.LinkIno != 0 {
			b = append(b, 1)
			b = binary.AppendUvarint(b, n.LinkDev)
			b = binary.AppendUvarint(b, n.LinkIno)
		} else {
			b = append(b, 0)
		}
	case TypeDir:
		if !self {
			b = append(b, n.Subtree[:]...)
		}
		c := n.Below
		for _, v := range c.fields() {
			b = binary.AppendUvarint(b, uint64(*v))
		}
	case TypeSymlink:
		b = appendString(b, n.Target)
	case TypeCharDevice, TypeBlockDevice:
		b = binary.AppendUvarint(b, n.Rdev)
	}
	return b
}

// TreeError is a tree object that is not a valid tree; Entry names the
// entry at fault when there is one.
type TreeError struct {
	Entry string
	Err   error
}

func (e *TreeError) Error() string {
	if e.Entry == "" {
		return "tree: " + e.Err.Error()
	}
	return fmt.Sprintf("tree entry %q: %v", e.Entry, e.Err)
}

func (e *TreeError) Unwrap() error { return e.Err }

// ErrInvalidTree is wrapped by every error of DecodeTree and Validate.
var ErrInvalidTree = errors.New("invalid tree")

func treeErr(entry string, format string, args ...any) error {
	return &TreeError{Entry: entry, Err: fmt.Errorf("%w: "+format, append([]any{ErrInvalidTree}, args...)...)}
}

// Validate checks what a tree must hold to be restored safely: valid,
// unique and sorted names, known types, modes, sizes and ranges within
// bounds, xattrs in allowed namespaces, content that matches the size.
func (t *Tree) Validate() error {
	return validateTree(t.Self, len(t.Nodes), func(i int) *Node { return &t.Nodes[i] })
}

// validateTree is Validate for a tree given as its own node and count
// entries, the i-th returned by node.
func validateTree(self *Node, count int, node func(i int) *Node) error {
	if self != nil {
		if self.Type != TypeDir || self.Name != "" {
			return treeErr("", "the root's own entry must be an unnamed directory")
		}
		if err := validateNode(self, true); err != nil {
			return err
		}
	}
	var last string
	for i := range count {
		n := node(i)
		if err := ValidateName(n.Name); err != nil {
			return &TreeError{Entry: n.Name, Err: fmt.Errorf("%w: %w", ErrInvalidTree, err)}
		}
		if i > 0 && last >= n.Name {
			if last == n.Name {
				return treeErr(n.Name, "duplicate name")
			}
			return treeErr(n.Name, "entries not sorted by name")
		}
		last = n.Name
		if err := validateNode(n, false); err != nil {
			return err
		}
	}
	return nil
}

// ErrBadName is wrapped by ValidateName's errors.
var ErrBadName = errors.New("not a valid file name")

// ValidateName checks one path component: not empty, ".", or "..", no
// "/" or NUL, at most 255 bytes.
func ValidateName(name string) error {
	switch {
	case name == "":
		return fmt.Errorf("%w: empty", ErrBadName)
	case name == "." || name == "..":
		return fmt.Errorf("%w: %q", ErrBadName, name)
	case len(name) > maxNameLength:
		return fmt.Errorf("%w: %d bytes, at most %d", ErrBadName, len(name), maxNameLength)
	}
	// A plain loop: strings.ContainsAny took 3% of an incremental backup,
	// which checks every name it lists, decodes and encodes.
	for i := 0; i < len(name); i++ {
		if c := name[i]; c == '/' || c == 0 {
			return fmt.Errorf("%w: contains / or NUL", ErrBadName)
		}
	}
	return nil
}

func validateNode(n *Node, self bool) error {
	name := n.Name
	if n.Type < TypeFile || n.Type > TypeBlockDevice {
		return treeErr(name, "unknown type %d", n.Type)
	}
	if n.Mode > 0o7777 {
		return treeErr(name, "mode %o has more than permission bits", n.Mode)
	}
	if len(n.User) > maxOwnerName || len(n.Group) > maxOwnerName || strings.ContainsRune(n.User, 0) || strings.ContainsRune(n.Group, 0) {
		return treeErr(name, "owner name too long or with NUL")
	}
	if len(n.Xattrs) > maxXattrs {
		return treeErr(name, "%d extended attributes, at most %d", len(n.Xattrs), maxXattrs)
	}
	for i, x := range n.Xattrs {
		if !XattrAllowed(x.Name) || len(x.Name) > maxNameLength || strings.ContainsRune(x.Name, 0) {
			return treeErr(name, "extended attribute %q is not in an allowed namespace (user., trusted., security., system.posix_acl_*)", x.Name)
		}
		if len(x.Value) > maxXattrValue {
			return treeErr(name, "extended attribute %q has %d bytes, at most %d", x.Name, len(x.Value), maxXattrValue)
		}
		if i > 0 && n.Xattrs[i-1].Name >= x.Name {
			return treeErr(name, "extended attributes not sorted or not unique")
		}
	}
	if n.Type != TypeFile && (n.Size != 0 || n.Embedded != nil || !n.ID.IsZero() || len(n.Chunks) > 0 || n.Sparse || len(n.Data) > 0 || n.LinkIno != 0 || n.LinkDev != 0) {
		return treeErr(name, "a %s with file content", n.Type)
	}
	if n.Type != TypeDir && (!n.Subtree.IsZero() || n.Below != Counts{}) {
		return treeErr(name, "a %s with a subtree", n.Type)
	}
	for _, v := range n.Below.fields() {
		if *v < 0 || *v > maxCount {
			return treeErr(name, "count %d out of range", *v)
		}
	}
	if n.Type != TypeSymlink && n.Target != "" {
		return treeErr(name, "a %s with a symlink target", n.Type)
	}
	if n.Type != TypeCharDevice && n.Type != TypeBlockDevice && n.Rdev != 0 {
		return treeErr(name, "a %s with a device number", n.Type)
	}
	switch n.Type {
	case TypeFile:
		return validateFile(n)
	case TypeDir:
		if self != n.Subtree.IsZero() {
			if self {
				return treeErr(name, "the root's own entry names a subtree")
			}
			return treeErr(name, "a directory without a subtree")
		}
	case TypeSymlink:
		if n.Target == "" || len(n.Target) > maxTargetLength || strings.ContainsRune(n.Target, 0) {
			return treeErr(name, "symlink target empty, longer than %d bytes or with NUL", maxTargetLength)
		}
	}
	return nil
}

func validateFile(n *Node) error {
	name := n.Name
	if n.Size < 0 || n.Size > maxFileSize {
		return treeErr(name, "size %d out of range", n.Size)
	}
	if !n.Sparse && len(n.Data) > 0 {
		return treeErr(name, "data ranges on a file that is not sparse")
	}
	if len(n.Data) > maxRanges {
		return treeErr(name, "%d data ranges, at most %d", len(n.Data), maxRanges)
	}
	var end int64
	for _, r := range n.Data {
		if r.Length <= 0 || r.Offset < end || r.Offset > n.Size || r.Length > n.Size-r.Offset {
			return treeErr(name, "data range %d+%d out of order or outside the file's %d bytes", r.Offset, r.Length, n.Size)
		}
		end = r.Offset + r.Length
	}
	data := n.DataSize()
	kinds := 0
	if n.Embedded != nil {
		kinds++
		if int64(len(n.Embedded)) != data || data > MaxEmbeddedSize {
			return treeErr(name, "embedded %d bytes for %d bytes of data", len(n.Embedded), data)
		}
	}
	if !n.ID.IsZero() {
		kinds++
		if data == 0 {
			return treeErr(name, "an object for no data")
		}
	}
	if len(n.Chunks) > 0 {
		kinds++
		if len(n.Chunks) > maxChunks {
			return treeErr(name, "%d chunks, at most %d", len(n.Chunks), maxChunks)
		}
		var sum int64
		for i, c := range n.Chunks {
			// Every chunk but the last is at least the smallest minimum a
			// chunker may have, so a chunk list cannot name a content
			// absurdly often; none is larger than a chunk may be.
			if c.ID.IsZero() || c.Size <= 0 || c.Size > MaxChunkSize || (c.Size < MinChunkSize && i < len(n.Chunks)-1) {
				return treeErr(name, "chunk %d without id or of %d bytes (chunks hold %d to %d bytes)", i, c.Size, MinChunkSize, MaxChunkSize)
			}
			sum += c.Size
			if sum > data {
				break
			}
		}
		if sum != data {
			return treeErr(name, "chunks hold %d bytes, the data is %d", sum, data)
		}
	}
	if kinds != 1 {
		return treeErr(name, "a file must have exactly one of embedded data, an object or chunks")
	}
	if n.LinkIno == 0 && n.LinkDev != 0 {
		return treeErr(name, "a hard-link group without an inode number")
	}
	return nil
}

// treeDecoder reads a tree's bytes.
type treeDecoder struct {
	b []byte
	// text, when set, holds the same bytes as b did at the start, as a
	// string: names and owners are cut from it rather than copied one by
	// one (a tree of 500 files made 1,500 small allocations, a third of
	// the time of decoding it).
	text  string
	entry string
	err   error
}

func (d *treeDecoder) fail(format string, args ...any) {
	if d.err == nil {
		d.err = treeErr(d.entry, format, args...)
	}
}

func (d *treeDecoder) uvarint() uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.fail("truncated or overlong number")
		return 0
	}
	// Only the shortest form: otherwise one tree would have several
	// encodings, and so several ids.
	if n != uvarintLen(v) {
		d.fail("number not in its shortest form")
		return 0
	}
	d.b = d.b[n:]
	return v
}

// uvarintLen is the length of v's shortest uvarint encoding.
func uvarintLen(v uint64) int {
	n := 1
	for v >= 0x80 {
		v >>= 7
		n++
	}
	return n
}

func (d *treeDecoder) varint() int64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Varint(d.b)
	if n <= 0 {
		d.fail("truncated or overlong number")
		return 0
	}
	ux := uint64(v) << 1 // zigzag, as binary.PutVarint
	if v < 0 {
		ux = ^ux
	}
	if n != uvarintLen(ux) {
		d.fail("number not in its shortest form")
		return 0
	}
	d.b = d.b[n:]
	return v
}

// bounded reads a uvarint that must not exceed limit.
func (d *treeDecoder) bounded(limit uint64, what string) uint64 {
	v := d.uvarint()
	if v > limit {
		d.fail("%s %d exceeds %d", what, v, limit)
		return 0
	}
	return v
}

func (d *treeDecoder) bytes(n uint64) []byte {
	if d.err != nil {
		return nil
	}
	if n > uint64(len(d.b)) {
		d.fail("truncated")
		return nil
	}
	out := d.b[:n:n]
	d.b = d.b[n:]
	return out
}

// string reads a length of at most limit, named lengthOf in errors, and
// that many bytes. (The caller names the length: building what+" length"
// here put a string on the heap for every string read.)
func (d *treeDecoder) string(limit uint64, lengthOf string) string {
	n := d.bounded(limit, lengthOf)
	if d.err != nil {
		return ""
	}
	if d.text == "" {
		return string(d.bytes(n))
	}
	start := len(d.text) - len(d.b)
	if d.bytes(n) == nil {
		return ""
	}
	return d.text[start : start+int(n)]
}

func (d *treeDecoder) byte() byte {
	if d.err != nil {
		return 0
	}
	if len(d.b) == 0 {
		d.fail("truncated")
		return 0
	}
	c := d.b[0]
	d.b = d.b[1:]
	return c
}

func (d *treeDecoder) digest() digest.Digest {
	var id digest.Digest
	copy(id[:], d.bytes(digest.Size))
	return id
}

// DecodeTree parses and validates a tree from untrusted bytes. The nodes
// share no memory with data; their byte slices (embedded data, xattr
// values) share one read-only copy of the tree with their names, and
// must not be written to.
func DecodeTree(data []byte) (*Tree, error) {
	if len(data) > MaxTreeSize {
		return nil, treeErr("", "%d bytes, at most %d", len(data), MaxTreeSize)
	}
	if !bytes.HasPrefix(data, []byte(treeMagic)) {
		return nil, treeErr("", "no %s magic", treeMagic)
	}
	// One copy, as a string: names and owners are cut from it, and
	// embedded data and xattr values are views of the same bytes, which
	// nothing writes to (a second copy for them cost a restore of tiny
	// 2-4 MB of peak RSS).
	text := string(data[len(treeMagic):])
	d := &treeDecoder{b: unsafe.Slice(unsafe.StringData(text), len(text)), text: text}
	t := &Tree{}
	flags := d.byte()
	if flags&^treeFlagRoot != 0 {
		d.fail("unknown flags %#x", flags)
	}
	if flags&treeFlagRoot != 0 {
		t.Self = &Node{}
		d.node(t.Self, true)
	}
	// Every entry takes at least 10 bytes (a FIFO with a one-byte name),
	// which bounds the count by what is left before anything is allocated.
	count := d.bounded(uint64(len(d.b))/10, "entry count")
	if d.err != nil {
		return nil, d.err
	}
	t.Nodes = make([]Node, count)
	for i := range t.Nodes {
		d.node(&t.Nodes[i], false)
		if d.err != nil {
			return nil, d.err
		}
	}
	if d.err != nil {
		return nil, d.err
	}
	if len(d.b) != 0 {
		return nil, treeErr("", "%d bytes after the last entry", len(d.b))
	}
	if err := t.Validate(); err != nil {
		return nil, err
	}
	return t, nil
}

func (d *treeDecoder) node(n *Node, self bool) {
	if !self {
		// Read a little more than a name may hold, so the error names it.
		n.Name = d.string(4*maxNameLength, "name length")
		d.entry = n.Name
	}
	n.Type = NodeType(d.byte())
	n.Mode = uint32(d.bounded(0o7777, "mode"))
	n.UID = uint32(d.bounded(1<<32-1, "uid"))
	n.GID = uint32(d.bounded(1<<32-1, "gid"))
	n.User = d.string(maxOwnerName, "user name length")
	n.Group = d.string(maxOwnerName, "group name length")
	n.MtimeNs = d.varint()
	if nx := d.bounded(maxXattrs, "xattr count"); nx > 0 {
		n.Xattrs = make([]Xattr, 0, min(nx, uint64(len(d.b))/2))
		for range nx {
			x := Xattr{Name: d.string(maxNameLength, "xattr name length")}
			x.Value = d.bytes(d.bounded(maxXattrValue, "xattr value length"))
			if d.err != nil {
				return
			}
			n.Xattrs = append(n.Xattrs, x)
		}
	}
	switch n.Type {
	case TypeFile:
		n.Size = int64(d.bounded(maxFileSize, "size"))
		switch kind := d.byte(); kind {
		case contentEmbedded:
			n.Embedded = d.bytes(d.bounded(MaxEmbeddedSize, "embedded length"))
			if n.Embedded == nil && d.err == nil {
				n.Embedded = []byte{}
			}
		case contentObject:
			n.ID = d.digest()
		case contentChunks:
			count := d.bounded(min(maxChunks, uint64(len(d.b))/(digest.Size+1)), "chunk count")
			n.Chunks = make([]Chunk, 0, count)
			for range count {
				c := Chunk{ID: d.digest(), Size: int64(d.bounded(maxFileSize, "chunk size"))}
				if d.err != nil {
					return
				}
				n.Chunks = append(n.Chunks, c)
			}
		default:
			d.fail("unknown content kind %d", kind)
		}
		switch sparse := d.byte(); sparse {
		case 0:
		case 1:
			n.Sparse = true
			count := d.bounded(min(maxRanges, uint64(len(d.b))/2), "range count")
			n.Data = make([]Range, 0, count)
			var end uint64
			for range count {
				gap := d.bounded(maxFileSize, "range gap")
				length := d.bounded(maxFileSize, "range length")
				if d.err != nil {
					return
				}
				off := end + gap
				if off > maxFileSize || off+length > maxFileSize {
					d.fail("data range beyond %d bytes", uint64(maxFileSize))
					return
				}
				n.Data = append(n.Data, Range{Offset: int64(off), Length: int64(length)})
				end = off + length
			}
		default:
			d.fail("unknown sparse flag %d", sparse)
		}
		switch link := d.byte(); link {
		case 0:
		case 1:
			n.LinkDev = d.uvarint()
			n.LinkIno = d.uvarint()
			if n.LinkIno == 0 && d.err == nil {
				d.fail("hard-link group with inode 0")
			}
		default:
			d.fail("unknown link flag %d", link)
		}
	case TypeDir:
		if !self {
			n.Subtree = d.digest()
		}
		for _, v := range n.Below.fields() {
			*v = int64(d.bounded(maxCount, "count"))
		}
	case TypeSymlink:
		n.Target = d.string(maxTargetLength, "symlink target length")
	case TypeCharDevice, TypeBlockDevice:
		n.Rdev = d.uvarint()
	case TypeFIFO:
	default:
		d.fail("unknown type %d", n.Type)
	}
}

// ValidatePath checks a slash-separated path relative to a tree's root:
// every component a valid name, at most 4096 bytes in all.
func ValidatePath(p string) error {
	if len(p) > 4096 {
		return fmt.Errorf("%w: path of %d bytes", ErrBadName, len(p))
	}
	for part := range strings.SplitSeq(p, "/") {
		if err := ValidateName(part); err != nil {
			return fmt.Errorf("%q: %w", p, err)
		}
	}
	return nil
}
