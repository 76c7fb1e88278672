// Package restoretest holds helpers for tests that check a restored tree
// against its source: content, permission bits, mtimes of files and
// directories, symlink targets, and no extra or missing entries.
package restoretest
