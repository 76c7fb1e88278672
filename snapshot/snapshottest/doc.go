// Package snapshottest helps tests that change directory trees while
// they are watched or snapshotted.
package snapshottest
