// Package storetest is the conformance suite every hashstore.Backend runs:
// round trips from 0 B to 64 MiB, overwrite, Stat, List with prefixes and
// more than 1000 keys, Delete, not-found errors, ranged gets, concurrent
// puts of one key, atomicity when the writer fails, and cancellation.
//
// A backend's test is one call:
//
//	storetest.Run(t, func(t *testing.T) hashstore.Backend { return newBackend(t) })
package storetest
