package upload

import (
	"context"
	"io"
	"strings"

	"github.com/deltabackup/deltabackup/hashstore"
	"github.com/deltabackup/deltabackup/snapshot"
	"github.com/deltabackup/deltabackup/snapshot/digest"
)

// OpenContent opens the data of the regular file node n (its holes left
// out): embedded bytes, its object, or its chunks one after the other,
// each read only when the one before it is done and each verified.
func OpenContent(ctx context.Context, store *hashstore.Store, n *snapshot.Node) (io.ReadCloser, error) {
	switch {
	case n.IsEmbedded():
		return io.NopCloser(strings.NewReader(string(n.Embedded))), nil
	case len(n.Chunks) > 0:
		return &chunkReader{ctx: ctx, store: store, chunks: n.Chunks}, nil
	default:
		return store.Get(ctx, n.ID)
	}
}

// chunkReader reads the chunks of a file in order.
type chunkReader struct {
	ctx    context.Context
	store  *hashstore.Store
	chunks []snapshot.Chunk
	cur    io.ReadCloser
}

func (r *chunkReader) Read(p []byte) (int, error) {
	for {
		if r.cur == nil {
			if len(r.chunks) == 0 {
				return 0, io.EOF
			}
			o, err := r.store.Get(r.ctx, r.chunks[0].ID)
			if err != nil {
				return 0, err
			}
			r.cur, r.chunks = o, r.chunks[1:]
		}
		n, err := r.cur.Read(p)
		if err == io.EOF {
			r.cur.Close()
			r.cur = nil
			if n > 0 {
				return n, nil
			}
			continue
		}
		return n, err
	}
}

func (r *chunkReader) Close() error {
	if r.cur != nil {
		return r.cur.Close()
	}
	return nil
}

// ContentDigest returns the BLAKE3 of the whole data of file node n, the
// hexdigest rohmu's manifests and users' checksums know. It is the id of
// a file stored whole; a chunked file's is not stored (it would cost a
// second hash over every byte of every backup) and is derived here by
// reading its chunks.
func ContentDigest(ctx context.Context, store *hashstore.Store, n *snapshot.Node) (digest.Digest, error) {
	if !n.ID.IsZero() {
		return n.ID, nil
	}
	rc, err := OpenContent(ctx, store, n)
	if err != nil {
		return digest.Digest{}, err
	}
	defer rc.Close()
	h := hashstore.GetHasher()
	defer hashstore.PutHasher(h)
	if _, err := io.Copy(h, rc); err != nil {
		return digest.Digest{}, err
	}
	return digest.Digest(h.Sum(nil)), nil
}
