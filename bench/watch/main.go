// Command watch measures what watch mode saves on a large tree: the time
// of a stat-only no-change backup of N small files against a scheduled
// backup of the watch command after a number of files changed, and the
// peak RSS of both processes.
//
//	go run ./bench/watch [-files 1000000] [-changes 100] [-dir /dev/shm/deltabackup-watch]
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
	"strconv"
	"strings"
	"syscall"
	"time"
)

func main() {
	files := flag.Int("files", 1_000_000, "files in the generated tree (1,000 per directory)")
	changes := flag.Int("changes", 100, "files changed before the measured watched backup")
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
	full := timed(env, bin, "backup", "--repo", repo, src)
	log.Printf("full backup: %.2fs, peak RSS %d MB", full.secs, full.rssMB)
	nochange := timed(env, bin, "backup", "--repo", repo, src)
	log.Printf("stat-only no-change backup: %.2fs, peak RSS %d MB", nochange.secs, nochange.rssMB)

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
			if json.Unmarshal(sc.Bytes(), &m) == nil && m["message_type"] == "summary" {
				summaries <- m
			}
		}
		close(summaries)
	}()
	first := <-summaries
	log.Printf("watch: first (full-scan) backup %.2fs", first["duration_seconds"])
	<-summaries // a quiet one, so the next holds exactly the changes
	for i := 0; i < *changes; i++ {
		n := (i * 7919) % *files
		p := filepath.Join(src, fmt.Sprintf("d%03d", n/100000), fmt.Sprintf("e%03d", n/1000%100), fmt.Sprintf("f%03d", n%1000))
		must(os.WriteFile(p, []byte(fmt.Sprintf("changed %d\n%s", i, strings.Repeat("x", 500))), 0o644))
	}
	changed := <-summaries
	watchRSS := vmHWM(cmd.Process.Pid)
	cmd.Process.Signal(syscall.SIGTERM)
	cmd.Wait()
	secs := changed["duration_seconds"].(float64)
	log.Printf("watched backup after %d changes: %.3fs (hashed %v files, %v from the base), watch process peak RSS %d MB",
		*changes, secs, changed["hashed_files"], changed["cached_files"], watchRSS)
	log.Printf("ratio watched / stat-only no-change: %.3f (target ≤ 0.05)", secs/nochange.secs)
}

type measured struct {
	secs  float64
	rssMB int64
}

func timed(env []string, name string, args ...string) measured {
	cmd := exec.Command(name, args...)
	cmd.Env = env
	cmd.Stderr = os.Stderr
	start := time.Now()
	must(cmd.Run())
	ru := cmd.ProcessState.SysUsage().(*syscall.Rusage)
	return measured{time.Since(start).Seconds(), ru.Maxrss / 1024}
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
