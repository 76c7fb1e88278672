// Package snapshot turns a directory into a Manifest: which files, empty
// directories and symlinks there are, with their sizes, modes, mtimes and
// BLAKE3 digests (snapshot/digest), and the distinct contents (Hash) they
// refer to.
//
// A Snapshotter walks the source with doublestar include and exclude globs,
// reading beneath directory handles that follow no link (snapshot/beneath),
// hashes files in parallel with a bounded pool of workers, skips files
// whose stat is unchanged since the last run (StatCache), embeds small
// files in the manifest, and can stage files into a hard-linked directory
// so that the snapshot stays stable while a database keeps writing. A file
// that changes while it is read is re-read a few times and then reported;
// it is never recorded with a hash of mixed content.
//
// An incremental snapshot (Options.Base and Options.Dirty) examines only
// the paths a watcher or the caller says changed and carries the rest over
// from the previous manifest; its Result.Delta is the incremental manifest
// of the difference, which Apply turns back into the whole one.
// LoadManifest follows such a chain from any ObjectSource, and References
// lists what a stored manifest needs, for hashstore's maintenance. The
// package never talks to storage itself.
package snapshot
