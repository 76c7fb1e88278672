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
	"strings"
	"sync"
	"syscall"
	"time"
)

// Locks keep gc from deleting what a running backup is about to reference.
// A backup holds a shared lock, gc an exclusive one; each is a small file
// under locks/ that its holder refreshes while it works. Taking a lock is:
// write it, then look at the others; a conflict removes the new lock again.
// Two processes that race both see each other and at least one backs off,
// so a backup and a gc never both proceed.
//
// A lock not refreshed within lockExpiry is stale (its holder crashed or
// lost the storage); stale locks are ignored, named in the log, and
// removed by gc.
const (
	locksPrefix     = "locks/"
	lockPollDefault = 5 * time.Second
)

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
	Kind      LockKind  `json:"kind"`
	Purpose   string    `json:"purpose"`
	Host      string    `json:"host"`
	PID       int       `json:"pid"`
	Created   time.Time `json:"created"`
	Refreshed time.Time `json:"refreshed"`
	Key       string    `json:"-"`
}

// Stale reports whether the lock's holder stopped refreshing it, or is a
// process of this host that no longer runs (a crashed backup need not
// block gc for lockExpiry).
func (l LockInfo) Stale(now time.Time) bool {
	if now.Sub(l.Refreshed) > lockExpiry {
		return true
	}
	host, _ := os.Hostname()
	return l.Host == host && l.PID > 0 && l.PID != os.Getpid() && !processRuns(l.PID)
}

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
	info  LockInfo
	stop  chan struct{}
	done  chan struct{}
	once  sync.Once
	mu    sync.Mutex
	err   error // a refresh that failed: the lock may be lost
}

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
	host, _ := os.Hostname()
	var id [8]byte
	_, _ = rand.Read(id[:])
	now := time.Now().UTC()
	info := LockInfo{Kind: kind, Purpose: opts.Purpose, Host: host, PID: os.Getpid(), Created: now, Refreshed: now,
		Key: locksPrefix + now.Format("20060102T150405Z") + "-" + hex.EncodeToString(id[:]) + ".json"}
	poll := opts.Poll
	if poll <= 0 {
		poll = lockPollDefault
	}
	deadline := time.Now().Add(opts.Wait)
	for {
		if err := s.writeLock(ctx, info); err != nil {
			return nil, fmt.Errorf("take %s lock: %w", kind, err)
		}
		conflict, err := s.conflictingLock(ctx, info)
		if err == nil && conflict == nil {
			l := &Lock{store: s, info: info, stop: make(chan struct{}), done: make(chan struct{})}
			go l.refresh()
			return l, nil
		}
		_ = s.backend.Delete(context.WithoutCancel(ctx), info.Key)
		if err != nil {
			return nil, fmt.Errorf("take %s lock: %w", kind, err)
		}
		if time.Now().Add(poll).After(deadline) {
			return nil, fmt.Errorf("%w by the %s; wait for it to finish (or use a longer --lock-wait); if its process is gone, the lock expires %s after its last refresh",
				ErrLocked, conflict, lockExpiry)
		}
		s.logger.Info("waiting for a lock", "holder", conflict.String())
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
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
	var keys []string
	err := s.backend.List(ctx, locksPrefix, func(info Info) error {
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

// conflictingLock returns a live lock that conflicts with mine, if any.
func (s *Store) conflictingLock(ctx context.Context, mine LockInfo) (*LockInfo, error) {
	locks, err := s.Locks(ctx)
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
		if mine.Kind == LockExclusive || l.Kind == LockExclusive {
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
			l.info.Refreshed = time.Now().UTC()
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			err := l.store.writeLock(ctx, l.info)
			cancel()
			if err != nil {
				l.store.logger.Warn("could not refresh the repository lock", "lock", l.info.Key, "err", err)
				l.mu.Lock()
				l.err = err
				l.mu.Unlock()
			}
		}
	}
}

// Err reports a refresh that failed: the lock may have expired and a
// conflicting holder may have proceeded.
func (l *Lock) Err() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.err
}

// Unlock stops refreshing and removes the lock.
func (l *Lock) Unlock() error {
	var err error
	l.once.Do(func() {
		close(l.stop)
		<-l.done
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		err = l.store.backend.Delete(ctx, l.info.Key)
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
