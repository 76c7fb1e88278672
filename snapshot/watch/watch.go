package watch

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/bmatcuk/doublestar/v4"
	"github.com/fsnotify/fsnotify"
)

// syncName is the file Sync creates and removes to find out that every
// earlier event has been handled; its events are not changes.
const syncName = ".deltabackup-watch-sync"

// Options tunes a Watcher.
type Options struct {
	// Excludes are doublestar globs over paths relative to the root, as in
	// snapshot.Options: matching directories are not watched.
	Excludes []string
	Logger   *slog.Logger
}

// Watcher records the paths below a root that changed.
type Watcher struct {
	root     string
	opts     Options
	fs       *fsnotify.Watcher
	logger   *slog.Logger
	done     chan struct{}
	stopOnce sync.Once

	mu      sync.Mutex
	dirty   map[string]bool
	full    string          // why the next Take must scan everything ("" if not)
	limited string          // a watch could not be added: every Take is full
	watched map[string]bool // directories (relative, "" for the root) with a watch
	syncs   map[string]chan struct{}
	events  int64

	// Watches are added and removed by one goroutine, in event order, so
	// the event loop never waits on fsnotify while fsnotify waits for the
	// loop to take an event.
	ops chan func()
}

// New watches root and every directory below it (except excluded ones).
// The first Take asks for a full scan: nothing was watched before.
func New(root string, opts Options) (*Watcher, error) {
	abs, err := filepath.Abs(root)
	if err != nil {
		return nil, err
	}
	fw, err := fsnotify.NewBufferedWatcher(4096)
	if err != nil {
		return nil, fmt.Errorf("watch %s: %w", abs, err)
	}
	w := &Watcher{root: abs, opts: opts, fs: fw, logger: opts.Logger, done: make(chan struct{}),
		dirty: map[string]bool{}, full: "the watcher started: changes before it are unknown",
		watched: map[string]bool{}, syncs: map[string]chan struct{}{}, ops: make(chan func(), 1<<16)}
	if w.logger == nil {
		w.logger = slog.New(slog.DiscardHandler)
	}
	if err := w.addTree(""); err != nil {
		fw.Close()
		return nil, err
	}
	go w.loop()
	go func() {
		for op := range w.ops {
			op()
		}
	}()
	return w, nil
}

// Close stops watching.
func (w *Watcher) Close() error {
	var err error
	w.stopOnce.Do(func() {
		err = w.fs.Close()
		<-w.done
		close(w.ops)
	})
	return err
}

// Take returns the paths changed since the last Take, and, when the
// watcher cannot vouch for that list, why the whole tree must be scanned
// instead (full is then non-empty). It starts a new list.
func (w *Watcher) Take() (dirty []string, full string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for p := range w.dirty {
		dirty = append(dirty, p)
	}
	sort.Strings(dirty)
	full = w.full
	if full == "" {
		full = w.limited
	}
	w.dirty, w.full = map[string]bool{}, ""
	return dirty, full
}

// Requeue puts paths back on the list, for a backup that failed or could
// not read them, so the next one looks at them again.
func (w *Watcher) Requeue(paths []string, full string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, p := range paths {
		w.dirty[p] = true
	}
	if full != "" && w.full == "" {
		w.full = full
	}
}

// Events returns how many events were handled, for statistics.
func (w *Watcher) Events() int64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.events
}

// Watched returns how many directories have a watch.
func (w *Watcher) Watched() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.watched)
}

// Sync returns once every event that happened before it was called has
// been handled, by creating and removing a marker file in the root.
func (w *Watcher) Sync(ctx context.Context) error {
	name := fmt.Sprintf("%s-%d", syncName, time.Now().UnixNano())
	ch := make(chan struct{})
	w.mu.Lock()
	w.syncs[name] = ch
	w.mu.Unlock()
	p := filepath.Join(w.root, name)
	if err := os.WriteFile(p, nil, 0o600); err != nil {
		return err
	}
	if err := os.Remove(p); err != nil {
		return err
	}
	select {
	case <-ch:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-w.done:
		return errors.New("watcher closed")
	}
}

func (w *Watcher) rel(p string) (string, bool) {
	r, err := filepath.Rel(w.root, p)
	if err != nil || r == ".." || strings.HasPrefix(r, "../") {
		return "", false
	}
	if r == "." {
		return "", true
	}
	return filepath.ToSlash(r), true
}

func (w *Watcher) excluded(rel string) bool {
	for _, g := range w.opts.Excludes {
		if ok, _ := doublestar.Match(g, rel); ok {
			return true
		}
	}
	return false
}

