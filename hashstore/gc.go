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
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/deltabackup/deltabackup/snapshot/digest"
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
	// Referrer says what each backup references (required).
	Referrer Referrer
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
	DryRun          bool  `json:"dry_run"`
	Backups         int   `json:"backups"`
	LiveObjects     int   `json:"live_objects"`
	DeletedObjects  int   `json:"deleted_objects"` // loose objects
	DeletedBytes    int64 `json:"deleted_bytes"`   // stored bytes freed, packs included
	DeletedPacks    int   `json:"deleted_packs"`
	RepackedPacks   int   `json:"repacked_packs"`
	RepackedObjects int   `json:"repacked_objects"`
	RepackedBytes   int64 `json:"repacked_bytes"`
	KeptPacks       int   `json:"kept_packs"`
	TempFiles       int   `json:"temp_files_removed"` // left by killed writes to a local repository
	// Retained counts the packs, index files and objects gc would have
	// deleted or rewritten but left alone, being under object lock until
	// RetainedUntil at the latest.
	Retained       int       `json:"kept_under_object_lock,omitempty"`
	RetainedUntil  time.Time `json:"object_lock_until,omitzero"`
	RewrittenIndex int       `json:"rewritten_index_files"`
	StaleLocks     []string  `json:"stale_locks_removed"`
}

// packFate is what gc does with a pack.
type packFate int

const (
	keepPack packFate = iota
	repackPack
	deletePack
)

// gcPack is one pack as gc sees it.
type gcPack struct {
	id         digest.Digest
	key        string
	size       int64 // stored size, from the listing (-1: listed by an index only)
	liveBytes  int64
	live       []digest.Digest // to carry over when repacked
	indexFiles []string
	fate       packFate
	decided    bool
}

// gcPlan is what a gc will delete and rewrite, decided under its lock
// before anything is changed.
type gcPlan struct {
	backups    int
	live       map[digest.Digest]bool
	packs      map[digest.Digest]*gcPack
	indexFiles map[string][]packEntries
	deadLoose  []string
	deadBytes  int64
	deadSizes  map[string]int64
	// keptIndex are index files under object lock: never rewritten;
	// retained counts what object lock kept, until retainedUntil.
	keptIndex     map[string]bool
	retained      int
	retainedUntil time.Time
}

// GC deletes every object no backup record references and rewrites packs
// whose live share fell under opts.RepackBelow. It holds the repository's
// exclusive lock, so no backup runs meanwhile; it refuses to run when a
// record or what it references cannot be read, since it could not tell
// what that backup references. Each step leaves a consistent repository
// if gc is interrupted: new packs and index files are written before the
// old ones are deleted, and a pack left without an index is deleted by
// the next gc.
func (s *Store) GC(ctx context.Context, opts GCOptions) (*GCReport, error) {
	if opts.Referrer == nil {
		return nil, ErrNoReferrer
	}
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
	plan, err := s.planGC(ctx, opts)
	if err != nil {
		return nil, err
	}
	plan.report(rep)
	if opts.DryRun {
		return rep, nil
	}
	if err := s.executeGC(ctx, plan, rep); err != nil {
		return nil, err
	}
	s.logger.Info("gc done", "deleted_objects", rep.DeletedObjects, "deleted_packs", rep.DeletedPacks,
		"repacked_packs", rep.RepackedPacks, "freed_bytes", rep.DeletedBytes)
	return rep, lk.Err()
}

