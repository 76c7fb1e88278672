package hashstore

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Locks say who works on the repository. A backup or copy holds a shared
// lock, gc an exclusive one; each is a small file under locks/ that its
// holder refreshes while it works. Shared locks do not exclude gc: gc
// runs beside them in two phases and waits, before it deletes, for every
// shared lock live when it marked (see pending.go). Exclusive locks
// exclude each other, so one gc runs at a time. Taking a lock is: write
// it, then look at the others; a conflict removes the new lock again.
// Two gcs that race both see each other and at least one backs off.
//
// A lock not refreshed within lockExpiry is stale (its holder crashed or
// lost the storage); stale locks are ignored, named in the log, and
// removed by gc.
const lockPollDefault = 5 * time.Second

// Variables, so tests can age locks in seconds.
var (
	lockExpiry  = 30 * time.Minute
	lockRefresh = 5 * time.Minute
)

// LockKind is shared (backups, many at once) or exclusive (gc).
type LockKind string

// Lock kinds.
const (
	LockShared    LockKind = "shared"
	LockExclusive LockKind = "exclusive"
)

// ErrLocked is returned when a lock cannot be taken because of another.
var ErrLocked = errors.New("repository is locked")

// LockInfo is what a lock file says.
type LockInfo struct {
	Kind    LockKind `json:"kind"`
	Purpose string   `json:"purpose"`
	Host    string   `json:"host"`
	PID     int      `json:"pid"`
	// BootID and PIDNamespace say which kernel and which PID namespace
	// PID belongs to: containers on one host share its name, but not its
	// PIDs.
	BootID       string    `json:"boot_id,omitempty"`
	PIDNamespace string    `json:"pid_namespace,omitempty"`
	Created      time.Time `json:"created"`
	Refreshed    time.Time `json:"refreshed"`
	// Resurrects says the holder writes again loose objects a pending
	// deletion names: a sweep leaves those alone while it is live.
	Resurrects bool   `json:"resurrects,omitempty"`
	Key        string `json:"-"`
}

// Stale reports whether the lock's holder stopped refreshing it, or is a
// process that no longer runs in this very PID namespace of this boot of
// this host (a crashed backup need not block gc for lockExpiry). A lock
// from another namespace, or one that does not say its namespace, is
// judged by its refresh time only: its PID means nothing here.
func (l LockInfo) Stale(now time.Time) bool {
	if now.Sub(l.Refreshed) > lockExpiry {
		return true
	}
	me := thisProcess()
	return l.Host == me.Host && l.BootID != "" && l.BootID == me.BootID && l.PIDNamespace != "" &&
		l.PIDNamespace == me.PIDNamespace && l.PID > 0 && l.PID != os.Getpid() && !processRuns(l.PID)
}

// thisProcess returns the identity fields of a lock taken by this process.
var thisProcess = sync.OnceValue(func() LockInfo {
	host, _ := os.Hostname()
	boot, _ := os.ReadFile("/proc/sys/kernel/random/boot_id")
	ns, _ := os.Readlink("/proc/self/ns/pid")
	return LockInfo{Host: host, PID: os.Getpid(), BootID: strings.TrimSpace(string(boot)), PIDNamespace: ns}
})

