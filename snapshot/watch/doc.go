// Package watch tracks which paths of a directory tree changed, with
// fsnotify (inotify on Linux), so that a long-running process can take
// incremental snapshots (snapshot.Options.Base and Dirty) instead of
// scanning the whole tree each time.
//
// Correctness comes first: whenever the watcher cannot vouch for its list
// — it just started, the kernel's event queue overflowed, a watch could
// not be added (fs.inotify.max_user_watches), or fsnotify reported an
// error — Take says so, and the caller scans the whole tree.
package watch
