// Command peers measures restores from peers on loopback: one, two and
// three `deltabackup serve` peers, the repository with three peers, two
// peers with a third slowed to a tenth of their speed, and three peers of
// which one is killed halfway through. Each restore is checked
// with diff -r; MB/s in total and per source go to bench/peers-results.md
// and .json.
//
//	go run ./bench/peers [-data DIR] [-runs 3]
package main
