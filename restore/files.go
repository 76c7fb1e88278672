package restore

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"sync"
	"sync/atomic"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/deltabackup/deltabackup/hashstore"
	"github.com/deltabackup/deltabackup/snapshot"
	"github.com/deltabackup/deltabackup/snapshot/beneath"
	"github.com/deltabackup/deltabackup/snapshot/digest"
)

// fileTask is one regular file to restore.
type fileTask struct {
	rel  string
	node *snapshot.Node
}

// group is one content and the files that need it written.
type group struct {
	id    digest.Digest
	size  int64 // the content's size (holes excluded)
	paths []string
	files []fileTask
	// pieces are the places in chunked files that hold this content.
	pieces []piece
}

// name is a path that needs the content, for ordering and messages.
func (gr *group) name() string {
	if len(gr.paths) > 0 {
		return gr.paths[0]
	}
	return gr.pieces[0].asm.rel
}

// stripe orders the chunks of large files for fetching: the first
// batchBytes of every chunked file, then the next of every one, and so
// on, so the workers fetching at once write into different files. (In
// file order they all wrote into one file, whose writes are serialised:
// a 5 GiB restore of five files took 10 s where whole-file objects had
// taken 6.) Whole small files are stripe 0, in path order as before.
func (gr *group) stripe() (stripe, off int64) {
	if len(gr.paths) > 0 || len(gr.pieces) == 0 {
		return 0, 0
	}
	off = gr.pieces[0].off
	return off / batchBytes, off
}

var bufferPool = sync.Pool{New: func() any { b := make([]byte, 1<<20); return &b }}

// Small objects from a BatchSource are fetched in batches of at most
// batchObjects objects and batchBytes bytes, each object at most
// batchObjectMax bytes.
const (
	batchObjects   = 512
	batchBytes     = 16 << 20
	batchObjectMax = 1 << 20
)

// openKept opens the regular file the target holds at rel, to keep it
// or take chunks from it, and reports whether its size and holes are
// those of n. It is nil when there is none, or when it has several
// links: changing it in place would change the other names too, which
// may lie outside the target.
func (r *restorer) openKept(rel string, n *snapshot.Node) (file *os.File, shaped bool) {
	dir, name := r.at(rel)
	defer dir.Close()
	file, err := dir.Open(name, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, false
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(file.Fd()), &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFREG || st.Nlink != 1 {
		file.Close()
		return nil, false
	}
	if st.Size != n.Size {
		return file, false
	}
	if n.Sparse {
		// Data where the backup has a hole would go unnoticed by reading
		// only the ranges: the target's data must lie within them.
		have, err := snapshot.DataRanges(file, n.Size)
		if have == nil {
			have = []snapshot.Range{{Offset: 0, Length: n.Size}} // no holes, as far as the file system tells
		}
		if err != nil || !within(have, n.Data) {
			return file, false
		}
	}
	return file, true
}

// upToDate reports whether the target already holds the content of n, a
// file stored whole or embedded, at rel. When it does, the file gets n's
// metadata through the handle opened here, and an error means it could
// not be set. (A chunked file is checked chunk by chunk in chunked.)
func (r *restorer) upToDate(rel string, n *snapshot.Node) (bool, error) {
	file, shaped := r.openKept(rel, n)
	if file == nil {
		return false, nil
	}
	defer file.Close()
	if !shaped {
		return false, nil
	}
	rd := snapshot.RangeReader(file, snapshot.DataLayout(n))
	if n.IsEmbedded() {
		have, err := io.ReadAll(io.LimitReader(rd, int64(len(n.Embedded))+1))
		if err != nil || !bytes.Equal(have, n.Embedded) {
			return false, nil
		}
	} else {
		h := hashstore.GetHasher()
		defer hashstore.PutHasher(h)
		buf := bufferPool.Get().(*[]byte)
		defer bufferPool.Put(buf)
		if _, err := io.CopyBuffer(h, rd, *buf); err != nil || digest.Digest(h.Sum(nil)) != n.ID {
			return false, nil
		}
	}
	if err := r.setMetadata(metaTarget{file: file}, rel, n); err != nil {
		return false, err
	}
	return true, nil
}

// within reports whether every range of have lies inside ranges of want
// (both sorted).
func within(have, want []snapshot.Range) bool {
	j := 0
	for _, h := range have {
		for j < len(want) && want[j].Offset+want[j].Length <= h.Offset {
			j++
		}
		if j == len(want) || want[j].Offset > h.Offset || want[j].Offset+want[j].Length < h.Offset+h.Length {
			return false
		}
	}
	return true
}

func (r *restorer) tempName(rel string) string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return path.Join(path.Dir(rel), tempPrefix+hex.EncodeToString(b[:]))
}

