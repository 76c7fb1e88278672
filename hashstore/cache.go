package hashstore

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/deltabackup/deltabackup/snapshot/digest"
)

// A Store on remote storage can keep a local cache so that a nightly
// incremental of a large unchanged tree costs a handful of requests:
//
//   - index files are immutable and named by their own hash, so each is
//     fetched once and read from disk after that;
//   - loose objects seen present (listed, stat'ed or uploaded) are
//     remembered, so they are not asked for again.
//
// Only gc removes objects. It writes a marker under gc/ before it deletes
// anything; a Store that finds the markers changed since its cache was
// written forgets every remembered object. A cache is an optimisation: a
// missing or damaged one costs requests, never correctness.

// knownObjects is the remembered set of loose objects.
type knownObjects struct {
	mu      sync.Mutex
	sizes   map[digest.Digest]int64 // by loose name (sealer.looseName)
	marker  string                  // the gc/ markers the set was built under
	loaded  bool
	changed bool
	// listed is when objects/ was last listed whole: for a while after,
	// an object not in sizes is taken as absent without asking again, so
	// that a stream of lookups of unknown objects (a peer's /v1/has) does
	// not list the repository every time.
	listed time.Time
}

// listingFresh is how long a whole listing of objects/ answers for
// objects it did not find.
const listingFresh = time.Minute

// Refresh makes a Store that lives across operations (watch) forget what
// it remembers of the repository's objects — the pack index and the loose
// objects seen stored — when a gc ran since it last looked, so it never
// takes an object gc removed for present. Call it under a backup's
// shared lock lk, which gc's sweeps wait for, before relying on what the
// Store knows; the lock says which gc markers it saw when it was taken.
func (s *Store) Refresh(lk *Lock) {
	marker := lk.GCMarker()
	s.refreshMu.Lock()
	defer s.refreshMu.Unlock()
	if s.refreshed && s.refreshMarker == marker {
		return
	}
	if s.refreshed {
		s.logger.Info("repository changed by gc; pack index and known objects read again")
	}
	s.refreshMarker, s.refreshed = marker, true
	s.forgetObjects()
}

// ReloadObjects makes the Store read the pack index and the known loose
// objects again when it last did so more than olderThan ago, and reports
// whether it will. A long-running reader (serve) calls it when an object
// it was asked for is missing: other processes add packs, and gc moves
// objects between them, after the index was read.
func (s *Store) ReloadObjects(olderThan time.Duration) bool {
	s.refreshMu.Lock()
	defer s.refreshMu.Unlock()
	if !s.objectsRead.IsZero() && time.Since(s.objectsRead) < olderThan {
		return false
	}
	s.objectsRead = time.Now()
	s.doomed.mu.Lock()
	s.doomed.loaded = false // read again: readers hold no lock
	s.doomed.mu.Unlock()
	s.forgetObjects()
	return true
}

// ForgetObjects drops what the store remembers of the repository's
// objects (the pack index and the loose objects seen stored); both are
// read again on next use. A backup whose lock lapsed calls it, since a gc
// may have run unseen.
func (s *Store) ForgetObjects() { s.forgetObjects() }

// forgetObjects drops the pack index and the known loose objects; both
// are read again on next use.
func (s *Store) forgetObjects() {
	ix := &s.index
	ix.mu.Lock()
	ix.loaded, ix.packs, ix.packNum = false, nil, nil
	ix.entries.reset()
	ix.doomedEntries.reset()
	ix.mu.Unlock()
	k := &s.known
	k.mu.Lock()
	k.loaded, k.sizes, k.changed, k.listed = false, nil, false, time.Time{}
	k.mu.Unlock()
}

// loadKnown reads the remembered objects once, and forgets them when a gc
// ran since they were written.
func (s *Store) loadKnown(ctx context.Context) (*knownObjects, error) {
	k := &s.known
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.loaded {
		return k, nil
	}
	if k.sizes == nil {
		k.sizes = map[digest.Digest]int64{}
	}
	k.loaded = true
	if s.cacheDir == "" {
		return k, nil
	}
	// Under a lock (Refresh) the markers are known; otherwise ask.
	s.refreshMu.Lock()
	marker, known := s.refreshMarker, s.refreshed
	s.refreshMu.Unlock()
	if !known {
		var err error
		st, err := s.readGCState(ctx)
		if err != nil {
			return nil, err
		}
		marker = st.summary
	}
	k.marker = marker
	f, err := os.Open(filepath.Join(s.cacheDir, "known"))
	if err != nil {
		return k, nil // no cache yet
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 4096), 4096)
	if !sc.Scan() || sc.Text() != "deltabackup-known 1 "+marker {
		s.logger.Info("repository changed by gc since the local cache was written; asking storage again")
		k.changed = true
		return k, nil
	}
	for sc.Scan() {
		h, size, ok := strings.Cut(sc.Text(), " ")
		n, err := strconv.ParseInt(size, 10, 64)
		id, perr := digest.Parse(h)
		if !ok || err != nil || perr != nil {
			k.changed = true // damaged: what was read so far is still right
			return k, nil
		}
		k.sizes[id] = n
	}
	return k, nil
}

// remember adds loose objects known to be stored.
func (k *knownObjects) remember(h digest.Digest, size int64) {
	k.mu.Lock()
	if k.sizes == nil {
		k.sizes = map[digest.Digest]int64{}
	}
	if _, ok := k.sizes[h]; !ok {
		k.sizes[h] = size
		k.changed = true
	}
	k.mu.Unlock()
}

