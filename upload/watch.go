package upload

import (
	"context"
	"log/slog"
	"time"

	"github.com/deltabackup/deltabackup/hashstore"
	"github.com/deltabackup/deltabackup/snapshot"
)

// ChangeSource says which paths of a source changed since it was last
// asked: a file-system watcher (snapshot/watch.Watcher), or a program that
// knows what it wrote.
type ChangeSource interface {
	// Take returns the paths changed since the last Take, relative to the
	// source, or a reason why the next backup must scan everything.
	Take() (dirty []string, fullScan string)
	// Requeue hands paths (and a reason for a full scan, when not "") to
	// the next Take: a backup that failed, or files it could not read.
	Requeue(dirty []string, fullScan string)
}

// WatchEvent is something a Watcher did.
type WatchEvent struct {
	// Kind is "scheduled" (Next is set), "backup" (one starts: FullScan,
	// Reason, DirtyPaths), "done" (one ended: Summary or Err) or
	// "stopped" (Abandoned when a backup was under way).
	Kind       string
	Time       time.Time
	Next       time.Time
	FullScan   bool
	Reason     string
	DirtyPaths int
	Summary    *Summary
	Err        error
	Duration   time.Duration
	Abandoned  bool
}

// WatchOptions configure a Watcher.
type WatchOptions struct {
	// Src is the directory backed up.
	Src string
	// Snapshot says what to back up (globs, parallelism); Progress may be
	// set per backup by Prepare.
	Snapshot snapshot.Options
	// Upload says how (Name is derived per backup; Base and Dirty are set
	// per backup).
	Upload Options
	// Changes says what changed between backups.
	Changes ChangeSource
	// Prepare, when set, is called before each backup with the options it
	// will run with, to add what belongs to one run (progress counters);
	// the function it returns, if any, is called when the backup ends.
	Prepare func(snap *snapshot.Options, up *Options) (done func())
	// OnEvent, when set, is told what the Watcher does.
	OnEvent func(WatchEvent)
}

// Watcher runs continuous backups of one source into a repository: each
// backup examines only what its ChangeSource says changed and takes the
// rest from the previous backup of the process by id, so only the trees
// of the changed directories and those above them are written. It falls
// back to a full scan (with the directory cache) whenever the source
// cannot vouch for its list.
type Watcher struct {
	store *hashstore.Store
	opts  WatchOptions
	base  *Base
}

// NewWatcher returns a Watcher; nothing runs until Run or Backup.
func NewWatcher(store *hashstore.Store, opts WatchOptions) *Watcher {
	if opts.Upload.Logger == nil {
		opts.Upload.Logger = opts.Snapshot.Logger
	}
	if opts.Upload.Logger == nil {
		opts.Upload.Logger = slog.New(slog.DiscardHandler)
	}
	return &Watcher{store: store, opts: opts}
}

func (w *Watcher) event(e WatchEvent) {
	if w.opts.OnEvent != nil {
		e.Time = time.Now().UTC()
		w.opts.OnEvent(e)
	}
}

// Run backs up at the times next gives (called with the current time for
// the next one) until ctx ends; it then returns nil, abandoning a backup
// under way (which leaves no record). Failed backups are reported as
// events and hand their paths to the next one.
func (w *Watcher) Run(ctx context.Context, next func(now time.Time) time.Time) error {
	for {
		at := next(time.Now())
		w.event(WatchEvent{Kind: "scheduled", Next: at})
		select {
		case <-ctx.Done():
			w.event(WatchEvent{Kind: "stopped"})
			return nil
		case <-time.After(time.Until(at)):
		}
		if _, err := w.Backup(ctx); err != nil && ctx.Err() != nil {
			w.event(WatchEvent{Kind: "stopped", Abandoned: true})
			return nil
		}
	}
}

// Backup runs one backup now and returns its summary.
func (w *Watcher) Backup(ctx context.Context) (*Summary, error) {
	logger := w.opts.Upload.Logger
	dirty, full := w.opts.Changes.Take()
	snap, up := w.opts.Snapshot, w.opts.Upload
	up.Name = ""
	if full == "" && w.base != nil {
		up.Base, up.Dirty = w.base, dirty
		logger.Info("backup of the changed paths", "paths", len(dirty))
	} else {
		if full == "" {
			full = "no earlier backup in this process"
		}
		logger.Info("backup with a full scan", "reason", full)
	}
	w.event(WatchEvent{Kind: "backup", FullScan: up.Base == nil, Reason: full, DirtyPaths: len(dirty)})
	var done func()
	if w.opts.Prepare != nil {
		done = w.opts.Prepare(&snap, &up)
	}
	start := time.Now()
	sum, err := Backup(ctx, w.store, w.opts.Src, snap, up)
	if done != nil {
		done()
	}
	w.event(WatchEvent{Kind: "done", Summary: sum, Err: err, Duration: time.Since(start)})
	if err != nil {
		if ctx.Err() == nil {
			logger.Error("backup failed; its paths go to the next one", "err", err)
		}
		w.opts.Changes.Requeue(dirty, full)
		if up.Base == nil {
			w.opts.Changes.Requeue(nil, "the last full scan failed")
		}
		return nil, err
	}
	w.base = sum.Base()
	// What could not be read this time is looked at again next time.
	var again []string
	for _, p := range append(append(sum.Snapshot.Unreadable, sum.Snapshot.Changed...), sum.Snapshot.Skipped...) {
		again = append(again, p.Path)
	}
	w.opts.Changes.Requeue(again, "")
	return sum, nil
}
