// Package restore writes a snapshot back to disk from one or more sources.
//
// A Plan says, for every content the manifest needs, which source it comes
// from: each source is asked which contents it holds, and contents are
// assigned largest first to the least-loaded source holding them, so bytes
// per source are balanced. Restore then downloads each content once, every
// source in parallel (see schedule.go for how work moves away from slow,
// failing and dead sources), verifies its BLAKE3 before it is written,
// writes it to a temporary name in the target and renames it into place,
// and puts mode and mtime back. A restore run again skips files that are
// already right. Every path is validated before anything is written, and
// every write goes through a snapshot/beneath directory handle that follows
// no symbolic link, so no manifest entry, and no link another user swaps
// in while the restore runs, can make it write outside the target.
package restore