func (k *knownObjects) lookup(h digest.Digest) (int64, bool) {
	k.mu.Lock()
	defer k.mu.Unlock()
	size, ok := k.sizes[h]
	return size, ok
}

// SaveCache writes the remembered objects to the cache directory. Call it
// after a backup succeeded; it does nothing without a cache directory.
func (s *Store) SaveCache() error {
	k := &s.known
	k.mu.Lock()
	defer k.mu.Unlock()
	if s.cacheDir == "" || !k.loaded || !k.changed {
		return nil
	}
	if err := os.MkdirAll(s.cacheDir, 0o700); err != nil {
		return fmt.Errorf("save cache: %w", err)
	}
	tmp, err := os.CreateTemp(s.cacheDir, ".tmp-known-*")
	if err != nil {
		return fmt.Errorf("save cache: %w", err)
	}
	defer os.Remove(tmp.Name())
	w := bufio.NewWriter(tmp)
	fmt.Fprintf(w, "deltabackup-known 1 %s\n", k.marker)
	for h, size := range k.sizes {
		fmt.Fprintf(w, "%s %d\n", h, size)
	}
	if err := w.Flush(); err != nil {
		tmp.Close()
		return fmt.Errorf("save cache: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("save cache: %w", err)
	}
	if err := os.Rename(tmp.Name(), filepath.Join(s.cacheDir, "known")); err != nil {
		return fmt.Errorf("save cache: %w", err)
	}
	k.changed = false
	return nil
}

// cachedIndexFile returns an index file from the local cache, checked
// against its id, or nil.
func (s *Store) cachedIndexFile(id digest.Digest) []byte {
	if s.cacheDir == "" {
		return nil
	}
	data, err := os.ReadFile(filepath.Join(s.cacheDir, "index", id.String()))
	if err != nil || digest.Of(data) != id {
		return nil
	}
	return data
}

func (s *Store) cacheIndexFile(id digest.Digest, data []byte) {
	if s.cacheDir == "" {
		return
	}
	dir := filepath.Join(s.cacheDir, "index")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return
	}
	tmp, err := os.CreateTemp(dir, ".tmp-*")
	if err != nil {
		return
	}
	_, err = tmp.Write(data)
	if cerr := tmp.Close(); err == nil && cerr == nil {
		_ = os.Rename(tmp.Name(), filepath.Join(dir, id.String()))
	}
	os.Remove(tmp.Name())
}

// listThreshold: more unknown loose objects than this are found by
// listing objects/ (1,000 keys a request) rather than one HEAD each.
const listThreshold = 1000

// lookupLoose finds which of ids are stored as loose objects, remembered
// ones first; the rest by HEAD each, or by one listing of objects/ when
// that costs fewer requests.
func (s *Store) lookupLoose(ctx context.Context, ids []digest.Digest, forWrite bool, found func(i int, size int64)) error {
	k, err := s.loadKnown(ctx)
	if err != nil {
		return err
	}
	if forWrite {
		// A doomed object is absent to a writer, whoever else sees it.
		_, doomedLoose, err := s.doomedSets(ctx)
		if err != nil {
			return err
		}
		if len(doomedLoose) > 0 {
			inner := found
			found = func(i int, size int64) {
				if !doomedLoose[s.seal.looseName(ids[i])] {
					inner(i, size)
				}
			}
		}
	}
	// Loose objects are known, listed and stored by name: one keyed hash
	// per id, here.
	names := make([]digest.Digest, len(ids))
	for i, id := range ids {
		names[i] = s.seal.looseName(id)
	}
	var unknown []int
	for i := range ids {
		// Remembered answers only stand in for remote requests; without
		// a cache the backend is asked, which is cheap and current.
		if size, ok := k.lookup(names[i]); ok && s.cacheDir != "" {
			found(i, size)
		} else {
			unknown = append(unknown, i)
		}
	}
	if len(unknown) == 0 {
		return nil
	}
	k.mu.Lock()
	remembered, listed := len(k.sizes), k.listed
	k.mu.Unlock()
	if time.Since(listed) < listingFresh {
		// A listing moments ago saw every loose object; the ones it did
		// not see are absent (or were stored since, which costs a copy).
		for _, i := range unknown {
			if size, ok := k.lookup(names[i]); ok {
				found(i, size)
			}
		}
		return nil
	}
	// A listing costs one request per 1,000 loose objects in the
	// repository; with no better estimate, the remembered ones count.
	if len(unknown) > listThreshold && len(unknown) > remembered/1000 {
		present := map[digest.Digest]int64{}
		err := s.backend.List(ctx, objectsPrefix, func(info Info) error {
			if name, ok := parseObjectKey(info.Key); ok {
				present[name] = info.Size
				k.remember(name, info.Size)
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("list objects: %w", err)
		}
		k.mu.Lock()
		k.listed = time.Now()
		k.mu.Unlock()
		for _, i := range unknown {
			if size, ok := present[names[i]]; ok {
				found(i, size)
			}
		}
		return nil
	}
	var mu sync.Mutex
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(s.lookupParallel)
	for _, i := range unknown {
		g.Go(func() error {
			info, err := s.backend.Stat(gctx, looseKey(names[i]))
			switch {
			case err == nil:
				k.remember(names[i], info.Size)
				mu.Lock()
				found(i, info.Size)
				mu.Unlock()
			case !errors.Is(err, ErrNotFound):
				return fmt.Errorf("lookup %s: %w", ids[i], err)
			}
			return nil
		})
	}
	return g.Wait()
}
