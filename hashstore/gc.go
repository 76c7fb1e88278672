package hashstore

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"

	"github.com/zeebo/blake3"
	"golang.org/x/sync/errgroup"

	"github.com/deltabackup/deltabackup/snapshot"
)

// DefaultRepackBelow is the live share under which gc rewrites a pack:
// a pack half dead costs as much storage as its live half again.
const DefaultRepackBelow = 0.5

// staleTempAge: a temporary file of a local repository this old belongs to
// a write that was killed; gc holds the exclusive lock, so no backup of a
// live lock is writing, and the margin covers a holder whose lock went
// stale while it still wrote.
const staleTempAge = time.Hour

// GCOptions tunes GC.
type GCOptions struct {
	// DryRun reports what would be deleted and repacked, and changes
	// nothing.
	DryRun bool
	// RepackBelow: packs whose live share is lower are rewritten with only
	// their live objects (0 means DefaultRepackBelow; negative never).
	RepackBelow float64
	// LockWait is how long to wait for running backups to finish.
	LockWait time.Duration
}

// GCReport is what GC found and did (or would do, in a dry run).
type GCReport struct {
	DryRun          bool     `json:"dry_run"`
	Backups         int      `json:"backups"`
	LiveObjects     int      `json:"live_objects"`
	DeletedObjects  int      `json:"deleted_objects"` // loose objects
	DeletedBytes    int64    `json:"deleted_bytes"`   // stored bytes freed, packs included
	DeletedPacks    int      `json:"deleted_packs"`
	RepackedPacks   int      `json:"repacked_packs"`
	RepackedObjects int      `json:"repacked_objects"`
	RepackedBytes   int64    `json:"repacked_bytes"`
	KeptPacks       int      `json:"kept_packs"`
	TempFiles       int      `json:"temp_files_removed"` // left by killed writes to a local repository
	RewrittenIndex  int      `json:"rewritten_index_files"`
	StaleLocks      []string `json:"stale_locks_removed"`
}

// gcPack is one pack as gc sees it.
type gcPack struct {
	id         [32]byte
	key        string
	size       int64 // stored size, from the listing
	entries    []PackEntry
	liveBytes  int64
	live       []string // hexdigests to carry over when repacked
	indexFiles []string
	fate       string // "keep", "repack", "delete"
}

