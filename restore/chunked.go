package restore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/deltabackup/deltabackup/hashstore"
	"github.com/deltabackup/deltabackup/snapshot"
	"github.com/deltabackup/deltabackup/snapshot/digest"
)

// A chunked file is put together in a temporary file of its own: every
// chunk is a content of the batch like any other, fetched from whichever
// source the plan gives it (so one large file is fetched from all sources
// at once), verified whole in memory and only then written at its offset.
// A copy from a second source that arrives late is dropped before it
// touches the file. The file is renamed into place when its last chunk
// is written; a chunk that cannot be had fails the file.
//
// The temporary file has a name derived from the file's path and chunk
// list, and a restore that was interrupted finds it again: chunks already
// right in it are kept, as are chunks right at their offsets in the file
// the target already holds (an older version of it), so only what is
// missing is fetched.

// assembly is a chunked file being put together.
type assembly struct {
	rel  string
	node *snapshot.Node
	tmp  *tempFile
	// layout is where the file's data bytes go (DataLayout).
	layout []snapshot.Range

	mu   sync.Mutex
	left int   // chunks not yet written or failed
	err  error // the first failure
	// writing serialises the writes into the file: the kernel holds the
	// inode's lock through each write anyway, and workers spinning on it
	// cost more CPU than the copies (a 5 GiB restore spent 12 s of system
	// time that way).
	writing sync.Mutex
}

// piece is one place a chunk goes: a data offset in an assembly.
type piece struct {
	asm *assembly
	off int64
}

// write puts a verified chunk at its place.
func (p piece) write(data []byte) error {
	p.asm.writing.Lock()
	defer p.asm.writing.Unlock()
	for _, fr := range snapshot.FileRanges(p.asm.layout, p.off, int64(len(data))) {
		if writeHook != nil {
			if err := writeHook(data[:fr.Length]); err != nil {
				return &TargetError{Path: p.asm.rel, Err: err}
			}
		}
		if _, err := p.asm.tmp.f.WriteAt(data[:fr.Length], fr.Offset); err != nil {
			return &TargetError{Path: p.asm.rel, Err: err}
		}
		data = data[fr.Length:]
	}
	return nil
}

// settle records that one chunk of a was written (err nil) or failed, and
// finishes the file after its last chunk.
func (r *restorer) settle(a *assembly, id digest.Digest, err error) {
	a.mu.Lock()
	a.left--
	first := err != nil && a.err == nil
	if first {
		a.err = err
	}
	last, failed := a.left == 0, a.err
	a.mu.Unlock()
	if first {
		r.fail(a.rel, id, err)
	}
	if !last {
		return
	}
	r.assembling.Delete(a)
	if failed != nil {
		a.tmp.abort()
		return
	}
	if err := r.commit(a.tmp, a.rel, a.node); err != nil {
		r.fail(a.rel, digest.Digest{}, err)
		return
	}
	r.written(a.node.Size)
}

// resumeName is the temporary name of the chunked file n at rel: the same
// for the same file and content, so an interrupted restore finds it.
func resumeName(rel string, n *snapshot.Node) string {
	h := hashstore.GetHasher()
	defer hashstore.PutHasher(h)
	_, _ = io.WriteString(h, rel+"\x00")
	for _, c := range n.Chunks {
		_, _ = h.Write(c.ID[:])
	}
	for _, d := range snapshot.DataLayout(n) {
		_, _ = fmt.Fprintf(h, "%d+%d,", d.Offset, d.Length)
	}
	return tempPrefix + fmt.Sprintf("%x", h.Sum(nil)[:8])
}

