package main

import (
	"crypto/rand"
	"fmt"
	"runtime"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"github.com/deltabackup/deltabackup/hashstore"
	"github.com/deltabackup/deltabackup/snapshot"
	"github.com/deltabackup/deltabackup/upload"
)

func newBenchCommand(g *globals) *cobra.Command {
	var workers string
	var noBaseline bool
	var only string
	cmd := &cobra.Command{
		Use:   "bench [--workers 1,2,...] DIR",
		Short: "Measure BLAKE3 hashing of a tree against the rate it can merely be read",
		Long: `bench reads every file under DIR with 1..N workers: once only reading, once
hashing every file whole with BLAKE3 (a repository made with --no-chunking),
and once cutting files of 1 MiB and more into chunks and hashing each chunk
(the default repository), and prints GB/s and files/s of each, and the BLAKE3 kernel used (AVX-512 or AVX2, by what the CPU
has; GODEBUG=cpu.avx512f=off forces the AVX2 one). The read-only rate (from the page cache when the tree was read
recently) is the limit hashing can reach on this machine. Run it twice to
measure with a warm page cache.`,
		Args: exactArgs(1, "a directory"),
		RunE: func(cmd *cobra.Command, args []string) error {
			counts, err := parseWorkers(workers)
			if err != nil {
				return usageError{err}
			}
			if only != "" && only != "blake3" && only != "chunks" {
				return usagef("--only %q: give blake3 or chunks", only)
			}
			// One unmeasured pass, so every measurement sees the same (warm)
			// page cache. Skipped with --no-read-baseline, for callers that
			// warm the cache themselves and time the whole command.
			if !noBaseline {
				if _, err := snapshot.Measure(cmd.Context(), args[0], counts[len(counts)-1], false, snapshot.Chunking{}); err != nil {
					return err
				}
			}
			var results []snapshot.Measurement
			if !g.json {
				g.printf("BLAKE3 kernel for large files: %s\n", snapshot.HashKernel())
			}
			// A new repository's chunking, with a random key.
			key := make([]byte, 32)
			_, _ = rand.Read(key)
			chunking := upload.SnapshotChunking(hashstore.DefaultChunking(), key)
			type mode struct {
				hash     bool
				chunking snapshot.Chunking
				what     string
			}
			var modes []mode
			if only != "chunks" {
				modes = append(modes, mode{true, snapshot.Chunking{}, "BLAKE3"})
			}
			if only != "blake3" {
				modes = append(modes, mode{true, chunking, "chunks"})
			}
			if !noBaseline {
				modes = append([]mode{{false, snapshot.Chunking{}, "read only"}}, modes...)
			}
			for _, n := range counts {
				for _, md := range modes {
					m, err := snapshot.Measure(cmd.Context(), args[0], n, md.hash, md.chunking)
					if err != nil {
						return err
					}
					results = append(results, m)
					if !g.json {
						what := md.what
						g.printf("%2d workers  %-9s  %7.2f GB/s  %9.0f files/s  (%d files, %.1f GiB in %.2fs)\n", n, what,
							m.BytesPerSecond()/1e9, m.FilesPerSecond(), m.Files, float64(m.Bytes)/(1<<30), m.Duration.Seconds())
					}
				}
			}
			if g.json {
				return g.printJSON(map[string]any{"message_type": "summary", "kernel": snapshot.HashKernel(), "results": results})
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&workers, "workers", defaultWorkers(), "comma-separated worker counts to measure")
	cmd.Flags().BoolVar(&noBaseline, "no-read-baseline", false, "only measure hashing, not the read-only rate")
	cmd.Flags().StringVar(&only, "only", "", "measure only whole-file hashing (blake3) or only chunking with chunk hashing (chunks)")
	return cmd
}

func defaultWorkers() string {
	var ns []string
	for n := 1; n <= runtime.NumCPU(); n *= 2 {
		ns = append(ns, strconv.Itoa(n))
	}
	if last := strconv.Itoa(runtime.NumCPU()); ns[len(ns)-1] != last {
		ns = append(ns, last)
	}
	return strings.Join(ns, ",")
}

func parseWorkers(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 || n > 1024 {
			return nil, fmt.Errorf("--workers: %q is not a worker count", f)
		}
		out = append(out, n)
	}
	return out, nil
}