// tempFile is a file being written under a temporary name in the
// directory of its final path, still open.
type tempFile struct {
	f    *os.File
	dir  *beneath.Dir // a reference, released by commit or abort
	name string
	rel  string // the entry it will become
	// size is what the backup says the file will hold; blocks are
	// reserved (allocated) a step ahead of what was written, never more,
	// since the size is a claim until the bytes arrive and verify.
	size, written, allocated int64
	// ranges, for a sparse file, say where the content's bytes go: the
	// rest stays a hole.
	sparse bool
	layout []snapshot.Range // where its content lies (DataLayout)
	ranges []snapshot.Range // the data ranges not written yet
	off    int64            // within ranges[0]
}

// newTempFile is the temporary file f, named name in dir, that becomes
// the entry rel with the content of n.
func newTempFile(f *os.File, dir *beneath.Dir, name, rel string, n *snapshot.Node) *tempFile {
	return &tempFile{f: f, dir: dir, name: name, rel: rel, size: n.Size, sparse: n.Sparse, layout: snapshot.DataLayout(n), ranges: n.Data}
}

// createTemp creates a temporary file next to the entry rel, for the
// content of n.
func (r *restorer) createTemp(rel string, n *snapshot.Node) (*tempFile, error) {
	dir, name := r.at(r.tempName(rel))
	f, err := dir.Open(name, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		dir.Close()
		return nil, &TargetError{Path: rel, Err: err}
	}
	t := newTempFile(f, dir, name, rel, n)
	if n.Sparse {
		// The holes are never written: the file gets its length first.
		if err := f.Truncate(n.Size); err != nil {
			t.abort()
			return nil, &TargetError{Path: rel, Err: err}
		}
	}
	return t, nil
}

// writeHook, for tests on machines that cannot mount a small file system,
// fails writes into the target as a full disk would.
var writeHook func(p []byte) error

// Write appends content bytes: at the end of a dense file, into the next
// data ranges of a sparse one. Errors are tagged as the target's.
func (t *tempFile) Write(p []byte) (int, error) {
	if writeHook != nil {
		if err := writeHook(p); err != nil {
			return 0, &TargetError{Path: t.rel, Err: err}
		}
	}
	if t.sparse {
		return t.writeRanges(p)
	}
	if end := t.written + int64(len(p)); t.size >= preallocateMin && end > t.allocated {
		next := min(t.size, end+preallocateStep)
		preallocate(t.f, t.allocated, next-t.allocated)
		t.allocated = next
	}
	n, err := t.f.Write(p)
	t.written += int64(n)
	if err != nil {
		err = &TargetError{Path: t.rel, Err: err}
	}
	return n, err
}

func (t *tempFile) writeRanges(p []byte) (int, error) {
	total := 0
	for len(p) > 0 {
		for len(t.ranges) > 0 && t.off >= t.ranges[0].Length {
			t.ranges, t.off = t.ranges[1:], 0
		}
		if len(t.ranges) == 0 {
			return total, &TargetError{Path: t.rel, Err: errors.New("more bytes than the file's data ranges hold")}
		}
		cur := t.ranges[0]
		chunk := p[:min(int64(len(p)), cur.Length-t.off)]
		n, err := t.f.WriteAt(chunk, cur.Offset+t.off)
		t.off += int64(n)
		t.written += int64(n)
		total += n
		if err != nil {
			return total, &TargetError{Path: t.rel, Err: err}
		}
		p = p[n:]
	}
	return total, nil
}

func (t *tempFile) abort() {
	t.f.Close()
	_ = t.dir.Remove(t.name)
	t.dir.Close()
}

