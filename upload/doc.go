// Package upload runs backups into a repository. Backup snapshots a
// directory and stores, as the snapshot finds them, the contents and
// trees the repository lacks (a snapshot.Sink): small contents and trees
// go into packs, larger contents are read again from the file the
// snapshot hashed and re-verified on the way, so a file that changed is
// read again or left out and listed, never stored under a wrong id. The
// backup record is written last, only once everything it references is
// stored, and only if its name is free.
//
// With a cache directory, the directory cache (snapshot.DirCache) makes a
// backup read only what changed since the last one; with a base backup and
// a list of dirty paths, only those paths are examined (incremental
// backups). A Watcher runs such backups continuously from a ChangeSource
// (the snapshot/watch package) and reports each run through a callback.
// Trees reads a repository's trees, and Referrer tells hashstore's
// maintenance what each backup references.
package upload
