// Package upload stores a snapshot in a repository: it asks the store which
// contents are missing, uploads only those, in parallel, streaming each from
// its file and re-hashing it on the way (a file that changed since it was
// hashed is reported and left out, never stored under a wrong key), then
// writes the manifest object and, last, the backup record. Backup runs a
// whole backup: snapshot, upload, stat cache. Given the previous backup
// (Options.Base) and an incremental snapshot of it, only the changed
// contents are looked up and the manifest stored holds only what changed.
package upload
