// Package hashstore stores objects under their BLAKE3 hexdigest.
//
// A Backend keeps bytes under keys (a local directory, memory, and later S3
// and peers); it is small on purpose so that retries, limits, metrics and
// fault injection are wrappers written once. A Store sits on a Backend and
// owns the repository format: the config written by Init, objects encoded
// with a short header and zstd (or raw when compression does not pay),
// verification of every object read against its key, batch existence
// checks, and backup records. The package knows nothing about files or
// trees; the manifest is just another object to it.
package hashstore