// writeEmbedded writes a file whose content is in its tree.
func (r *restorer) writeEmbedded(rel string, n *snapshot.Node) error {
	t, err := r.createTemp(rel, n)
	if err != nil {
		return err
	}
	if _, err := t.Write(n.Embedded); err != nil {
		t.abort()
		return err
	}
	return r.commit(t, rel, n)
}

// fetchInto writes the content read from rd into a temporary file next to
// the first path of gr, checking size and BLAKE3 before it is kept: restore
// verifies every byte whatever the source promises. A reader that checks
// the content itself (hashstore.Verifying, from a repository or a peer
// client) fails instead of ending when it is wrong, so the bytes are not
// hashed twice.
func (r *restorer) fetchInto(ctx context.Context, rd io.Reader, gr *group) (*tempFile, error) {
	t, err := r.createTemp(gr.paths[0], gr.files[0].node)
	if err != nil {
		return nil, err
	}
	var h *digest.Hasher
	var w io.Writer = t
	if !hashstore.IsVerifying(rd, gr.id, gr.size) {
		h = hashstore.GetHasher()
		defer hashstore.PutHasher(h)
		w = io.MultiWriter(t, h)
	}
	buf := bufferPool.Get().(*[]byte)
	defer bufferPool.Put(buf)
	n, err := io.CopyBuffer(w, io.LimitReader(hashstore.ContextReader(ctx, rd), gr.size+1), *buf)
	if err == nil && n != gr.size {
		err = &hashstore.CorruptObjectError{ID: gr.id, Reason: fmt.Sprintf("source sent %d bytes or more, want %d", n, gr.size)}
	}
	if err == nil && h != nil {
		if got := digest.Digest(h.Sum(nil)); got != gr.id {
			err = &hashstore.CorruptObjectError{ID: gr.id, Reason: "content hashes to " + got.String()}
		}
	}
	if err != nil {
		t.abort()
		return nil, err
	}
	return t, nil
}

// copyLocal copies a finished temporary file to a new one next to rel: a
// content needed by several paths is downloaded once.
func (r *restorer) copyLocal(from *tempFile, rel string, n *snapshot.Node) (*tempFile, error) {
	t, err := r.createTemp(rel, n)
	if err != nil {
		return nil, err
	}
	ranges := from.allRanges()
	if _, err := io.Copy(t, snapshot.RangeReader(from.f, ranges)); err != nil {
		t.abort()
		return nil, err
	}
	return t, nil
}

// allRanges are where a finished temporary file holds its content, in
// order: two files with the same content may have different holes.
func (t *tempFile) allRanges() []snapshot.Range { return t.layout }

// finishGroup writes a downloaded content, in temporary file tmp, to every
// path of gr: copies for all but the first, which gets tmp itself.
func (r *restorer) finishGroup(gr *group, l landing) {
	atomic.AddInt64(&r.res.ObjectsDownloaded, 1)
	atomic.AddInt64(&r.res.BytesDownloaded, gr.size)
	r.writePieces(gr, l)
	tmp := l.tmp
	if tmp == nil {
		return
	}
	for i := 1; i < len(gr.files); i++ {
		f := gr.files[i]
		copied, err := r.copyLocal(tmp, f.rel, f.node)
		if err == nil {
			err = r.commit(copied, f.rel, f.node)
		}
		if err != nil {
			r.fail(f.rel, gr.id, err)
			continue
		}
		r.written(f.node.Size)
	}
	first := gr.files[0]
	if err := r.commit(tmp, first.rel, first.node); err != nil {
		r.fail(first.rel, gr.id, err)
		return
	}
	r.written(first.node.Size)
}

// commit gives a finished temporary file its metadata through its
// descriptor, closes it and renames it over the final path.
func (r *restorer) commit(t *tempFile, rel string, n *snapshot.Node) error {
	defer t.dir.Close()
	err := r.setMetadata(metaTarget{file: t.f}, rel, n)
	if cerr := t.f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = t.dir.Rename(t.name, path.Base(rel))
	}
	if err != nil {
		_ = t.dir.Remove(t.name)
		if errors.Is(err, syscall.EISDIR) || errors.Is(err, syscall.ENOTEMPTY) || errors.Is(err, syscall.EEXIST) {
			return errors.New("target has a directory where the backup has a file; move it away and restore again")
		}
		return err
	}
	if n.Hardlinked() {
		r.linkCommitted(n, rel)
	}
	return nil
}
