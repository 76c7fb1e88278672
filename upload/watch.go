package upload

import (
	"context"
	"log/slog"
	"runtime"
	"time"

	"github.com/deltabackup/deltabackup/hashstore"
	"github.com/deltabackup/deltabackup/snapshot"
	"github.com/deltabackup/deltabackup/snapshot/digest"
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
	// Reason, DirtyPaths), "done" (one ended: Summary or Err), "checkpoint"
	// (a whole manifest stored while idle: Checkpoint, CheckpointBytes) or
	// "stopped" (Abandoned when a backup was under way).
	Kind            string
	Time            time.Time
	Next            time.Time
	FullScan        bool
	Reason          string
	DirtyPaths      int
	Summary         *Summary
	Err             error
	Duration        time.Duration
	Checkpoint      digest.Digest
	CheckpointBytes int64
	Abandoned       bool
}

// WatchOptions configure a Watcher.
type WatchOptions struct {
	// Snapshot says what to back up (source, globs, stat cache); Base and
	// Dirty are set per backup.
	Snapshot snapshot.Options
	// Upload says how (name is derived per backup, Base set per backup).
	Upload Options
	// Changes says what changed between backups.
	Changes ChangeSource
	// Prepare, when set, is called before each backup with the options it
	// will run with, to add what belongs to one run (progress counters);
	// the function it returns, if any, is called when the backup ends.
	Prepare func(snap *snapshot.Options, up *Options) (done func())
	// OnEvent, when set, is told what the Watcher does.
	OnEvent func(WatchEvent)
	// CacheSaveInterval is how often the stat cache is written at least
	// (default an hour): saving costs time in proportion to the whole
	// tree, so backups of changed paths keep it in memory, and a crash
	// costs the next start re-reading what changed since the last save.
	CacheSaveInterval time.Duration
	// CheckpointDepth is the chain depth of incremental manifests at which
	// the whole manifest is stored while idle (default 8), so chains stay
	// short for readers and no scheduled backup stores it itself.
	CheckpointDepth int
}

// Watcher runs continuous backups of one source into a repository: each
// backup examines only what its ChangeSource says changed and carries the
// rest over from the previous backup of the process, falling back to a
// full scan whenever the source cannot vouch for its list.
type Watcher struct {
	store *hashstore.Store
	opts  WatchOptions

	base          *Base
	lastCacheSave time.Time
	cacheUnsaved  bool
}

// NewWatcher returns a Watcher; nothing runs until Run or Backup.
func NewWatcher(store *hashstore.Store, opts WatchOptions) *Watcher {
	if opts.CacheSaveInterval <= 0 {
		opts.CacheSaveInterval = time.Hour
	}
	if opts.CheckpointDepth <= 0 {
		opts.CheckpointDepth = 8
	}
	if opts.Upload.Logger == nil {
		opts.Upload.Logger = opts.Snapshot.Logger
	}
	if opts.Upload.Logger == nil {
		opts.Upload.Logger = slog.New(slog.DiscardHandler)
	}
	return &Watcher{store: store, opts: opts, lastCacheSave: time.Now()}
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
	defer w.saveCache()
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
		up.Base, snap.Dirty = w.base, dirty
		logger.Info("backup of the changed paths", "paths", len(dirty))
	} else {
		if full == "" {
			full = "no earlier backup in this process"
		}
		logger.Info("backup with a full scan", "reason", full)
	}
	w.event(WatchEvent{Kind: "backup", FullScan: up.Base == nil, Reason: full, DirtyPaths: len(dirty)})
	keepCache := up.Base != nil && snap.Cache != nil && time.Since(w.lastCacheSave) < w.opts.CacheSaveInterval
	up.KeepStatCacheInMemory = keepCache
	var done func()
	if w.opts.Prepare != nil {
		done = w.opts.Prepare(&snap, &up)
	}
	start := time.Now()
	sum, err := Backup(ctx, w.store, snap, up)
	if done != nil {
		done()
	}
	if snap.Cache != nil && err == nil {
		if keepCache {
			w.cacheUnsaved = true
		} else {
			w.lastCacheSave, w.cacheUnsaved = time.Now(), false
		}
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
	if w.base.Manifest.ChainDepth >= w.opts.CheckpointDepth {
		w.checkpoint(ctx)
	}
	// Collect garbage now, while idle, rather than during the next
	// backup: at a million files the heap is over a GB and marking it
	// would slow that backup down.
	runtime.GC()
	var again []string
	for _, p := range append(append(sum.Snapshot.Unreadable, sum.Changed()...), sum.Snapshot.Special...) {
		again = append(again, p.Path)
	}
	w.opts.Changes.Requeue(again, "")
	return sum, nil
}

// checkpoint stores the base's whole manifest for the next backups to
// build on; when it cannot, they build on the last backup's manifest.
func (w *Watcher) checkpoint(ctx context.Context) {
	start := time.Now()
	id, size, err := StoreManifest(ctx, w.store, w.base.Manifest, Options{LockWait: w.opts.Upload.LockWait})
	if err != nil {
		w.opts.Upload.Logger.Warn("checkpoint manifest not stored; the next backup builds on the last one", "err", err)
		return
	}
	w.base.ManifestID = id
	w.opts.Upload.Logger.Info("stored a checkpoint manifest", "manifest", id, "bytes", size, "seconds", time.Since(start).Seconds())
	w.event(WatchEvent{Kind: "checkpoint", Checkpoint: id, CheckpointBytes: size, Duration: time.Since(start)})
}

// SaveCache writes the stat cache if backups kept it in memory only; Run
// does on its way out.
func (w *Watcher) SaveCache() { w.saveCache() }

// saveCache writes the stat cache if backups kept it in memory only.
func (w *Watcher) saveCache() {
	if !w.cacheUnsaved {
		return
	}
	if err := w.opts.Snapshot.Cache.Save(); err != nil {
		w.opts.Upload.Logger.Warn("stat cache not saved; the next start reads every file again", "err", err)
	}
	w.cacheUnsaved = false
}
