package snapshot

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/deltabackup/deltabackup/snapshot/digest"
)

// ObjectSource is where a backup's manifests are read from: a repository
// (hashstore.Store implements it). The reader it returns must fail,
// rather than end, when the content is not the one id names.
type ObjectSource interface {
	OpenMetadata(ctx context.Context, id digest.Digest, maxSize, maxExpansion int64) (io.ReadCloser, error)
}

// DecodeError is a manifest object that was read whole and verified but
// is not a valid manifest (or does not fit its base).
type DecodeError struct {
	ID  digest.Digest
	Err error
}

func (e *DecodeError) Error() string { return fmt.Sprintf("manifest %s: %v", e.ID, e.Err) }
func (e *DecodeError) Unwrap() error { return e.Err }

// LoadManifest reads the manifest root and, when it is incremental, the
// manifests below it, and returns the whole manifest they describe,
// validated. visit, when set, is called with each manifest object before
// it is read: all of them must stay stored for the backup to restore, and
// when LoadManifest fails to read one, it is the last one visited.
func LoadManifest(ctx context.Context, src ObjectSource, root digest.Digest, visit func(digest.Digest)) (*Manifest, error) {
	var chain []*Manifest
	ids := []digest.Digest{root}
	for {
		id := ids[len(ids)-1]
		if visit != nil {
			visit(id)
		}
		m, err := readManifestObject(ctx, src, id)
		if err != nil {
			if len(ids) > 1 {
				return nil, fmt.Errorf("base manifest %s (%d down the chain): %w", id, len(ids)-1, err)
			}
			return nil, err
		}
		// Each link is one shallower than the one above it; since an
		// incremental manifest is at most MaxChainDepth deep, this also
		// bounds how many objects are read.
		if n := len(chain); n > 0 && m.ChainDepth != chain[n-1].ChainDepth-1 {
			return nil, &DecodeError{id, fmt.Errorf("chain depth %d below a manifest of depth %d; the chain of incremental manifests is broken", m.ChainDepth, chain[n-1].ChainDepth)}
		}
		chain = append(chain, m)
		if m.BaseManifest.IsZero() {
			break
		}
		ids = append(ids, m.BaseManifest)
	}
	m := chain[len(chain)-1]
	for i := len(chain) - 2; i >= 0; i-- {
		next, err := Apply(m, chain[i])
		if err != nil {
			return nil, &DecodeError{ids[i], err}
		}
		m = next
	}
	if len(chain) > 1 {
		if err := m.Validate(); err != nil {
			return nil, &DecodeError{root, fmt.Errorf("applied to its bases: %w", err)}
		}
	}
	return m, nil
}

// readManifestObject reads and decodes one manifest object as it streams
// in. It may declare at most MaxManifestSize bytes and decode to at most
// MaxManifestExpansion times its stored bytes: a small object claiming
// gigabytes costs a little decoding, not gigabytes of memory.
func readManifestObject(ctx context.Context, src ObjectSource, id digest.Digest) (*Manifest, error) {
	rc, err := src.OpenMetadata(ctx, id, MaxManifestSize, MaxManifestExpansion)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	m, err := ReadManifest(rc)
	if err != nil {
		var sticky *stickyReader
		if errors.As(err, &sticky) || ctx.Err() != nil {
			return nil, err
		}
		if _, rerr := io.Copy(io.Discard, rc); rerr != nil {
			return nil, rerr // the bytes were wrong, not (only) the JSON
		}
		return nil, &DecodeError{id, err}
	}
	return m, nil
}

// Reference is one object a backup references.
type Reference struct {
	ID digest.Digest
	// Metadata marks a manifest object rather than a file's content.
	Metadata bool
	// Path is the file holding the content ("" for metadata).
	Path string
	// Size is the content's size, -1 for metadata.
	Size int64
	// Bundled marks a small content (packed).
	Bundled bool
}

// References calls fn for every object the backup whose manifest is root
// references: each manifest object of the chain, before it is read, then
// the content of each file that has one (once per file).
func References(ctx context.Context, src ObjectSource, root digest.Digest, fn func(Reference) error) error {
	var fnErr error
	m, err := LoadManifest(ctx, src, root, func(id digest.Digest) {
		if fnErr == nil {
			fnErr = fn(Reference{ID: id, Metadata: true, Size: -1})
		}
	})
	if fnErr != nil {
		return fnErr
	}
	if err != nil {
		return err
	}
	for _, f := range m.Files {
		if f.Embedded() {
			continue
		}
		if err := fn(Reference{ID: f.Hexdigest, Path: f.RelativePath, Size: f.FileSize, Bundled: f.ShouldBeBundled}); err != nil {
			return err
		}
	}
	return nil
}
