package hashstore

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/deltabackup/deltabackup/snapshot/digest"
)

// gc runs beside backups in two phases (README "gc beside backups").
//
// A mark finds what no record references, copies the live objects of
// mostly dead packs into new packs, and writes a pending deletion under
// gc/pending/: the packs and loose objects it would delete, and the
// shared locks (running backups and copies) live right after it was
// written. Nothing is deleted then.
//
// A process that takes a shared lock reads the pending deletions after
// its lock is written. From then on it treats what they name as absent:
// it stores such a content again rather than reference the doomed copy
// (a packed one goes into a new pack, a loose one is written again under
// its key after the lock says so; see Lock.resurrect). Readers still
// read doomed copies until they are gone.
//
// A sweep, in a later gc (or the same one, if no shared lock was live at
// the mark), deletes a pending deletion's keys once every lock it waits
// for is gone: those holders may have relied on doomed copies, but they
// have written their records (or died). The sweep reads every record
// again and keeps whatever a record references, packs holding the only
// copy of such an object included. It writes a gc marker naming the
// pending deletions it sweeps before it deletes anything.
//
// Why that is enough: a shared lock either was listed by the mark (the
// sweep waits for it) or was written after that listing, hence after the
// pending deletion, so its holder read it and relies on nothing it
// names. A holder judged stale and left out finds, before it writes its
// record (Lock.Check), a pending deletion or sweep it did not know, and
// takes its lock again and checks everything it relies on.

// pendingVersion is the version of the pending deletion format.
const pendingVersion = 1

// maxPendingSize bounds the pending deletion file read: some 100 bytes
// per doomed pack or loose object.
const maxPendingSize = 1 << 30

// pendingDeletion is one mark of gc: what it dooms, and whom the sweep
// must wait for.
type pendingDeletion struct {
	Version int       `json:"version"`
	Marked  time.Time `json:"marked"`
	// GCLock is the key of the marking gc's lock.
	GCLock string `json:"gc_lock"`
	// Complete is set once Waits is known: an incomplete pending deletion
	// is never swept (its gc died before listing the locks) and the next
	// gc deletes it.
	Complete bool            `json:"complete"`
	Waits    []string        `json:"waits"`
	Packs    []pendingPack   `json:"packs"`
	Loose    []pendingObject `json:"loose"`
	// Key is where it is stored.
	Key string `json:"-"`
}

// pendingPack is a doomed pack: its stored size, and what deleting it
// frees beyond the live objects the mark copied into new packs.
type pendingPack struct {
	ID    digest.Digest `json:"id"`
	Size  int64         `json:"size"`
	Freed int64         `json:"freed"`
}

// pendingObject is a doomed loose object, by its name (sealer.looseName).
type pendingObject struct {
	Name digest.Digest `json:"name"`
	Size int64         `json:"size"`
}

// decodePending parses and checks a pending deletion: a hostile one must
// not make gc delete by a key outside packs/ and objects/, nor make a
// sweep wait for ever on something that is not a lock key.
func decodePending(data []byte) (*pendingDeletion, error) {
	var p pendingDeletion
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&p); err != nil {
		return nil, fmt.Errorf("pending deletion: %w", err)
	}
	if dec.More() {
		return nil, errors.New("pending deletion: data after the object")
	}
	if p.Version != pendingVersion {
		return nil, fmt.Errorf("pending deletion: version %d, want %d", p.Version, pendingVersion)
	}
	if !isLockKey(p.GCLock) {
		return nil, fmt.Errorf("pending deletion: gc lock %q is not a lock key", p.GCLock)
	}
	for _, w := range p.Waits {
		if !isLockKey(w) {
			return nil, fmt.Errorf("pending deletion: waits for %q, not a lock key", w)
		}
	}
	for _, pk := range p.Packs {
		if pk.ID.IsZero() || pk.Size < 0 || pk.Freed < 0 || pk.Freed > pk.Size {
			return nil, fmt.Errorf("pending deletion: pack %s with size %d and %d freed", pk.ID, pk.Size, pk.Freed)
		}
	}
	for _, o := range p.Loose {
		if o.Name.IsZero() || o.Size < 0 {
			return nil, fmt.Errorf("pending deletion: object %s with size %d", o.Name, o.Size)
		}
	}
	return &p, nil
}

// isLockKey reports whether key is spelt as lockKey spells them.
func isLockKey(key string) bool {
	rest, ok := strings.CutPrefix(key, locksPrefix)
	if !ok || len(key) > 200 || !strings.HasSuffix(rest, ".json") {
		return false
	}
	kind, name, ok := strings.Cut(rest, "/")
	return ok && (kind == string(LockShared) || kind == string(LockExclusive)) && name != ".json" &&
		!strings.ContainsAny(name, "/\x00") && !strings.Contains(name, "..")
}

