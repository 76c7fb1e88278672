// Package hashstore stores objects under their BLAKE3 digest.
//
// A Backend keeps bytes under keys (a local directory, memory, S3); it is
// small on purpose so that retries, limits, metrics and fault injection
// are wrappers written once. A Store sits on a Backend and owns the
// repository format: the config written by Init, objects encoded with a
// short header and zstd (or raw when compression does not pay), packs of
// small objects and their index, verification of every object read
// against its id, batch existence checks, backup records created only if
// absent, and locks. Every key is built and parsed in layout.go.
//
// The package knows nothing of files or trees: a backup record names a
// root object and nothing more. Maintenance that must know what a backup
// references — GC, Verify, Copy, Stats — asks a Referrer the caller
// passes (the snapshot and upload packages provide one), as restic's
// prune receives the blobs in use. The only other package of the project
// it imports is the digest leaf.
package hashstore