// chunked restores the chunked file n at rel. A file the target holds
// with n's size, holes and every chunk is up to date (it gets n's
// metadata, and chunked reports true). Otherwise chunked keeps what an
// earlier run or an older version left right and adds the chunks still
// missing to the batch. Each chunk of the old file is hashed once.
func (r *restorer) chunked(ws *walkState, rel string, n *snapshot.Node) (upToDate bool, err error) {
	layout := snapshot.DataLayout(n)
	offs := make([]int64, len(n.Chunks))
	var off int64
	for i, c := range n.Chunks {
		offs[i], off = off, off+c.Size
	}
	buf := bufferPool.Get().(*[]byte)
	defer bufferPool.Put(buf)
	var old *os.File
	// right counts the leading chunks the old file holds in place; when
	// it is shaped as n, the chunk after them is known not to be there.
	right, wrong := 0, -1
	if !r.fresh {
		var shaped bool
		if old, shaped = r.openKept(rel, n); old != nil {
			defer old.Close()
			if shaped {
				for right < len(n.Chunks) && hasChunk(old, layout, offs[right], n.Chunks[right], *buf) {
					right++
				}
				if right == len(n.Chunks) {
					return true, r.setMetadata(metaTarget{file: old}, rel, n)
				}
				wrong = right
			}
		}
	}
	oldHas := func(i int) bool {
		return old != nil && i != wrong && (i < right || hasChunk(old, layout, offs[i], n.Chunks[i], *buf))
	}

	name := resumeName(rel, n)
	dir, base := r.at(path.Join(path.Dir(rel), name))
	var reuse bool
	f, err := dir.Open(base, os.O_RDWR|syscall.O_NONBLOCK, 0)
	if err == nil {
		var st unix.Stat_t
		reuse = unix.Fstat(int(f.Fd()), &st) == nil && st.Mode&unix.S_IFMT == unix.S_IFREG && st.Mode&0o7777 == 0o600 && st.Nlink == 1
		if !reuse {
			f.Close()
		}
	}
	if !reuse {
		_ = dir.Remove(base)
		if f, err = dir.Open(base, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600); err != nil {
			dir.Close()
			return false, &TargetError{Path: rel, Err: err}
		}
	}
	t := newTempFile(f, dir, base, rel, n)
	// Holes stay holes: the file gets its length, and chunks land in it.
	if err := f.Truncate(n.Size); err != nil {
		t.abort()
		return false, &TargetError{Path: rel, Err: err}
	}
	a := &assembly{rel: rel, node: n, tmp: t, layout: layout}
	var missing []int
	for i, c := range n.Chunks {
		switch {
		case reuse && hasChunk(f, layout, offs[i], c, *buf):
			// right in the partial file of an interrupted restore
		case oldHas(i):
			if err := copyChunk(a, old, offs[i], c.Size); err != nil {
				t.abort()
				return false, err
			}
		default:
			missing = append(missing, i)
		}
	}
	if kept := len(n.Chunks) - len(missing); kept > 0 {
		r.logger.Debug("chunks kept from the target", "path", rel, "kept", kept, "missing", len(missing))
	}
	if len(missing) == 0 {
		if err := r.commit(t, rel, n); err != nil {
			return false, err
		}
		r.written(n.Size)
		return false, nil
	}
	a.left = len(missing)
	r.assembling.Store(a, struct{}{})
	ws.mu.Lock()
	ws.chunked++
	ws.mu.Unlock()
	for _, i := range missing {
		ws.addPiece(n.Chunks[i], piece{asm: a, off: offs[i]})
	}
	return false, nil
}

// hasChunk reports whether f holds chunk c at data offset off.
func hasChunk(f *os.File, layout []snapshot.Range, off int64, c snapshot.Chunk, buf []byte) bool {
	h := hashstore.GetHasher()
	defer hashstore.PutHasher(h)
	n, err := io.CopyBuffer(h, snapshot.RangeReader(f, snapshot.FileRanges(layout, off, c.Size)), buf)
	return err == nil && n == c.Size && digest.Digest(h.Sum(nil)) == c.ID
}

// copyChunk copies a chunk found right in the old file into the assembly.
func copyChunk(a *assembly, old *os.File, off, size int64) error {
	buf := chunkBuffers.Get().(*[]byte)
	defer chunkBuffers.Put(buf)
	if int64(cap(*buf)) < size {
		*buf = make([]byte, size)
	}
	data := (*buf)[:size]
	if _, err := io.ReadFull(snapshot.RangeReader(old, snapshot.FileRanges(a.layout, off, size)), data); err != nil {
		return &TargetError{Path: a.rel, Err: err}
	}
	return piece{asm: a, off: off}.write(data)
}