// planGC finds what every backup references and decides the fate of
// every pack and loose object.
func (s *Store) planGC(ctx context.Context, opts GCOptions) (*gcPlan, error) {
	live, backups, err := s.liveObjects(ctx, opts.Referrer)
	if err != nil {
		return nil, err
	}
	// Everything is decided on a fresh reading of the index.
	s.resetIndex()
	packs, indexFiles, err := s.gcPacks(ctx, live, opts.RepackBelow)
	if err != nil {
		return nil, err
	}
	plan := &gcPlan{backups: backups, live: live, packs: packs, indexFiles: indexFiles, keptIndex: map[string]bool{}, deadSizes: map[string]int64{}}
	liveNames := live
	if s.seal != nil {
		liveNames = make(map[digest.Digest]bool, len(live))
		for id := range live {
			liveNames[s.seal.looseName(id)] = true
		}
	}
	err = s.backend.List(ctx, objectsPrefix, func(info Info) error {
		if name, ok := parseObjectKey(info.Key); ok && !liveNames[name] {
			plan.deadLoose = append(plan.deadLoose, info.Key)
			plan.deadSizes[info.Key] = info.Size
			plan.deadBytes += info.Size
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list objects: %w", err)
	}
	if plan.retained, plan.retainedUntil, err = s.keepRetained(ctx, plan); err != nil {
		return nil, err
	}
	return plan, nil
}

// report fills in what the plan will do.
func (p *gcPlan) report(rep *GCReport) {
	rep.Backups, rep.LiveObjects = p.backups, len(p.live)
	rep.DeletedObjects, rep.DeletedBytes = len(p.deadLoose), p.deadBytes
	rep.Retained, rep.RetainedUntil = p.retained, p.retainedUntil
	for _, pk := range p.packs {
		switch pk.fate {
		case deletePack:
			rep.DeletedPacks++
			rep.DeletedBytes += pk.size
		case repackPack:
			rep.RepackedPacks++
			rep.RepackedObjects += len(pk.live)
			rep.RepackedBytes += pk.liveBytes
			rep.DeletedBytes += pk.size - pk.liveBytes
		default:
			rep.KeptPacks++
		}
	}
}

// executeGC carries out a plan, in the order that keeps the repository
// consistent at every step.
func (s *Store) executeGC(ctx context.Context, plan *gcPlan, rep *GCReport) error {
	if err := s.writeGCMarker(ctx); err != nil {
		return err
	}
	// 1. Live objects of packs to rewrite go into new packs, with new
	// index files.
	var carry []digest.Digest
	for _, p := range plan.packs {
		if p.fate == repackPack {
			carry = append(carry, p.live...)
		}
	}
	if err := s.repack(ctx, carry); err != nil {
		return err
	}
	// 2. Index files that mention a pack going away are replaced by ones
	// that list only their remaining packs.
	var oldIndex []string
	for key, entries := range plan.indexFiles {
		var keep []packEntries
		touched := false
		for _, pe := range entries {
			if p := plan.packs[pe.id]; p != nil && p.fate == keepPack {
				keep = append(keep, pe)
			} else {
				touched = true
			}
		}
		if !touched || plan.keptIndex[key] {
			continue
		}
		if len(keep) > 0 {
			if err := s.putIndex(ctx, keep); err != nil {
				return err
			}
		}
		oldIndex = append(oldIndex, key)
		rep.RewrittenIndex++
	}
	if err := s.deleteKeys(ctx, oldIndex); err != nil {
		return fmt.Errorf("delete old index files: %w", err)
	}
	// 3. Only now, with no index pointing at them, packs go.
	var deadPacks []string
	for _, p := range plan.packs {
		if p.fate != keepPack {
			deadPacks = append(deadPacks, p.key)
		}
	}
	if err := s.deleteKeys(ctx, deadPacks); err != nil {
		return fmt.Errorf("delete packs: %w", err)
	}
	// 4. Loose objects nobody references.
	if err := s.deleteKeys(ctx, plan.deadLoose); err != nil {
		return fmt.Errorf("delete objects: %w", err)
	}
	if tr, ok := As[TempRemover](s.backend); ok {
		n, size, err := tr.RemoveStaleTemps(staleTempAge)
		if err != nil {
			return fmt.Errorf("remove temporary files of unfinished writes: %w", err)
		}
		rep.TempFiles = n
		rep.DeletedBytes += size
	}
	s.resetIndex()
	return nil
}

// liveObjects returns every object some backup references, metadata
// included, and the number of backups.
func (s *Store) liveObjects(ctx context.Context, referrer Referrer) (map[digest.Digest]bool, int, error) {
	names, err := s.verifyNames(ctx, nil, BackupFilter{})
	if err != nil {
		return nil, 0, err
	}
	live := map[digest.Digest]bool{}
	for _, name := range names {
		rec, err := s.readBackup(ctx, name)
		if err != nil {
			return nil, 0, fmt.Errorf("gc cannot tell what backup %s references: %w", name, &UnreadableBackupError{Name: name, Err: err})
		}
		err = referrer.References(ctx, rec, func(r Ref) error {
			if r.Metadata && live[r.ID] {
				return ErrSkip // marked with all it leads to, by an earlier backup
			}
			live[r.ID] = true
			return nil
		})
		if err != nil {
			return nil, 0, fmt.Errorf("gc cannot tell what backup %s references: %w", name, &UnreadableBackupError{Name: name, Err: err})
		}
	}
	return live, len(names), nil
}

// UnreadableBackupError is a backup whose record, or what it references,
// cannot be read: gc refuses to run beside it, since it could not tell
// which objects that backup needs.
type UnreadableBackupError struct {
	Name string
	Err  error
}

func (e *UnreadableBackupError) Error() string { return e.Err.Error() }
func (e *UnreadableBackupError) Unwrap() error { return e.Err }

// gcPacks reads every index file and the pack listing, and decides each
// pack's fate. Packs in storage that no index lists are left over from an
// interrupted backup or gc and are deleted.
func (s *Store) gcPacks(ctx context.Context, live map[digest.Digest]bool, repackBelow float64) (map[digest.Digest]*gcPack, map[string][]packEntries, error) {
	var indexKeys []string
	if err := s.backend.List(ctx, indexPrefix, func(info Info) error {
		indexKeys = append(indexKeys, info.Key)
		return nil
	}); err != nil {
		return nil, nil, fmt.Errorf("list pack indexes: %w", err)
	}
	sort.Strings(indexKeys)
	packs := map[digest.Digest]*gcPack{}
	indexFiles := map[string][]packEntries{}
	claimed := map[digest.Digest]bool{} // ids whose live copy is counted
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
			for _, e := range pe.entries {
				if live[e.ID] && !claimed[e.ID] {
					claimed[e.ID] = true
					p.live = append(p.live, e.ID)
					p.liveBytes += int64(e.Length)
				}
			}
		}
	}
	err := s.backend.List(ctx, packsPrefix, func(info Info) error {
		id, ok := parsePackKey(info.Key)
		if !ok {
			return nil
		}
		if p := packs[id]; p != nil {
			p.size = info.Size
		} else {
			packs[id] = &gcPack{id: id, key: info.Key, size: info.Size, fate: deletePack, decided: true} // no index lists it
		}
		return nil
	})
	if err != nil {
		return nil, nil, fmt.Errorf("list packs: %w", err)
	}
	for _, p := range packs {
		if p.decided {
			continue
		}
		p.decided = true
		if p.size < 0 {
			// Listed by an index, missing in storage: nothing to delete,
			// and its objects are lost (verify names them).
			p.size = 0
			if len(p.live) > 0 {
				return nil, nil, fmt.Errorf("pack %s holds %d objects backups need but is missing: %w", p.key, len(p.live), ErrNotFound)
			}
			p.fate = deletePack
			continue
		}
		switch {
		case p.liveBytes == 0:
			p.fate = deletePack
		case repackBelow > 0 && float64(p.liveBytes) < repackBelow*float64(p.size):
			p.fate = repackPack
		default:
			p.fate = keepPack
		}
	}
	return packs, indexFiles, nil
}