// processRuns reports whether a process with pid exists on this host.
func processRuns(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

func (l LockInfo) String() string {
	return fmt.Sprintf("%s lock for %s by pid %d on %s since %s (%s)", l.Kind, l.Purpose, l.PID, l.Host,
		l.Created.Local().Format(time.DateTime), l.Key)
}

// Lock is a held lock; Unlock releases it.
type Lock struct {
	store *Store
	stop  chan struct{}
	done  chan struct{}
	once  sync.Once

	mu   sync.Mutex
	info LockInfo
	err  error // a refresh that failed: the lock may be lost
	// lastOK is when the lock file was last written (with the monotonic
	// clock reading), lastOKWall the same on the wall clock, which goes on
	// while the machine is suspended.
	lastOK     time.Time
	lastOKWall time.Time
	// lost is set when the lock file was found gone, or the lock lapsed:
	// the refresh stops rather than bring it back.
	lost error
	// gcMarker is the summary of the repository's gc/ listing when the
	// lock was taken; markers the gc markers then, pending the pending
	// deletions the holder read (and so never relies on).
	gcMarker string
	markers  map[string]bool
	pending  map[string]bool
}

// ErrLockLost means a lock lapsed or was removed while its holder worked:
// a gc may have run meanwhile, as if the lock had never been held.
var ErrLockLost = errors.New("repository lock lost")

// LockOptions tunes Lock.
type LockOptions struct {
	Purpose string
	// Wait is how long to keep trying while another holder conflicts.
	Wait time.Duration
	// Poll is how often to try again while waiting.
	Poll time.Duration
}

// Lock takes a lock of kind on the repository, waiting up to opts.Wait
// for conflicting holders, and refreshes it until Unlock.
func (s *Store) Lock(ctx context.Context, kind LockKind, opts LockOptions) (*Lock, error) {
	now := time.Now()
	info := newLockInfo(kind, opts.Purpose, now.UTC())
	if err := s.acquire(ctx, &info, opts); err != nil {
		return nil, err
	}
	l := &Lock{store: s, info: info, stop: make(chan struct{}), done: make(chan struct{}), lastOK: now, lastOKWall: now.Round(0)}
	if err := l.readGC(ctx); err != nil {
		_ = s.backend.Delete(context.WithoutCancel(ctx), info.Key)
		return nil, err
	}
	if kind == LockShared {
		s.writerMu.Lock()
		s.writerLock = l
		s.writerMu.Unlock()
	}
	go l.refresh()
	return l, nil
}

// readGC reads, after the lock file is written, the gc markers and the
// pending deletions: a shared lock's holder takes for absent what those
// name from now on.
func (l *Lock) readGC(ctx context.Context) error {
	st, err := l.store.readGCState(ctx)
	if err != nil {
		return err
	}
	if l.info.Kind == LockShared {
		if _, err := l.store.loadDoomed(ctx, st.pending); err != nil {
			return err
		}
	}
	markers, pending := map[string]bool{}, map[string]bool{}
	for _, k := range st.markers {
		markers[k] = true
	}
	for _, k := range st.pending {
		pending[k] = true
	}
	l.mu.Lock()
	l.gcMarker, l.markers, l.pending = st.summary, markers, pending
	l.mu.Unlock()
	return nil
}

// newLockInfo describes a new lock of kind held by this process.
func newLockInfo(kind LockKind, purpose string, now time.Time) LockInfo {
	var id [8]byte
	_, _ = rand.Read(id[:])
	me := thisProcess()
	return LockInfo{Kind: kind, Purpose: purpose, Host: me.Host, PID: me.PID, BootID: me.BootID, PIDNamespace: me.PIDNamespace,
		Created: now, Refreshed: now, Key: lockKey(kind, now, hex.EncodeToString(id[:]))}
}

// acquire writes the lock info and makes sure no live lock conflicts,
// waiting up to opts.Wait for conflicting holders.
func (s *Store) acquire(ctx context.Context, info *LockInfo, opts LockOptions) error {
	poll := opts.Poll
	if poll <= 0 {
		poll = lockPollDefault
	}
	deadline := time.Now().Add(opts.Wait)
	for {
		if err := s.writeLock(ctx, *info); err != nil {
			return fmt.Errorf("take %s lock: %w", info.Kind, err)
		}
		conflict, err := s.conflictingLock(ctx, *info)
		if err == nil && conflict == nil {
			return nil
		}
		_ = s.backend.Delete(context.WithoutCancel(ctx), info.Key)
		if err != nil {
			return fmt.Errorf("take %s lock: %w", info.Kind, err)
		}
		if time.Now().Add(poll).After(deadline) {
			return fmt.Errorf("%w by the %s; if its process is gone, the lock expires %s after its last refresh",
				ErrLocked, conflict, lockExpiry)
		}
		s.logger.Info("waiting for a lock", "holder", conflict.String())
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(poll):
		}
	}
}

