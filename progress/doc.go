// Package progress counts the work of a long operation (files handled,
// failed, total; bytes handled and total) and reports it sparsely, as
// JSON lines, or as a terminal bar.
//
// The counters follow rohmu's delta-backup Progress: handled, failed, total
// and final, with start, add_total, add_success, add_fail, the upload and
// download helpers, done, merge, finished_successfully and finished_failed.
// Byte counters are added because a backup user cares about bytes/s as much
// as files/s. Reporting is sparse (every 1.1^N items, or every percent once
// the total is known) so that a million-file run does not log a million
// lines. This package imports no other package of the project.
package progress