// repack copies the objects ids, read and verified, into new packs.
func (s *Store) repack(ctx context.Context, ids []digest.Digest) error {
	if len(ids) == 0 {
		return nil
	}
	return s.WithPacker(ctx, 0, func(ctx context.Context, packer *Packer) error {
		var buf bytes.Buffer
		return s.GetMany(ctx, ids, func(h digest.Digest, r io.Reader, err error) error {
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
	})
}

// putIndex stores an index file listing packs.
func (s *Store) putIndex(ctx context.Context, packs []packEntries) error {
	idx := s.seal.seal(encodeIndex(packs), []byte(adIndex))
	id := digest.Of(idx)
	if err := s.backend.Put(ctx, indexKey(id), bytes.NewReader(idx), int64(len(idx))); err != nil {
		return fmt.Errorf("store index: %w", err)
	}
	s.cacheIndexFile(id, idx)
	return nil
}

// resetIndex makes the next lookup read the index files again.
func (s *Store) resetIndex() {
	s.index.mu.Lock()
	s.index.loaded = false
	s.index.packs = nil
	s.index.packNum = nil
	s.index.entries.reset()
	s.index.mu.Unlock()
}

// writeGCMarker tells every cache of known objects that objects may be
// gone: written before anything is deleted.
func (s *Store) writeGCMarker(ctx context.Context) error {
	now := time.Now().UTC()
	var id [4]byte
	_, _ = rand.Read(id[:])
	data, _ := json.Marshal(map[string]any{"started": now})
	key := gcMarkerKey(now, hex.EncodeToString(id[:]))
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