func (s *Store) writeLock(ctx context.Context, info LockInfo) error {
	data, err := json.Marshal(info)
	if err != nil {
		return err
	}
	return s.backend.Put(ctx, info.Key, bytes.NewReader(data), int64(len(data)))
}

// Locks returns every lock in the repository. Unreadable lock files are
// returned as stale locks of unknown kind, so they never block forever.
func (s *Store) Locks(ctx context.Context) ([]LockInfo, error) {
	return s.locksUnder(ctx, locksPrefix)
}

func (s *Store) locksUnder(ctx context.Context, prefix string) ([]LockInfo, error) {
	var keys []string
	err := s.backend.List(ctx, prefix, func(info Info) error {
		if strings.HasSuffix(info.Key, ".json") {
			keys = append(keys, info.Key)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list locks: %w", err)
	}
	locks := make([]LockInfo, 0, len(keys))
	for _, key := range keys {
		l, err := s.readLock(ctx, key)
		if errors.Is(err, ErrNotFound) {
			continue // released meanwhile
		}
		if err != nil {
			return nil, err
		}
		locks = append(locks, l)
	}
	return locks, nil
}

func (s *Store) readLock(ctx context.Context, key string) (LockInfo, error) {
	rc, err := s.backend.Get(ctx, key)
	if err != nil {
		return LockInfo{}, err
	}
	defer rc.Close()
	data, err := io.ReadAll(io.LimitReader(rc, 64<<10))
	if err != nil {
		return LockInfo{}, fmt.Errorf("read lock %s: %w", key, err)
	}
	var l LockInfo
	if json.Unmarshal(data, &l) != nil || (l.Kind != LockShared && l.Kind != LockExclusive) {
		l = LockInfo{Kind: "unreadable", Purpose: "unknown"}
	}
	l.Key = key
	return l, nil
}

// conflictingLock returns a live lock that conflicts with mine, if any: a
// shared lock conflicts with none, an exclusive one with other exclusive
// ones, so it lists only those.
func (s *Store) conflictingLock(ctx context.Context, mine LockInfo) (*LockInfo, error) {
	if mine.Kind == LockShared {
		return nil, nil
	}
	locks, err := s.locksUnder(ctx, locksPrefix+string(LockExclusive)+"/")
	if err != nil {
		return nil, err
	}
	now := time.Now()
	for _, l := range locks {
		if l.Key == mine.Key {
			continue
		}
		if l.Kind != LockShared && l.Kind != LockExclusive {
			continue // unreadable: treated as stale
		}
		if l.Stale(now) {
			s.logger.Warn("ignoring a stale lock", "lock", l.String(), "last_refresh", l.Refreshed)
			continue
		}
		if l.Kind == LockExclusive {
			return &l, nil
		}
	}
	return nil, nil
}

func (l *Lock) refresh() {
	defer close(l.done)
	t := time.NewTicker(lockRefresh)
	defer t.Stop()
	for {
		select {
		case <-l.stop:
			return
		case <-t.C:
			l.refreshOnce()
		}
	}
}

// refreshOnce rewrites the lock file with a new refresh time, unless the
// lock lapsed or its file is gone: then a gc may have judged it stale and
// run, and writing it again would only hide that.
func (l *Lock) refreshOnce() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.lost != nil {
		return
	}
	if err := l.lapsed(time.Now()); err != nil {
		l.lost = err
		l.store.logger.Warn("the repository lock lapsed; a gc may have run meanwhile", "lock", l.info.Key, "err", err)
		return
	}
	if _, err := l.store.backend.Stat(ctx, l.info.Key); errors.Is(err, ErrNotFound) {
		l.lost = fmt.Errorf("%w: lock file %s was removed (judged stale by another process)", ErrLockLost, l.info.Key)
		l.store.logger.Warn("the repository lock was removed by another process", "lock", l.info.Key)
		return
	}
	info := l.info
	info.Refreshed = time.Now().UTC()
	if err := l.store.writeLock(ctx, info); err != nil {
		l.store.logger.Warn("could not refresh the repository lock", "lock", l.info.Key, "err", err)
		l.err = err
		return
	}
	l.info, l.err = info, nil
	l.lastOK = time.Now()
	l.lastOKWall = l.lastOK.Round(0)
}

// lapsed reports whether, by this process's clocks, the lock went longer
// without a successful refresh than others may assume it alive (its expiry
// less one refresh interval of margin): a process stopped, suspended or
// cut off from storage for that long may have been taken for dead.
// Called with l.mu held.
func (l *Lock) lapsed(now time.Time) error {
	limit := lockExpiry - lockRefresh
	if d := now.Sub(l.lastOK); d > limit {
		return fmt.Errorf("%w: not refreshed for %s (expiry %s)", ErrLockLost, d.Round(time.Second), lockExpiry)
	}
	if d := now.Round(0).Sub(l.lastOKWall); d > limit {
		return fmt.Errorf("%w: not refreshed for %s by the wall clock (expiry %s)", ErrLockLost, d.Round(time.Second), lockExpiry)
	}
	return nil
}

// GCMarker is the summary of the repository's gc/ listing when the lock
// was taken (or renewed).
func (l *Lock) GCMarker() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.gcMarker
}