// GC deletes every object no backup record references and rewrites packs
// whose live share fell under opts.RepackBelow. It holds the repository's
// exclusive lock, so no backup runs meanwhile; it refuses to run when a
// record or a manifest cannot be read, since it could not tell what that
// backup references. Each step leaves a consistent repository if gc is
// interrupted: new packs and index files are written before the old ones
// are deleted, and a pack left without an index is deleted by the next gc.
func (s *Store) GC(ctx context.Context, opts GCOptions) (*GCReport, error) {
	if opts.RepackBelow == 0 {
		opts.RepackBelow = DefaultRepackBelow
	}
	rep := &GCReport{DryRun: opts.DryRun, StaleLocks: []string{}}
	lk, err := s.Lock(ctx, LockExclusive, LockOptions{Purpose: "gc", Wait: opts.LockWait})
	if err != nil {
		return nil, err
	}
	defer lk.Unlock()
	if !opts.DryRun {
		stale, err := s.RemoveStaleLocks(ctx)
		if err != nil {
			return nil, err
		}
		for _, l := range stale {
			s.logger.Warn("removed a stale lock", "lock", l.String())
			rep.StaleLocks = append(rep.StaleLocks, l.Key)
		}
	}

	live, backups, err := s.liveObjects(ctx)
	if err != nil {
		return nil, err
	}
	rep.Backups, rep.LiveObjects = backups, len(live)

	// Everything is decided on a fresh reading of the index.
	s.resetIndex()
	packs, indexFiles, err := s.gcPacks(ctx, live, opts.RepackBelow)
	if err != nil {
		return nil, err
	}
	var deadLoose []string
	var deadLooseBytes int64
	err = s.backend.List(ctx, "objects/", func(info Info) error {
		h := info.Key[strings.LastIndexByte(info.Key, '/')+1:]
		if snapshot.ValidHexdigest(h) && info.Key == ObjectKey(h) && !live[h] {
			deadLoose = append(deadLoose, info.Key)
			deadLooseBytes += info.Size
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list objects: %w", err)
	}
	rep.DeletedObjects, rep.DeletedBytes = len(deadLoose), deadLooseBytes
	for _, p := range packs {
		switch p.fate {
		case "delete":
			rep.DeletedPacks++
			rep.DeletedBytes += p.size
		case "repack":
			rep.RepackedPacks++
			rep.RepackedObjects += len(p.live)
			rep.RepackedBytes += p.liveBytes
			rep.DeletedBytes += p.size - p.liveBytes
		default:
			rep.KeptPacks++
		}
	}
	if opts.DryRun {
		return rep, nil
	}
	if err := s.writeGCMarker(ctx); err != nil {
		return nil, err
	}

	// 1. Live objects of packs to rewrite go into new packs, with new
	// index files.
	var carry []string
	for _, p := range packs {
		if p.fate == "repack" {
			carry = append(carry, p.live...)
		}
	}
	if err := s.repack(ctx, carry); err != nil {
		return nil, err
	}
	// 2. Index files that mention a pack going away are replaced by ones
	// that list only their remaining packs.
	var oldIndex []string
	for key, entries := range indexFiles {
		var keep []packEntries
		touched := false
		for _, pe := range entries {
			if packs[pe.id] != nil && packs[pe.id].fate == "keep" {
				keep = append(keep, pe)
			} else {
				touched = true
			}
		}
		if !touched {
			continue
		}
		if len(keep) > 0 {
			if err := s.putIndex(ctx, keep); err != nil {
				return nil, err
			}
		}
		oldIndex = append(oldIndex, key)
		rep.RewrittenIndex++
	}
	if err := s.deleteKeys(ctx, oldIndex); err != nil {
		return nil, fmt.Errorf("delete old index files: %w", err)
	}
	// 3. Only now, with no index pointing at them, packs go.
	var deadPacks []string
	for _, p := range packs {
		if p.fate != "keep" {
			deadPacks = append(deadPacks, p.key)
		}
	}
	if err := s.deleteKeys(ctx, deadPacks); err != nil {
		return nil, fmt.Errorf("delete packs: %w", err)
	}
	// 4. Loose objects nobody references.
	if err := s.deleteKeys(ctx, deadLoose); err != nil {
		return nil, fmt.Errorf("delete objects: %w", err)
	}
	if l, ok := s.backend.(*Local); ok {
		n, size, err := l.RemoveStaleTemps(staleTempAge)
		if err != nil {
			return nil, fmt.Errorf("remove temporary files of unfinished writes: %w", err)
		}
		rep.TempFiles = n
		rep.DeletedBytes += size
	}
	s.resetIndex()
	s.logger.Info("gc done", "deleted_objects", rep.DeletedObjects, "deleted_packs", rep.DeletedPacks,
		"repacked_packs", rep.RepackedPacks, "freed_bytes", rep.DeletedBytes)
	return rep, lk.Err()
}

// liveObjects returns every hexdigest some backup references, manifests
// included, and the number of backups.
func (s *Store) liveObjects(ctx context.Context) (map[string]bool, int, error) {
	names, err := s.verifyNames(ctx, nil, BackupFilter{})
	if err != nil {
		return nil, 0, err
	}
	live := map[string]bool{}
	for _, name := range names {
		rec, err := s.readBackup(ctx, name)
		if err != nil {
			return nil, 0, fmt.Errorf("gc cannot tell what backup %s references: %w; delete its record (backups/%s.json) or restore it from a copy, then run gc again", name, err, name)
		}
		m, chain, err := s.ManifestChain(ctx, rec)
		if err != nil {
			return nil, 0, fmt.Errorf("gc cannot tell what backup %s references: %w; run 'deltabackup verify', and forget the backup if it cannot be repaired", name, err)
		}
		for _, h := range chain {
			live[h] = true
		}
		for _, f := range m.Files {
			if !f.Embedded() {
				live[f.Hexdigest] = true
			}
		}
	}
	return live, len(names), nil
}

// gcPacks reads every index file and the pack listing, and decides each
// pack's fate. Packs in storage that no index lists are left over from an
// interrupted backup or gc and are deleted.
func (s *Store) gcPacks(ctx context.Context, live map[string]bool, repackBelow float64) (map[[32]byte]*gcPack, map[string][]packEntries, error) {
	var indexKeys []string
	if err := s.backend.List(ctx, "index/", func(info Info) error {
		indexKeys = append(indexKeys, info.Key)
		return nil
	}); err != nil {
		return nil, nil, fmt.Errorf("list pack indexes: %w", err)
	}
	sort.Strings(indexKeys)
	packs := map[[32]byte]*gcPack{}
	indexFiles := map[string][]packEntries{}
	claimed := map[[32]byte]bool{} // hexdigests whose live copy is counted
	for _, key := range indexKeys {
		entries, err := s.readIndexFile(ctx, key)
		if err != nil {
			return nil, nil, fmt.Errorf("gc cannot read index file %s: %w", key, err)
		}
		indexFiles[key] = entries
		for _, pe := range entries {
			p := packs[pe.id]
			if p == nil {
				p = &gcPack{id: pe.id, key: packKey(pe.id), size: -1}
				packs[pe.id] = p
			}
			p.indexFiles = append(p.indexFiles, key)
			p.entries = append(p.entries, pe.entries...)
			for _, e := range pe.entries {
				h := hex.EncodeToString(e.Hexdigest[:])
				if live[h] && !claimed[e.Hexdigest] {
					claimed[e.Hexdigest] = true
					p.live = append(p.live, h)
					p.liveBytes += int64(e.Length)
				}
			}
		}
	}
	err := s.backend.List(ctx, "packs/", func(info Info) error {
		name := info.Key[strings.LastIndexByte(info.Key, '/')+1:]
		var id [32]byte
		if len(name) != 64 || info.Key != "packs/"+name[:2]+"/"+name {
			return nil
		}
		if _, err := hex.Decode(id[:], []byte(name)); err != nil {
			return nil
		}
		if p := packs[id]; p != nil {
			p.size = info.Size
		} else {
			packs[id] = &gcPack{id: id, key: info.Key, size: info.Size, fate: "delete"} // no index lists it
		}
		return nil
	})
	if err != nil {
		return nil, nil, fmt.Errorf("list packs: %w", err)
	}
	for _, p := range packs {
		if p.fate != "" {
			continue
		}
		if p.size < 0 {
			// Listed by an index, missing in storage: nothing to delete,
			// and its objects are lost (verify names them).
			p.size = 0
			if len(p.live) > 0 {
				return nil, nil, fmt.Errorf("pack %s holds %d objects backups need but is missing; run 'deltabackup verify' to see which files are affected", p.key, len(p.live))
			}
			p.fate = "delete"
			continue
		}
		switch {
		case p.liveBytes == 0:
			p.fate = "delete"
		case repackBelow > 0 && float64(p.liveBytes) < repackBelow*float64(p.size):
			p.fate = "repack"
		default:
			p.fate = "keep"
		}
	}
	return packs, indexFiles, nil
}

// repack copies the objects hexdigests, read and verified, into new packs.
func (s *Store) repack(ctx context.Context, hexdigests []string) error {
	if len(hexdigests) == 0 {
		return nil
	}
	packer := s.NewPacker(ctx, 0)
	var buf bytes.Buffer
	err := s.GetMany(ctx, hexdigests, func(h string, r io.Reader, err error) error {
		if err == nil {
			buf.Reset()
			_, err = buf.ReadFrom(r)
		}
		if err != nil {
			return fmt.Errorf("repack: object %s cannot be read, so its pack is kept: %w", h, err)
		}
		_, err = packer.AddHashed(ctx, h, buf.Bytes())
		return err
	})
	if err != nil {
		packer.Abort()
		return err
	}
	return packer.Flush(ctx)
}

// putIndex stores an index file listing packs.
func (s *Store) putIndex(ctx context.Context, packs []packEntries) error {
	idx := encodeIndex(packs)
	key := indexKey(blake3.Sum256(idx))
	if err := s.backend.Put(ctx, key, bytes.NewReader(idx), int64(len(idx))); err != nil {
		return fmt.Errorf("store index: %w", err)
	}
	s.cacheIndexFile(key, idx)
	return nil
}

// resetIndex makes the next lookup read the index files again.
func (s *Store) resetIndex() {
	s.index.mu.Lock()
	s.index.loaded = false
	s.index.packs = nil
	s.index.packNum = nil
	s.index.entries = nil
	s.index.mu.Unlock()
}

// writeGCMarker tells every cache of known objects that objects may be
// gone: written before anything is deleted.
func (s *Store) writeGCMarker(ctx context.Context) error {
	now := time.Now().UTC()
	var id [4]byte
	_, _ = rand.Read(id[:])
	data, _ := json.Marshal(map[string]any{"started": now})
	key := gcPrefix + now.Format("20060102T150405.000000000Z") + "-" + hex.EncodeToString(id[:])
	if err := s.backend.Put(ctx, key, bytes.NewReader(data), int64(len(data))); err != nil {
		return fmt.Errorf("write gc marker: %w", err)
	}
	return nil
}

// BatchDeleter is a Backend that deletes many keys in few requests (S3's
// DeleteObjects).
type BatchDeleter interface {
	DeleteMany(ctx context.Context, keys []string) error
}

// deleteKeys removes keys in batches where the backend can, otherwise
// with bounded concurrent deletes.
func (s *Store) deleteKeys(ctx context.Context, keys []string) error {
	if len(keys) == 0 {
		return nil
	}
	if bd, ok := s.backend.(BatchDeleter); ok {
		return bd.DeleteMany(ctx, keys)
	}
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(s.lookupParallel)
	for _, k := range keys {
		g.Go(func() error { return s.backend.Delete(gctx, k) })
	}
	return g.Wait()
}
