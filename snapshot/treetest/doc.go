// Package treetest holds MemSink, an in-memory snapshot.Sink and
// snapshot.TreeReader for tests that take snapshots without a repository.
package treetest
