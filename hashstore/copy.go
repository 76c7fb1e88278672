package hashstore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/deltabackup/deltabackup/snapshot/digest"
)

// CopyOptions selects what Copy copies.
type CopyOptions struct {
	// Referrer says what each backup references, in the source
	// repository (required).
	Referrer Referrer
	// Backups to copy (names or "latest"); all when empty.
	Backups []string
	// Planned, when set, is called with the objects and bytes to copy for
	// each backup; Copied with each object copied.
	// Filter selects the backups copied when none are named, and which
	// "latest" a name means.
	Filter  BackupFilter
	Planned func(objects int, bytes int64)
	Copied  func(bytes int64)
}

// CopyReport is what Copy did.
type CopyReport struct {
	Copied         []string `json:"copied"`  // backups whose records were written
	Present        []string `json:"present"` // backups the target already had
	Objects        int      `json:"objects"` // objects copied
	Bytes          int64    `json:"bytes"`   // their content bytes
	PresentObjects int      `json:"present_objects"`
}

// Copy copies backups from one repository to another: only the objects
// the target lacks are read and stored (re-encoded and verified on the
// way), then the records with their names. Small contents go into packs,
// as a backup would store them. The target is locked like a backup, so a
// gc there cannot remove what a copied record is about to reference.
func Copy(ctx context.Context, from, to *Store, opts CopyOptions) (*CopyReport, error) {
	if opts.Referrer == nil {
		return nil, ErrNoReferrer
	}
	lk, err := to.Lock(ctx, LockShared, LockOptions{Purpose: "copy"})
	if err != nil {
		return nil, err
	}
	defer lk.Unlock()
	var records []BackupRecord
	if len(opts.Backups) == 0 {
		all, err := from.Backups(ctx)
		if err != nil {
			return nil, err
		}
		for _, r := range all {
			if opts.Filter.Match(r) {
				records = append(records, r)
			}
		}
	} else {
		for _, name := range opts.Backups {
			rec, err := from.Backup(ctx, name, opts.Filter)
			if err != nil {
				return nil, err
			}
			records = append(records, rec)
		}
	}
	rep := &CopyReport{Copied: []string{}, Present: []string{}}
	for _, rec := range records {
		if have, err := to.readBackup(ctx, rec.Name); err == nil {
			if have.Root != rec.Root {
				return rep, fmt.Errorf("backup %s: the target has a different backup of that name (root %s, source root %s); nothing of it was copied",
					rec.Name, have.Root, rec.Root)
			}
			rep.Present = append(rep.Present, rec.Name)
			continue
		} else if !errors.Is(err, ErrNotFound) {
			return rep, err
		}
		if err := copyBackup(ctx, from, to, rec, opts, rep); err != nil {
			return rep, fmt.Errorf("copy backup %s: %w", rec.Name, err)
		}
		rep.Copied = append(rep.Copied, rec.Name)
	}
	if err := to.SaveCache(); err != nil {
		to.logger.Warn("local repository cache not saved", "err", err)
	}
	return rep, lk.Err()
}

func copyBackup(ctx context.Context, from, to *Store, rec BackupRecord, opts CopyOptions, rep *CopyReport) error {
	sizes := map[digest.Digest]int64{}
	bundled := map[digest.Digest]bool{}
	var needed []digest.Digest
	err := opts.Referrer.References(ctx, rec, func(r Ref) error {
		if _, seen := sizes[r.ID]; !seen {
			needed = append(needed, r.ID)
		}
		sizes[r.ID] = r.Size
		if r.Bundled {
			bundled[r.ID] = true
		}
		return nil
	})
	if err != nil {
		return err
	}
	missing, err := to.ToStore(ctx, needed)
	if err != nil {
		return err
	}
	rep.PresentObjects += len(needed) - len(missing)
	if opts.Planned != nil {
		var total int64
		for _, h := range missing {
			total += max(sizes[h], 0)
		}
		opts.Planned(len(missing), total)
	}
	var buf bytes.Buffer
	err = to.WithPacker(ctx, 0, func(ctx context.Context, packer *Packer) error {
		return from.GetMany(ctx, missing, func(h digest.Digest, r io.Reader, err error) error {
			if err != nil {
				return fmt.Errorf("read %s: %w", h, err)
			}
			// The reader and Put check every byte against h, so the
			// content is size bytes once they succeed.
			size := sizes[h]
			if bundled[h] || size < 0 { // small, or metadata, whose size only the object knows
				buf.Reset()
				if _, err := buf.ReadFrom(r); err != nil {
					return fmt.Errorf("read %s: %w", h, err)
				}
				size = int64(buf.Len())
				if bundled[h] {
					_, err = packer.AddHashed(ctx, h, buf.Bytes())
				} else {
					_, err = to.PutBytes(ctx, h, buf.Bytes())
				}
			} else {
				_, err = to.Put(ctx, h, r, size)
			}
			if err != nil {
				return err
			}
			rep.Objects++
			rep.Bytes += size
			if opts.Copied != nil {
				opts.Copied(size)
			}
			return nil
		})
	})
	if err != nil {
		return err
	}
	// The record last: only now is everything it references stored.
	return to.PutBackup(ctx, rec)
}
