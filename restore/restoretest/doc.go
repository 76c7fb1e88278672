// Package restoretest holds helpers for tests that check a restored tree
// against its source: content, type and permission bits, owners (when run
// as root), extended attributes and ACLs, hard links, holes of sparse
// files, device numbers, mtimes, symlink targets, and no extra or missing
// entries.
package restoretest
