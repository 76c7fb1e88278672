// Package benchutil holds what the benchmark programs under bench/ share:
// building the binary under test, describing the machine, warming the page
// cache and taking medians.
package benchutil

import (
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

// BuildDeltabackup builds ./cmd/deltabackup into dir and returns its path.
// It must run from the repository root.
func BuildDeltabackup(dir string) (string, error) {
	bin := filepath.Join(dir, "deltabackup")
	cmd := exec.Command("go", "build", "-o", bin, "./cmd/deltabackup")
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("build deltabackup (run from the repository root): %w", err)
	}
	return bin, nil
}

// Machine describes where the figures were taken: date, cores, kernel, CPU.
func Machine() map[string]string {
	m := map[string]string{"date": time.Now().UTC().Format(time.RFC3339)}
	if out, err := exec.Command("nproc").Output(); err == nil {
		m["nproc"] = strings.TrimSpace(string(out))
	}
	if out, err := exec.Command("uname", "-r").Output(); err == nil {
		m["kernel"] = strings.TrimSpace(string(out))
	}
	if data, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(data), "\n") {
			if strings.HasPrefix(l, "model name") {
				m["cpu"] = strings.TrimSpace(strings.SplitN(l, ":", 2)[1])
				break
			}
		}
	}
	return m
}

// Warm reads every regular file under dir once, so measurements start with
// the page cache warm.
func Warm(dir string) {
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			if f, err := os.Open(p); err == nil {
				io.Copy(io.Discard, f)
				f.Close()
			}
		}
		return nil
	})
}

// Median of xs (0 for none).
func Median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}
