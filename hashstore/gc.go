package hashstore

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/deltabackup/deltabackup/snapshot/digest"
)

// DefaultRepackBelow is the live share under which gc rewrites a pack:
// a pack half dead costs as much storage as its live half again.
const DefaultRepackBelow = 0.5

// staleTempAge: a temporary file of a local repository this old belongs to
// a write that was killed. gc removes such files only when no shared lock
// is live, and the margin covers a holder whose lock went stale while it
// still wrote.
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
	// LockWait is how long to wait for another gc to finish.
	LockWait time.Duration
}

// GCReport is what GC found and did (or would do, in a dry run).
type GCReport struct {
	DryRun      bool `json:"dry_run"`
	Backups     int  `json:"backups"`
	LiveObjects int  `json:"live_objects"`
	// Deleted* is what this run's sweeps deleted (in a dry run: what is
	// unreferenced now).
	DeletedObjects  int   `json:"deleted_objects"` // loose objects
	DeletedBytes    int64 `json:"deleted_bytes"`   // stored bytes freed, packs included
	DeletedPacks    int   `json:"deleted_packs"`
	RepackedPacks   int   `json:"repacked_packs"`
	RepackedObjects int   `json:"repacked_objects"`
	RepackedBytes   int64 `json:"repacked_bytes"`
	KeptPacks       int   `json:"kept_packs"`
	TempFiles       int   `json:"temp_files_removed"` // left by killed writes to a local repository
	// MarkedPacks and MarkedObjects are what this run's mark doomed: a
	// sweep deletes them once no backup that was running then still runs
	// (at once when none was).
	MarkedPacks   int `json:"marked_packs"`
	MarkedObjects int `json:"marked_objects"`
	// SweptMarks counts the pending deletions swept; PendingMarks those
	// still waiting for the backups in WaitingFor.
	SweptMarks   int      `json:"swept_marks"`
	PendingMarks int      `json:"pending_marks"`
	WaitingFor   []string `json:"waiting_for"`
	// KeptLive counts doomed packs and objects a sweep kept, because a
	// record written after the mark references them; Deferred the doomed
	// loose objects a running backup stores again, left for a later sweep.
	KeptLive int `json:"kept_live"`
	Deferred int `json:"deferred_objects"`
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

// gcPlan is what a mark will doom and rewrite.
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
// whose live share fell under opts.RepackBelow, beside running backups,
// in two phases (see pending.go and README "gc beside backups"): it
// sweeps earlier marks whose backups are done, then marks what is
// unreferenced now, and sweeps that mark at once if no backup runs. It
// holds the exclusive lock, which only other gcs respect. It refuses to
// run when a record or what it references cannot be read, since it could
// not tell what that backup references. Each step leaves a consistent
// repository if gc is interrupted: new packs and index files are written
// before the old ones are deleted, and a pack left without an index is
// deleted by a later gc.
func (s *Store) GC(ctx context.Context, opts GCOptions) (*GCReport, error) {
	if opts.Referrer == nil {
		return nil, ErrNoReferrer
	}
	if opts.RepackBelow == 0 {
		opts.RepackBelow = DefaultRepackBelow
	}
	rep := &GCReport{DryRun: opts.DryRun, StaleLocks: []string{}, WaitingFor: []string{}}
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
	st, err := s.readGCState(ctx)
	if err != nil {
		return nil, err
	}
	pendings, err := s.loadDoomed(ctx, st.pending)
	if err != nil {
		return nil, err
	}
	s.resetIndex()
	shared, err := s.liveLocks(ctx, LockShared)
	if err != nil {
		return nil, err
	}
	var ready, waiting []*pendingDeletion
	var leftovers []string
	for _, p := range pendings {
		switch {
		case !p.Complete:
			leftovers = append(leftovers, p.Key) // its gc died before it listed the locks
		case slices.ContainsFunc(p.Waits, func(k string) bool { _, ok := shared[k]; return ok }):
			waiting = append(waiting, p)
		default:
			ready = append(ready, p)
		}
	}
	// Every record is read after the locks ready marks wait for are
	// gone: what those backups relied on is in their records now.
	live, walked := map[digest.Digest]bool{}, map[string]bool{}
	if err := s.liveObjects(ctx, opts.Referrer, live, walked); err != nil {
		return nil, err
	}
	if opts.DryRun {
		plan, err := s.planGC(ctx, live, len(walked), opts)
		if err != nil {
			return nil, err
		}
		plan.report(rep, true)
		rep.PendingMarks = len(pendings)
		return rep, nil
	}
	remaining := waiting
	if len(ready) > 0 {
		deferred, err := s.sweep(ctx, lk, ready, append(slices.Clip(waiting), ready...), live, rep)
		if err != nil {
			return nil, err
		}
		remaining = append(remaining, deferred...)
	}
	if err := s.deleteKeys(ctx, leftovers); err != nil {
		return nil, fmt.Errorf("delete pending deletions of a gc that did not finish: %w", err)
	}
	s.setDoomed(remaining)
	plan, err := s.planGC(ctx, live, len(walked), opts)
	if err != nil {
		return nil, err
	}
	plan.report(rep, false)
	p, err := s.mark(ctx, lk, plan, shared)
	if err != nil {
		return nil, err
	}
	if p != nil {
		s.setDoomed(append(slices.Clip(remaining), p))
		if len(p.Waits) == 0 {
			// No backup ran when the mark was written: what it dooms is
			// unreferenced unless a record written since says otherwise.
			if err := s.liveObjects(ctx, opts.Referrer, live, walked); err != nil {
				return nil, err
			}
			deferred, err := s.sweep(ctx, lk, []*pendingDeletion{p}, append(slices.Clip(remaining), p), live, rep)
			if err != nil {
				return nil, err
			}
			remaining = append(remaining, deferred...)
		} else {
			remaining = append(remaining, p)
		}
	}
	s.setDoomed(remaining)
	rep.Backups = len(walked)
	rep.PendingMarks = len(remaining)
	waits := map[string]bool{}
	for _, p := range remaining {
		for _, k := range p.Waits {
			if l, ok := shared[k]; ok && !waits[k] {
				waits[k] = true
				rep.WaitingFor = append(rep.WaitingFor, l.String())
			}
		}
	}
	if tr, ok := As[TempRemover](s.backend); ok {
		// A temporary file is a write under way; a backup may be writing
		// one now unless no shared lock is live.
		if now, err := s.liveLocks(ctx, LockShared); err == nil && len(now) == 0 {
			n, size, err := tr.RemoveStaleTemps(staleTempAge)
			if err != nil {
				return nil, fmt.Errorf("remove temporary files of unfinished writes: %w", err)
			}
			rep.TempFiles = n
			rep.DeletedBytes += size
		}
	}
	s.resetIndex()
	s.logger.Info("gc done", "deleted_objects", rep.DeletedObjects, "deleted_packs", rep.DeletedPacks,
		"repacked_packs", rep.RepackedPacks, "freed_bytes", rep.DeletedBytes, "pending_marks", rep.PendingMarks)
	return rep, lk.Err()
}

// liveLocks returns the live locks of kind, by key.
func (s *Store) liveLocks(ctx context.Context, kind LockKind) (map[string]LockInfo, error) {
	locks, err := s.locksUnder(ctx, locksPrefix+string(kind)+"/")
	if err != nil {
		return nil, err
	}
	now := time.Now()
	live := map[string]LockInfo{}
	for _, l := range locks {
		if l.Kind == kind && !l.Stale(now) {
			live[l.Key] = l
		}
	}
	return live, nil
}

// planGC decides, from the objects every backup references, the fate of
// every pack and loose object no pending deletion holds yet.
func (s *Store) planGC(ctx context.Context, live map[digest.Digest]bool, backups int, opts GCOptions) (*gcPlan, error) {
	doomedPacks, doomedLoose, err := s.doomedSets(ctx)
	if err != nil {
		return nil, err
	}
	packs, indexFiles, err := s.gcPacks(ctx, live, doomedPacks, opts.RepackBelow)
	if err != nil {
		return nil, err
	}
	plan := &gcPlan{backups: backups, live: live, packs: packs, indexFiles: indexFiles, keptIndex: map[string]bool{}, deadSizes: map[string]int64{}}
	liveNames := s.liveNames(live)
	err = s.backend.List(ctx, objectsPrefix, func(info Info) error {
		if name, ok := parseObjectKey(info.Key); ok && !liveNames[name] && !doomedLoose[name] {
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

// liveNames returns the loose names of the objects in live.
func (s *Store) liveNames(live map[digest.Digest]bool) map[digest.Digest]bool {
	if s.seal == nil {
		return live
	}
	names := make(map[digest.Digest]bool, len(live))
	for id := range live {
		names[s.seal.looseName(id)] = true
	}
	return names
}

// report fills in what the plan will do: doom (or, in a dry run,
// delete) and repack.
func (p *gcPlan) report(rep *GCReport, dryRun bool) {
	rep.Backups, rep.LiveObjects = p.backups, len(p.live)
	rep.Retained, rep.RetainedUntil = p.retained, p.retainedUntil
	var packs int
	var bytes int64
	for _, pk := range p.packs {
		switch pk.fate {
		case deletePack:
			packs++
			bytes += pk.size
		case repackPack:
			rep.RepackedPacks++
			rep.RepackedObjects += len(pk.live)
			rep.RepackedBytes += pk.liveBytes
			bytes += pk.size - pk.liveBytes
		default:
			rep.KeptPacks++
		}
	}
	if dryRun {
		rep.DeletedObjects, rep.DeletedPacks, rep.DeletedBytes = len(p.deadLoose), packs, p.deadBytes+bytes
	} else {
		rep.MarkedObjects, rep.MarkedPacks = len(p.deadLoose), packs+rep.RepackedPacks
	}
}

// mark carries out a plan's first phase: live objects of packs to
// rewrite go into new packs with new index files, then a pending
// deletion names what the plan dooms, and then the shared locks live now
// (those holders may rely on doomed copies), which it adds to shared. It
// returns nil when the plan dooms nothing.
func (s *Store) mark(ctx context.Context, lk *Lock, plan *gcPlan, shared map[string]LockInfo) (*pendingDeletion, error) {
	now := time.Now().UTC()
	var rnd [4]byte
	_, _ = rand.Read(rnd[:])
	p := &pendingDeletion{Version: pendingVersion, Marked: now, GCLock: lk.info.Key, Key: pendingKey(now, hex.EncodeToString(rnd[:])),
		Waits: []string{}, Packs: []pendingPack{}, Loose: []pendingObject{}}
	var carry []digest.Digest
	for _, pk := range plan.packs {
		switch pk.fate {
		case repackPack:
			carry = append(carry, pk.live...)
			p.Packs = append(p.Packs, pendingPack{ID: pk.id, Size: pk.size, Freed: pk.size - pk.liveBytes})
		case deletePack:
			p.Packs = append(p.Packs, pendingPack{ID: pk.id, Size: pk.size, Freed: pk.size})
		}
	}
	for _, key := range plan.deadLoose {
		if name, ok := parseObjectKey(key); ok {
			p.Loose = append(p.Loose, pendingObject{Name: name, Size: plan.deadSizes[key]})
		}
	}
	if len(p.Packs) == 0 && len(p.Loose) == 0 {
		return nil, nil
	}
	if err := s.repack(ctx, carry); err != nil {
		return nil, err
	}
	if err := s.writePending(ctx, p); err != nil {
		return nil, err
	}
	live, err := s.liveLocks(ctx, LockShared)
	if err != nil {
		return nil, err
	}
	for key, l := range live {
		p.Waits = append(p.Waits, key)
		shared[key] = l
	}
	slices.Sort(p.Waits)
	p.Complete = true
	if err := s.writePending(ctx, p); err != nil {
		return nil, err
	}
	s.logger.Info("gc marked unreferenced data for deletion", "packs", len(p.Packs), "objects", len(p.Loose), "waits_for", len(p.Waits))
	return p, nil
}

// sweep deletes what the pending deletions ps doom and no record in live
// references (doomed is every pending deletion the index keeps apart,
// ps included). A doomed pack holding the only copy of a referenced
// object stays. Loose objects stay while a shared lock says it writes
// doomed ones again; the pending deletions then stay too, and are
// returned, for a later sweep.
func (s *Store) sweep(ctx context.Context, lk *Lock, ps, doomed []*pendingDeletion, live map[digest.Digest]bool, rep *GCReport) ([]*pendingDeletion, error) {
	s.setDoomed(doomed)
	ix, err := s.loadIndex(ctx)
	if err != nil {
		return nil, err
	}
	indexKeys, indexFiles, err := s.readIndexFiles(ctx)
	if err != nil {
		return nil, err
	}
	entriesOf := map[digest.Digest][]PackEntry{}
	for _, key := range indexKeys {
		for _, pe := range indexFiles[key] {
			entriesOf[pe.id] = append(entriesOf[pe.id], pe.entries...)
		}
	}
	// hasLiveCopy: a writer would find id outside the doomed packs.
	hasLiveCopy := func(id digest.Digest) (bool, error) {
		ix.mu.RLock()
		defer ix.mu.RUnlock()
		_, ok, err := ix.get(id, true)
		return ok, err
	}
	dead := map[digest.Digest]pendingPack{}
	seen := map[digest.Digest]bool{}
	for _, p := range ps {
		for _, pk := range p.Packs {
			if seen[pk.ID] {
				continue
			}
			seen[pk.ID] = true
			keep := false
			for _, e := range entriesOf[pk.ID] {
				if !live[e.ID] {
					continue
				}
				ok, err := hasLiveCopy(e.ID)
				if err != nil {
					return nil, err
				}
				if !ok {
					keep = true
					break
				}
			}
			if keep {
				rep.KeptLive++
				continue
			}
			dead[pk.ID] = pk
		}
	}
	liveNames := s.liveNames(live)
	var loose []string
	var looseBytes int64
	seenLoose := map[digest.Digest]bool{}
	for _, p := range ps {
		for _, o := range p.Loose {
			if seenLoose[o.Name] {
				continue
			}
			seenLoose[o.Name] = true
			if liveNames[o.Name] {
				rep.KeptLive++
				continue
			}
			loose = append(loose, looseKey(o.Name))
			looseBytes += o.Size
		}
	}
	// The marker comes first: holders of locks a mark left out learn
	// from it that their objects may be gone, and writers of doomed loose
	// objects that a sweep is under way.
	keys := make([]string, len(ps))
	for i, p := range ps {
		keys[i] = p.Key
	}
	if err := s.writeGCMarker(ctx, lk.info.Key, keys); err != nil {
		return nil, err
	}
	shared, err := s.liveLocks(ctx, LockShared)
	if err != nil {
		return nil, err
	}
	deferLoose := false
	for _, l := range shared {
		if l.Resurrects {
			deferLoose = true
			s.logger.Info("leaving doomed loose objects for a later gc: a running backup stores some again", "lock", l.String())
		}
	}
	// Index files that name a pack going away are replaced by ones that
	// list only their remaining packs; only then do the packs go.
	var oldIndex []string
	for _, key := range indexKeys {
		var keep []packEntries
		touched := false
		for _, pe := range indexFiles[key] {
			if _, gone := dead[pe.id]; gone {
				touched = true
			} else {
				keep = append(keep, pe)
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
	var deadPacks []string
	for id, pk := range dead {
		deadPacks = append(deadPacks, packKey(id))
		rep.DeletedBytes += pk.Freed
		if pk.Freed == pk.Size {
			rep.DeletedPacks++ // else repacked: counted by its mark
		}
	}
	if err := s.deleteKeys(ctx, deadPacks); err != nil {
		return nil, fmt.Errorf("delete packs: %w", err)
	}
	if deferLoose {
		rep.Deferred += len(loose)
		return ps, nil // swept again by a later gc, when no backup writes doomed objects
	}
	if err := s.deleteKeys(ctx, loose); err != nil {
		return nil, fmt.Errorf("delete objects: %w", err)
	}
	rep.DeletedObjects += len(loose)
	rep.DeletedBytes += looseBytes
	if err := s.deleteKeys(ctx, keys); err != nil {
		return nil, fmt.Errorf("delete swept pending deletions: %w", err)
	}
	rep.SweptMarks += len(ps)
	return nil, nil
}

// liveObjects adds to live every object the backups not in walked
// reference, metadata included, and adds them to walked.
func (s *Store) liveObjects(ctx context.Context, referrer Referrer, live map[digest.Digest]bool, walked map[string]bool) error {
	names, err := s.verifyNames(ctx, nil, BackupFilter{})
	if err != nil {
		return err
	}
	for _, name := range names {
		if walked[name] {
			continue
		}
		walked[name] = true
		rec, err := s.readBackup(ctx, name)
		if err != nil {
			return fmt.Errorf("gc cannot tell what backup %s references: %w", name, &UnreadableBackupError{Name: name, Err: err})
		}
		err = referrer.References(ctx, rec, func(r Ref) error {
			if r.Metadata && live[r.ID] {
				return ErrSkip // marked with all it leads to, by an earlier backup
			}
			live[r.ID] = true
			return nil
		})
		if err != nil {
			return fmt.Errorf("gc cannot tell what backup %s references: %w", name, &UnreadableBackupError{Name: name, Err: err})
		}
	}
	return nil
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
func (s *Store) gcPacks(ctx context.Context, live, doomed map[digest.Digest]bool, repackBelow float64) (map[digest.Digest]*gcPack, map[string][]packEntries, error) {
	indexKeys, indexFiles, err := s.readIndexFiles(ctx)
	if err != nil {
		return nil, nil, err
	}
	packs := map[digest.Digest]*gcPack{}
	claimed := map[digest.Digest]bool{} // ids whose live copy is counted
	for _, key := range indexKeys {
		for _, pe := range indexFiles[key] {
			if doomed[pe.id] {
				continue // an earlier mark's; its sweep decides
			}
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
	err = s.backend.List(ctx, packsPrefix, func(info Info) error {
		id, ok := parsePackKey(info.Key)
		if !ok || doomed[id] {
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

// readIndexFiles reads every index file, for gc: their keys in order, and
// what each lists.
func (s *Store) readIndexFiles(ctx context.Context) ([]string, map[string][]packEntries, error) {
	keys, err := s.indexKeys(ctx)
	if err != nil {
		return nil, nil, err
	}
	files := make(map[string][]packEntries, len(keys))
	for _, key := range keys {
		entries, err := s.readIndexFile(ctx, key)
		if err != nil {
			return nil, nil, fmt.Errorf("gc cannot read index file %s: %w", key, err)
		}
		files[key] = entries
	}
	return keys, files, nil
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
	s.index.doomedEntries.reset()
	s.index.mu.Unlock()
}

// writeGCMarker tells every cache of known objects that objects may be
// gone, and which pending deletions are swept by which gc: written
// before anything is deleted.
func (s *Store) writeGCMarker(ctx context.Context, gcLock string, sweeps []string) error {
	now := time.Now().UTC()
	var id [4]byte
	_, _ = rand.Read(id[:])
	data, _ := json.Marshal(sweepMarker{Started: now, GCLock: gcLock, Sweeps: sweeps})
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