// Err reports a refresh that failed: the lock may have expired and a
// conflicting holder may have proceeded.
func (l *Lock) Err() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.lost != nil {
		return l.lost
	}
	return l.err
}

// Check tells whether the lock has been held without a gap, so that
// nothing a gc deletes can have been relied on: the lock did not lapse
// (by this process's clocks), and every pending deletion written since
// it was taken waits for it, and no sweep since deleted what a pending
// deletion unknown to the holder named. One listing when no gc ran, a
// few reads when one did. An error wrapping ErrLockLost means the holder
// must take the lock again (Renew) and check again everything it relies
// on before it writes anything that references it.
func (l *Lock) Check(ctx context.Context) error {
	l.mu.Lock()
	info, summary, markers, pending, lost := l.info, l.gcMarker, l.markers, l.pending, l.lost
	if lost == nil {
		lost = l.lapsed(time.Now())
	}
	l.mu.Unlock()
	if lost != nil {
		return lost
	}
	s := l.store
	st, err := s.readGCState(ctx)
	if err != nil {
		return fmt.Errorf("check lock: %w", err)
	}
	if st.summary == summary {
		return nil
	}
	for _, key := range st.pending {
		if pending[key] {
			continue
		}
		p, err := s.readPending(ctx, key)
		if errors.Is(err, ErrNotFound) {
			continue // swept: the marker of that sweep says so below
		}
		if err != nil {
			return fmt.Errorf("check lock: %w", err)
		}
		if !p.Complete || !slices.Contains(p.Waits, info.Key) {
			return fmt.Errorf("%w: a gc marked objects for deletion without waiting for this lock (it took it for stale)", ErrLockLost)
		}
	}
	for _, key := range st.markers {
		if markers[key] {
			continue
		}
		m, err := s.readSweepMarker(ctx, key)
		if errors.Is(err, ErrNotFound) {
			continue
		}
		if err != nil {
			return fmt.Errorf("check lock: %w", err)
		}
		for _, swept := range m.Sweeps {
			if !pending[swept] {
				return fmt.Errorf("%w: a gc deleted objects while the lock was held, having taken it for stale", ErrLockLost)
			}
		}
	}
	return nil
}

