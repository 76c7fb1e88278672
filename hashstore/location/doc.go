// Package location turns a repository location — a path, file:///path,
// s3://bucket/prefix, gs://bucket/prefix, azure://container/prefix or
// sftp://user@host[:port]/path — into a Backend wrapped as that kind of storage
// needs (retries with backoff for remote storage), and opens the Store of
// a repository there with a local cache when the storage is remote. It is
// what a program embedding deltabackup calls instead of wiring backends
// itself; the CLI's --repo and --from go through it.
package location
