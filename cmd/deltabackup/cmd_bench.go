package main

import (
	"fmt"
	"runtime"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"github.com/deltabackup/deltabackup/snapshot"
)

func newBenchCommand(g *globals) *cobra.Command {
	var workers string
	var noBaseline bool
	cmd := &cobra.Command{
		Use:   "bench [--workers 1,2,...] DIR",
		Short: "Measure BLAKE3 hashing of a tree against the rate it can merely be read",
		Long: `bench reads every file under DIR with 1..N workers, once hashing with BLAKE3
exactly as a backup does and once only reading, and prints GB/s and files/s
of each, and the BLAKE3 kernel used (AVX-512 or AVX2, by what the CPU
has; GODEBUG=cpu.avx512f=off forces the AVX2 one). The read-only rate (from the page cache when the tree was read
recently) is the limit hashing can reach on this machine. Run it twice to
measure with a warm page cache.`,
		Args: exactArgs(1, "a directory"),
		RunE: func(cmd *cobra.Command, args []string) error {
			counts, err := parseWorkers(workers)
			if err != nil {
				return usageError{err}
			}
			// One unmeasured pass, so every measurement sees the same (warm)
			// page cache. Skipped with --no-read-baseline, for callers that
			// warm the cache themselves and time the whole command.
			if !noBaseline {
				if _, err := snapshot.Measure(cmd.Context(), args[0], counts[len(counts)-1], false); err != nil {
					return err
				}
			}
			var results []snapshot.Measurement
			if !g.json {
				g.printf("BLAKE3 kernel for large files: %s\n", snapshot.HashKernel())
			}
			for _, n := range counts {
				modes := []bool{true}
				if !noBaseline {
					modes = []bool{false, true}
				}
				for _, hash := range modes {
					m, err := snapshot.Measure(cmd.Context(), args[0], n, hash)
					if err != nil {
						return err
					}
					results = append(results, m)
					if !g.json {
						what := "read only"
						if hash {
							what = "BLAKE3"
						}
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
