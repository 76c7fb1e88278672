package hashstore

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/deltabackup/deltabackup/snapshot/digest"
)

// Ref is one object a backup references.
type Ref struct {
	ID digest.Digest
	// Metadata marks an object that describes the backup (a tree) rather
	// than the content of a file.
	Metadata bool
	// Path names a file that holds the content, for messages ("" for
	// metadata). A content held by several files is reported once per
	// file.
	Path string
	// Size is the content's size, or -1 when unknown (metadata).
	Size int64
	// Bundled marks a small content, stored in a pack when copied.
	Bundled bool
}

// Referrer tells what a backup references. The store never decodes
// manifests or trees: the caller hands it a Referrer (package upload
// offers the one for this repository format), so that gc, verify, copy
// and stats stay independent of the format of backups.
type Referrer interface {
	// References calls fn for every object rec references. A metadata
	// object is reported before it is read, so that when References
	// fails because one cannot be read, the last metadata object
	// reported is the one at fault. fn may return ErrSkip for a metadata
	// object: what is reachable only through it is then not reported (a
	// tree already seen). Any other error from fn stops it and is
	// returned.
	References(ctx context.Context, rec BackupRecord, fn func(Ref) error) error
}

// ErrSkip, returned by a References callback for a metadata object,
// skips what that object leads to.
var ErrSkip = errors.New("skip what this object references")

// ErrNoReferrer is the error of gc, verify, copy and stats when no
// Referrer was given.
var ErrNoReferrer = fmt.Errorf("no Referrer given: the store cannot tell what a backup references")

// OpenMetadata opens the verified content of a metadata object (a tree)
// for a Referrer or a reader of backups. The object may
// declare at most maxSize bytes, and when maxExpansion > 0 it may not
// decode to more than maxExpansion times its stored bytes: a small object
// claiming gigabytes costs a little decoding, not gigabytes of memory.
// The reader fails, rather than ends, if the content is not the one id
// names.
func (s *Store) OpenMetadata(ctx context.Context, id digest.Digest, maxSize, maxExpansion int64) (io.ReadCloser, error) {
	o, err := s.Get(ctx, id)
	if err != nil {
		return nil, err
	}
	if o.Size() > maxSize {
		o.Close()
		return nil, &CorruptObjectError{id, fmt.Sprintf("declares %d bytes, more than its kind may hold (%d)", o.Size(), maxSize)}
	}
	if maxExpansion > 0 {
		o.LimitExpansion(maxExpansion, 1<<20)
	}
	return o, nil
}

// maxMetadataExpansion bounds how many times its stored size a metadata
// object may decode to: honest trees compress far less.
const maxMetadataExpansion = 256

// ReadMetadata reads a whole metadata object (a tree), verified, that
// may hold at most maxSize bytes and decode to at most 256 times its
// stored bytes (plus 1 MiB).
func (s *Store) ReadMetadata(ctx context.Context, id digest.Digest, maxSize int64) ([]byte, error) {
	rc, err := s.OpenMetadata(ctx, id, maxSize, maxMetadataExpansion)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	return io.ReadAll(rc)
}
