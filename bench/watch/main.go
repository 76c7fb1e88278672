// Command watch measures what watch mode saves on a large tree: the time
// and peak RSS of a full and of a no-change backup of N small files (the
// latter with the directory cache) against scheduled backups of the watch
// command after a number of files changed (rounds of them), and the watch
// process's peak RSS.
//
//	go run ./bench/watch [-files 1000000] [-changes 100] [-rounds 20] [-dir /dev/shm/deltabackup-watch]
package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

func main() {
	files := flag.Int("files", 1_000_000, "files in the generated tree (1,000 per directory)")
	changes := flag.Int("changes", 100, "files changed before each measured watched backup")
	rounds := flag.Int("rounds", 20, "watched backups measured")
	dir := flag.String("dir", "/dev/shm/deltabackup-watch", "work directory (tmpfs keeps generation fast)")
	flag.Parse()
	log.SetFlags(0)
	bin := filepath.Join(*dir, "deltabackup")
	src, repo, cache := filepath.Join(*dir, "src"), filepath.Join(*dir, "repo"), filepath.Join(*dir, "cache")
	must(os.RemoveAll(*dir))
	must(os.MkdirAll(src, 0o755))
	run("go", "build", "-o", bin, "./cmd/deltabackup")
	start := time.Now()
	for i := 0; i < *files; i++ {
		d := filepath.Join(src, fmt.Sprintf("d%03d", i/100000), fmt.Sprintf("e%03d", i/1000%100))
		if i%1000 == 0 {
			must(os.MkdirAll(d, 0o755))
		}
		must(os.WriteFile(filepath.Join(d, fmt.Sprintf("f%03d", i%1000)), []byte(strings.Repeat(fmt.Sprintf("file %d ", i), 3+i%50)), 0o644))
	}
	log.Printf("generated %d files in %.1fs", *files, time.Since(start).Seconds())
	env := append(os.Environ(), "DELTABACKUP_CACHE_DIR="+cache)
	runEnv(env, bin, "init", "--repo", repo)
	full := timed(env, bin, "backup", "--repo", repo, "--json", src)
	log.Printf("full backup: %.2fs, peak RSS %d MB", full.secs, full.rssMB)
	nochange := timed(env, bin, "backup", "--repo", repo, "--json", src)
	log.Printf("no-change backup: %.2fs wall (%.2fs from its summary), peak RSS %d MB",
		nochange.secs, nochange.summarySecs, nochange.rssMB)

	cmd := exec.Command(bin, "watch", "--repo", repo, "--every", "2s", "--json", src)
	cmd.Env = env
	out, err := cmd.StdoutPipe()
	must(err)
	cmd.Stderr = os.Stderr
	must(cmd.Start())
	sc := bufio.NewScanner(out)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	summaries := make(chan map[string]any)
	go func() {
		for sc.Scan() {
			var m map[string]any
			if json.Unmarshal(sc.Bytes(), &m) != nil {
				continue
			}
			if m["message_type"] == "summary" {
				summaries <- m
			}
		}
		close(summaries)
	}()
	first := <-summaries
	log.Printf("watch: first (full-scan) backup %.2fs", first["duration_seconds"])
	<-summaries // a quiet one, so the next holds exactly the changes
	// Each round changes files right after a backup ended, so the next
	// scheduled one (2 s later) holds all of them.
	var incremental, whole []float64
	for round := 0; round < *rounds; round++ {
		for i := 0; i < *changes; i++ {
			n := (round*7919 + i*104729) % *files
			p := filepath.Join(src, fmt.Sprintf("d%03d", n/100000), fmt.Sprintf("e%03d", n/1000%100), fmt.Sprintf("f%03d", n%1000))
			must(os.WriteFile(p, []byte(fmt.Sprintf("changed %d in round %d\n%s", i, round, strings.Repeat("x", 500))), 0o644))
		}
		s := <-summaries
		secs := s["duration_seconds"].(float64)
		if s["incremental"] == true {
			incremental = append(incremental, secs)
		} else {
			whole = append(whole, secs)
		}
		log.Printf("round %d: %.3fs, hashed %v files, %v from the base, %v trees stored (%v bytes), incremental %v",
			round+1, secs, s["hashed_files"], s["cached_files"], s["trees_stored"], s["tree_bytes"], s["incremental"])
	}
	watchRSS := vmHWM(cmd.Process.Pid)
	cmd.Process.Signal(syscall.SIGTERM)
	stopStart := time.Now()
	cmd.Wait()
	log.Printf("watch stopped in %.2fs", time.Since(stopStart).Seconds())
	sort.Float64s(incremental)
	med := incremental[len(incremental)/2]
	log.Printf("watched backups after %d changes: median %.3fs, max %.3fs over %d; full scans among them: %v; watch process peak RSS %d MB",
		*changes, med, incremental[len(incremental)-1], len(incremental), whole, watchRSS)
	log.Printf("ratio watched (median) / no-change backup: %.3f against its wall time, %.3f against its summary",
		med/nochange.secs, med/nochange.summarySecs)
}

type measured struct {
	secs, summarySecs float64
	rssMB             int64
}

func timed(env []string, name string, args ...string) measured {
	cmd := exec.Command(name, args...)
	cmd.Env = env
	cmd.Stderr = os.Stderr
	start := time.Now()
	stdout, err := cmd.Output()
	must(err)
	m := measured{secs: time.Since(start).Seconds(), rssMB: cmd.ProcessState.SysUsage().(*syscall.Rusage).Maxrss / 1024}
	for _, line := range strings.Split(string(stdout), "\n") {
		var s map[string]any
		if json.Unmarshal([]byte(line), &s) == nil && s["message_type"] == "summary" {
			m.summarySecs = s["duration_seconds"].(float64)
		}
	}
	return m
}

// vmHWM is a running process's peak RSS in MB.
func vmHWM(pid int) int64 {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	must(err)
	for _, l := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(l, "VmHWM:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb / 1024
		}
	}
	return 0
}

func run(name string, args ...string) { runEnv(os.Environ(), name, args...) }

func runEnv(env []string, name string, args ...string) {
	cmd := exec.Command(name, args...)
	cmd.Env, cmd.Stdout, cmd.Stderr = env, os.Stderr, os.Stderr
	must(cmd.Run())
}

func must(err error) {
	if err != nil {
		log.Fatal(err)
	}
}