// fetchChunk reads a content that only chunked files need into memory,
// verified, and returns it: nothing is written before the whole chunk is
// known good, so a late copy from a second source never touches a file.
func (r *restorer) fetchChunk(ctx context.Context, rd io.Reader, gr *group) (*[]byte, error) {
	if gr.size > snapshot.MaxChunkSize {
		return nil, &hashstore.CorruptObjectError{ID: gr.id, Reason: fmt.Sprintf("a chunk of %d bytes, more than %d", gr.size, snapshot.MaxChunkSize)}
	}
	buf := chunkBuffers.Get().(*[]byte)
	if int64(cap(*buf)) < gr.size {
		*buf = make([]byte, gr.size)
	}
	*buf = (*buf)[:gr.size] // the buffer's length is the chunk's
	data := *buf
	n, err := io.ReadFull(hashstore.ContextReader(ctx, rd), data)
	if err == nil {
		// The end, where a verifying reader reports a wrong content.
		var extra [1]byte
		k, rerr := rd.Read(extra[:])
		switch {
		case k > 0:
			err = &hashstore.CorruptObjectError{ID: gr.id, Reason: fmt.Sprintf("source sent more than %d bytes", gr.size)}
		case rerr != nil && rerr != io.EOF:
			err = rerr
		}
	} else if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
		err = &hashstore.CorruptObjectError{ID: gr.id, Reason: fmt.Sprintf("source sent %d bytes, want %d", n, gr.size)}
	}
	if err == nil && !hashstore.IsVerifying(rd, gr.id, gr.size) {
		if got := digest.Of(data); got != gr.id {
			err = &hashstore.CorruptObjectError{ID: gr.id, Reason: "content hashes to " + got.String()}
		}
	}
	if err != nil {
		chunkBuffers.Put(buf)
		return nil, err
	}
	return buf, nil
}

// chunkBuffers hold chunks between their arrival and their writes: a
// restore of many chunks would otherwise allocate its size in garbage.
var chunkBuffers = sync.Pool{New: func() any { return new([]byte) }}

// landing is where a fetched content waits to be written out: the
// temporary file of the first whole file that needs it, or memory when
// only chunked files do.
type landing struct {
	tmp  *tempFile
	data *[]byte // from chunkBuffers, the content's size
}

// drop discards a content nobody will use (another source was faster).
func (l landing) drop() {
	if l.tmp != nil {
		l.tmp.abort()
	}
	l.release()
}

// release gives the memory a chunk waited in back.
func (l landing) release() {
	if l.data != nil {
		chunkBuffers.Put(l.data)
	}
}

// land fetches the content of gr from rd to where it waits.
func (r *restorer) land(ctx context.Context, rd io.Reader, gr *group) (landing, error) {
	if len(gr.files) == 0 {
		data, err := r.fetchChunk(ctx, rd, gr)
		return landing{data: data}, err
	}
	tmp, err := r.fetchInto(ctx, rd, gr)
	return landing{tmp: tmp}, err
}

// writePieces writes a content, verified, to every chunked file that
// needs it, reading it from the temporary file it landed in when it did.
func (r *restorer) writePieces(gr *group, l landing) {
	if len(gr.pieces) == 0 {
		return
	}
	defer l.release()
	var data []byte
	var err error
	if l.data != nil {
		data = *l.data
		if int64(len(data)) != gr.size {
			panic(fmt.Sprintf("restore: a chunk of %d bytes held in %d", gr.size, len(data))) // a pooled buffer's length is wrong
		}
	} else {
		data = make([]byte, gr.size)
		if _, rerr := io.ReadFull(snapshot.RangeReader(l.tmp.f, l.tmp.allRanges()), data); rerr != nil {
			err = &TargetError{Path: l.tmp.rel, Err: rerr}
		}
	}
	for _, p := range gr.pieces {
		perr := err
		if perr == nil {
			perr = p.write(data)
		}
		r.settle(p.asm, gr.id, perr)
	}
}

// failGroup fails every file that needed gr's content.
func (r *restorer) failGroup(gr *group, err error) {
	for _, rel := range gr.paths {
		r.fail(rel, gr.id, err)
	}
	for _, p := range gr.pieces {
		r.settle(p.asm, gr.id, err)
	}
}

// addPiece puts a chunk a chunked file needs into the batch.
func (ws *walkState) addPiece(c snapshot.Chunk, p piece) {
	ws.mu.Lock()
	defer ws.mu.Unlock()
	gr := ws.group(c.ID, c.Size)
	gr.pieces = append(gr.pieces, p)
}

// abandonChunked removes the partial files of chunked files not finished
// when the target filled up: the room they take is what the user must
// make, and no partial file is left behind.
func (r *restorer) abandonChunked() {
	r.assembling.Range(func(k, _ any) bool {
		k.(*assembly).tmp.abort()
		r.assembling.Delete(k)
		return true
	})
}