// addTree watches dir (relative) and the directories below it.
func (w *Watcher) addTree(rel string) error {
	return filepath.WalkDir(filepath.Join(w.root, filepath.FromSlash(rel)), func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil // gone meanwhile: its removal is an event of its own
			}
			w.needFull(fmt.Sprintf("cannot list %s: %v", p, err))
			return nil
		}
		if !d.IsDir() {
			return nil
		}
		r, _ := w.rel(p)
		if r != "" && w.excluded(r) {
			return filepath.SkipDir
		}
		if err := w.fs.Add(p); err != nil {
			if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR) {
				return filepath.SkipDir
			}
			if errors.Is(err, syscall.ENOSPC) {
				w.mu.Lock()
				if w.limited == "" {
					w.limited = "the inotify watch limit is reached (raise fs.inotify.max_user_watches): every backup scans the whole tree"
					w.logger.Warn("watch limit reached; falling back to full scans", "dir", r, "limit", "fs.inotify.max_user_watches")
				}
				w.mu.Unlock()
				return filepath.SkipAll
			}
			w.needFull(fmt.Sprintf("cannot watch %s: %v", p, err))
			return filepath.SkipDir
		}
		w.mu.Lock()
		w.watched[r] = true
		w.mu.Unlock()
		return nil
	})
}

// unwatchTree forgets the watches at and below rel: after a rename the
// kernel keeps watching the moved directory under its old name.
func (w *Watcher) unwatchTree(rel string) {
	w.mu.Lock()
	var gone []string
	for d := range w.watched {
		if d == rel || strings.HasPrefix(d, rel+"/") {
			gone = append(gone, d)
			delete(w.watched, d)
		}
	}
	w.mu.Unlock()
	for _, d := range gone {
		_ = w.fs.Remove(filepath.Join(w.root, filepath.FromSlash(d)))
	}
}

func (w *Watcher) needFull(why string) {
	w.mu.Lock()
	if w.full == "" {
		w.full = why
	}
	// Events may be lost: a Sync waiting for one returns, and Take says
	// the list cannot be trusted.
	for name, ch := range w.syncs {
		close(ch)
		delete(w.syncs, name)
	}
	w.mu.Unlock()
	w.logger.Warn("watcher lost track; the next backup scans the whole tree", "reason", why)
}

func (w *Watcher) loop() {
	defer close(w.done)
	for {
		select {
		case ev, ok := <-w.fs.Events:
			if !ok {
				return
			}
			w.handle(ev)
		case err, ok := <-w.fs.Errors:
			if !ok {
				return
			}
			w.fail(err)
		}
	}
}

// later queues a change of watches; if the queue is full, the list can no
// longer be trusted.
func (w *Watcher) later(op func()) {
	select {
	case w.ops <- op:
	default:
		w.needFull("too many new directories at once to watch them in time")
	}
}

func (w *Watcher) fail(err error) {
	if errors.Is(err, fsnotify.ErrEventOverflow) {
		w.needFull("the kernel's event queue overflowed (raise fs.inotify.max_queued_events)")
		return
	}
	w.needFull("watch error: " + err.Error())
}

func (w *Watcher) handle(ev fsnotify.Event) {
	rel, ok := w.rel(ev.Name)
	if !ok {
		return
	}
	if strings.HasPrefix(rel, syncName) {
		if ev.Has(fsnotify.Remove) {
			w.mu.Lock()
			if ch := w.syncs[rel]; ch != nil {
				close(ch)
				delete(w.syncs, rel)
			}
			w.mu.Unlock()
		}
		return
	}
	w.mu.Lock()
	w.events++
	if rel == "" {
		// The root itself was removed or moved: nothing below can be
		// trusted.
		w.mu.Unlock()
		if ev.Has(fsnotify.Remove) || ev.Has(fsnotify.Rename) {
			w.needFull("the watched root was removed or moved")
		}
		return
	}
	w.dirty[rel] = true
	wasDir := w.watched[rel]
	w.mu.Unlock()
	if ev.Has(fsnotify.Remove) || ev.Has(fsnotify.Rename) {
		if wasDir {
			w.later(func() { w.unwatchTree(rel) })
		}
		return
	}
	if ev.Has(fsnotify.Create) {
		if fi, err := os.Lstat(ev.Name); err == nil && fi.IsDir() && !w.excluded(rel) {
			// Files made in it before its watch existed are found by
			// walking it: the directory itself is dirty.
			w.later(func() {
				if err := w.addTree(rel); err != nil {
					w.needFull(err.Error())
				}
			})
		}
	}
}