// resurrect says on the lock file that its holder writes again loose
// objects a pending deletion names, then waits while a sweep is under
// way. A sweep lists the shared locks after it wrote its marker and
// leaves loose objects alone if one says so; this writes the lock and
// then reads the markers. So either the sweep sees this lock, or this
// sees the sweep and waits until it ended, having deleted the object
// before it is written again.
func (l *Lock) resurrect(ctx context.Context) error {
	l.mu.Lock()
	if l.info.Resurrects {
		l.mu.Unlock()
		return nil
	}
	info := l.info
	info.Resurrects = true
	err := l.store.writeLock(ctx, info)
	if err == nil {
		l.info = info
	}
	l.mu.Unlock()
	if err != nil {
		return fmt.Errorf("announce objects stored again: %w", err)
	}
	l.store.logger.Info("storing again objects a gc marked for deletion")
	for {
		running, err := l.store.sweepRunning(ctx)
		if err != nil || !running {
			return err
		}
		l.store.logger.Info("waiting for a gc sweep to end before storing again an object it may delete")
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Second):
		}
	}
}

// sweepRunning reports whether a gc sweep may be deleting now: a gc
// marker of the last lockExpiry names pending deletions still stored,
// and the gc that wrote it holds a live lock.
func (s *Store) sweepRunning(ctx context.Context) (bool, error) {
	st, err := s.readGCState(ctx)
	if err != nil {
		return false, err
	}
	pending := map[string]bool{}
	for _, k := range st.pending {
		pending[k] = true
	}
	recent := gcMarkerKey(time.Now().Add(-lockExpiry).UTC(), "")
	for _, key := range st.markers {
		if key < recent {
			continue
		}
		m, err := s.readSweepMarker(ctx, key)
		if errors.Is(err, ErrNotFound) {
			continue
		}
		if err != nil {
			return false, err
		}
		if m.GCLock == "" || !slices.ContainsFunc(m.Sweeps, func(k string) bool { return pending[k] }) {
			continue
		}
		lk, err := s.readLock(ctx, m.GCLock)
		if errors.Is(err, ErrNotFound) {
			continue
		}
		if err != nil {
			return false, err
		}
		if lk.Kind == LockExclusive && !lk.Stale(time.Now()) {
			return true, nil
		}
	}
	return false, nil
}

// Renew takes the lock again under a new lock file, waiting up to wait
// for conflicting holders (a gc under way), and drops the old file. The
// gc marker is read afresh: what the holder relies on must be checked
// again against the repository as it is now.
func (l *Lock) Renew(ctx context.Context, wait time.Duration) error {
	l.mu.Lock()
	old := l.info
	l.mu.Unlock()
	now := time.Now()
	info := newLockInfo(old.Kind, old.Purpose, now.UTC())
	if err := l.store.acquire(ctx, &info, LockOptions{Purpose: old.Purpose, Wait: wait}); err != nil {
		return err
	}
	l.mu.Lock()
	l.info, l.lost, l.err = info, nil, nil
	l.lastOK, l.lastOKWall = now, now.Round(0)
	l.mu.Unlock()
	_ = l.store.backend.Delete(ctx, old.Key)
	return l.readGC(ctx)
}

// Unlock stops refreshing and removes the lock.
func (l *Lock) Unlock() error {
	var err error
	l.once.Do(func() {
		close(l.stop)
		<-l.done
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		l.mu.Lock()
		key := l.info.Key
		l.mu.Unlock()
		err = l.store.backend.Delete(ctx, key)
		l.store.writerMu.Lock()
		if l.store.writerLock == l {
			l.store.writerLock = nil
		}
		l.store.writerMu.Unlock()
	})
	return err
}

// RemoveStaleLocks deletes locks whose holders stopped refreshing them and
// unreadable lock files, and returns what it removed.
func (s *Store) RemoveStaleLocks(ctx context.Context) ([]LockInfo, error) {
	locks, err := s.Locks(ctx)
	if err != nil {
		return nil, err
	}
	var removed []LockInfo
	now := time.Now()
	for _, l := range locks {
		if l.Kind == LockShared || l.Kind == LockExclusive {
			if !l.Stale(now) {
				continue
			}
		}
		if err := s.backend.Delete(ctx, l.Key); err != nil {
			return removed, fmt.Errorf("remove stale lock %s: %w", l.Key, err)
		}
		removed = append(removed, l)
	}
	return removed, nil
}
