// Command compare measures deltabackup against restic, kopia and borg on the
// same machine in one run: full backup, no-change backup, incremental after
// a 1% change, and restore, each with wall time, CPU time and peak RSS from
// /usr/bin/time -v, plus repository size and file count. It writes a
// Markdown table and a JSON file with every run.
//
//	go run ./bench/compare -small                # quick: 1/10 of each data set
//	go run ./bench/compare -install -go-peers    # apt peers + restic 0.18.1 and kopia 0.22.3
//
// Data sets are generated deterministically under -work: src (a copy of
// $(go env GOROOT)), tiny (200,000 files of 1-4 KiB in 400 dirs) and big
// (4 x 1 GiB random + 1 GiB compressible text).
package main
