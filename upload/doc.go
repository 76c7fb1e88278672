// Package upload stores a snapshot in a repository: it asks the store which
// contents are missing, uploads only those, in parallel, streaming each from
// its file and re-hashing it on the way (a file that changed since it was
// hashed is reported and left out, never stored under a wrong key), then
// writes the manifest object and, last, the backup record.
//
// Backup runs a whole backup: snapshot, upload, stat cache; a repository
// inside the source is left out. Given the previous backup (Options.Base,
// from Summary.Base) and an incremental snapshot of it, only the changed
// contents are looked up and the manifest stored holds only what changed.
// A Watcher runs such backups continuously from a ChangeSource (the
// snapshot/watch package), chaining bases, storing whole checkpoints, and
// reporting each run through a callback. Referrer tells hashstore's
// maintenance what each backup references.
package upload
