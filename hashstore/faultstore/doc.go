// Package faultstore wraps a hashstore.Backend to inject faults for tests:
// failing calls, bodies that break off, short writes and slow calls.
package faultstore