// readPending reads the pending deletion stored under key.
func (s *Store) readPending(ctx context.Context, key string) (*pendingDeletion, error) {
	rc, err := s.backend.Get(ctx, key)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	data, err := io.ReadAll(io.LimitReader(rc, maxPendingSize+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", key, err)
	}
	if len(data) > maxPendingSize {
		return nil, fmt.Errorf("read %s: larger than %d bytes", key, maxPendingSize)
	}
	p, err := decodePending(data)
	if err != nil {
		return nil, &DamagedPendingError{Key: key, Err: err}
	}
	p.Key = key
	return p, nil
}

// DamagedPendingError is a pending deletion that cannot be decoded.
// Backups and gc refuse to work beside it: they cannot tell what it
// dooms. Deleting it is safe (no sweep then deletes what it named; the
// next gc marks again).
type DamagedPendingError struct {
	Key string
	Err error
}

func (e *DamagedPendingError) Error() string { return e.Key + ": " + e.Err.Error() }
func (e *DamagedPendingError) Unwrap() error { return e.Err }

// writePending stores p under its key.
func (s *Store) writePending(ctx context.Context, p *pendingDeletion) error {
	data, err := json.Marshal(p)
	if err != nil {
		return err
	}
	if err := s.backend.Put(ctx, p.Key, bytes.NewReader(data), int64(len(data))); err != nil {
		return fmt.Errorf("write pending deletion: %w", err)
	}
	return nil
}

// gcState is one listing of gc/: the summary caches compare (any gc
// changes it), the gc markers and the pending deletions.
type gcState struct {
	summary string
	markers []string
	pending []string
}

// readGCState lists gc/ once.
func (s *Store) readGCState(ctx context.Context) (gcState, error) {
	var st gcState
	var n int
	var last string
	err := s.backend.List(ctx, gcPrefix, func(info Info) error {
		n++
		if info.Key > last {
			last = info.Key
		}
		if strings.HasPrefix(info.Key, pendingPrefix) {
			st.pending = append(st.pending, info.Key)
		} else {
			st.markers = append(st.markers, info.Key)
		}
		return nil
	})
	if err != nil {
		return gcState{}, fmt.Errorf("list gc markers: %w", err)
	}
	st.summary = fmt.Sprintf("%d:%s", n, last)
	return st, nil
}

// doomed is what the pending deletions a Store knows of name: writers
// take it for absent. It only grows while a lock is held, so that what a
// writer once took for doomed it never relies on.
type doomed struct {
	mu     sync.Mutex
	loaded bool
	keys   map[string]bool
	packs  map[digest.Digest]bool
	loose  map[digest.Digest]bool
	// read caches complete pending deletions by key: they never change.
	read map[string]*pendingDeletion
}

// loadDoomed reads the pending deletions listed in keys (complete ones
// once per Store) and makes them what the Store takes for doomed. When
// that changes, the pack index is read again, since it keeps doomed packs
// apart.
func (s *Store) loadDoomed(ctx context.Context, keys []string) ([]*pendingDeletion, error) {
	d := &s.doomed
	var out []*pendingDeletion
	for _, key := range keys {
		d.mu.Lock()
		p := d.read[key]
		d.mu.Unlock()
		if p == nil {
			var err error
			if p, err = s.readPending(ctx, key); errors.Is(err, ErrNotFound) {
				continue // swept meanwhile
			} else if err != nil {
				return nil, err
			}
			if p.Complete {
				d.mu.Lock()
				if d.read == nil {
					d.read = map[string]*pendingDeletion{}
				}
				d.read[key] = p
				d.mu.Unlock()
			}
		}
		out = append(out, p)
	}
	s.setDoomed(out)
	return out, nil
}

// setDoomed makes ps what the Store takes for doomed.
func (s *Store) setDoomed(ps []*pendingDeletion) {
	d := &s.doomed
	keys := map[string]bool{}
	packs := map[digest.Digest]bool{}
	loose := map[digest.Digest]bool{}
	for _, p := range ps {
		keys[p.Key] = true
		for _, pk := range p.Packs {
			packs[pk.ID] = true
		}
		for _, o := range p.Loose {
			loose[o.Name] = true
		}
	}
	d.mu.Lock()
	// Only the doomed packs shape the index.
	same := d.loaded && maps.Equal(packs, d.packs)
	d.loaded, d.keys, d.packs, d.loose = true, keys, packs, loose
	for key := range d.read {
		if !keys[key] {
			delete(d.read, key)
		}
	}
	d.mu.Unlock()
	if !same {
		s.resetIndex()
	}
}

// doomedSets returns the doomed packs and loose objects, reading the
// pending deletions first if nothing did yet (a reader without a lock).
func (s *Store) doomedSets(ctx context.Context) (packs, loose map[digest.Digest]bool, err error) {
	d := &s.doomed
	d.mu.Lock()
	loaded := d.loaded
	d.mu.Unlock()
	if !loaded {
		st, err := s.readGCState(ctx)
		if err != nil {
			return nil, nil, err
		}
		if _, err := s.loadDoomed(ctx, st.pending); err != nil {
			return nil, nil, err
		}
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.packs, d.loose, nil
}

// looseDoomed reports whether the loose object name is doomed.
func (s *Store) looseDoomed(name digest.Digest) bool {
	d := &s.doomed
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.loose[name]
}

// sweepMarker is what a gc marker of a sweep says: which gc swept which
// pending deletions.
type sweepMarker struct {
	Started time.Time `json:"started"`
	GCLock  string    `json:"gc_lock,omitempty"`
	Sweeps  []string  `json:"sweeps,omitempty"`
}

// readSweepMarker reads a gc marker.
func (s *Store) readSweepMarker(ctx context.Context, key string) (sweepMarker, error) {
	var m sweepMarker
	rc, err := s.backend.Get(ctx, key)
	if err != nil {
		return m, err
	}
	defer rc.Close()
	data, err := io.ReadAll(io.LimitReader(rc, 1<<20))
	if err != nil {
		return m, fmt.Errorf("read gc marker %s: %w", key, err)
	}
	if err := json.Unmarshal(data, &m); err != nil {
		return m, fmt.Errorf("gc marker %s: %w", key, err)
	}
	m.Sweeps = slices.DeleteFunc(m.Sweeps, func(k string) bool { return !strings.HasPrefix(k, pendingPrefix) })
	return m, nil
}
