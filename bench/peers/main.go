package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/deltabackup/deltabackup/bench/internal/benchutil"
)

type config struct {
	work, data, out, targetDir string
	runs, perSource            int
	peerRate                   int64
	keep                       bool
}

func main() {
	var c config
	flag.StringVar(&c.work, "work", "/tmp/deltabackup-bench-peers", "work directory for the repository, replicas and restores")
	flag.StringVar(&c.data, "data", "", "the data directory to restore (default: $(go env GOROOT))")
	flag.StringVar(&c.out, "out", "bench/peers-results", "output path prefix: .md and .json are appended")
	flag.StringVar(&c.targetDir, "target-dir", "/dev/shm", "where restores are written: a RAM file system by default, so the figures are the sources' and not the disk's ('' for the work directory)")
	flag.IntVar(&c.runs, "runs", 3, "runs per scenario (the median is reported)")
	flag.IntVar(&c.perSource, "per-source", 0, "restore --per-source (0: the default)")
	flag.BoolVar(&c.keep, "keep", false, "keep the work directory")
	flag.Int64Var(&c.peerRate, "peer-rate", 0, "limit each peer to this many bytes/s, as a network link would (0: no limit)")
	flag.Parse()
	if c.data == "" {
		out, err := exec.Command("go", "env", "GOROOT").Output()
		if err != nil {
			log.Fatal(err)
		}
		c.data = strings.TrimSpace(string(out))
	}
	if c.runs < 1 {
		log.Fatal("-runs must be at least 1")
	}
	if err := run(c); err != nil {
		log.Fatal(err)
	}
}

// source is one line of a restore summary's "sources".
type source struct {
	Source       string `json:"source"`
	PlanBytes    int64  `json:"plan_bytes"`
	FetchedBytes int64  `json:"fetched_bytes"`
}

// measurement is one restore.
type measurement struct {
	Scenario  string         `json:"scenario"`
	Run       int            `json:"run"`
	Seconds   float64        `json:"seconds"`
	Bytes     int64          `json:"bytes"`
	Sources   []source       `json:"sources"`
	Identical bool           `json:"identical"`
	Warnings  map[string]int `json:"warnings,omitempty"` // logged by the restore, count by message
}

type results struct {
	Machine      map[string]string `json:"machine"`
	Data         string            `json:"data"`
	DataBytes    int64             `json:"data_bytes"`
	DataFiles    int               `json:"data_files"`
	Target       string            `json:"target_dir"`
	PeerRate     int64             `json:"peer_rate_bytes_per_second"`
	SlowThrottle int64             `json:"slow_peer_throttle_bytes_per_second"`
	SlowRatio    float64           `json:"slow_over_fast_only_time"`
	Measurements []measurement     `json:"measurements"`
}

// peer is a running `deltabackup serve`.
type peer struct {
	url string
	cmd *exec.Cmd
}

type bench struct {
	c      config
	bin    string
	repo   string
	target string
	res    results
}

func run(c config) error {
	os.RemoveAll(c.work)
	if err := os.MkdirAll(c.work, 0o755); err != nil {
		return err
	}
	if !c.keep {
		defer os.RemoveAll(c.work)
	}
	// Every command of the bench (init, backup, serve, restore) opens the
	// same encrypted repository.
	if os.Getenv("DELTABACKUP_PASSWORD") == "" && os.Getenv("DELTABACKUP_PASSWORD_FILE") == "" {
		os.Setenv("DELTABACKUP_PASSWORD", "bench")
	}
	bin, err := benchutil.BuildDeltabackup(c.work)
	if err != nil {
		return err
	}
	targetDir := c.targetDir
	if targetDir == "" {
		targetDir = c.work
	}
	target := filepath.Join(targetDir, fmt.Sprintf("deltabackup-bench-peers-%d", os.Getpid()))
	defer os.RemoveAll(target)
	b := &bench{c: c, bin: bin, repo: filepath.Join(c.work, "repo"), target: target,
		res: results{Machine: benchutil.Machine(), Data: c.data, Target: targetDir, PeerRate: c.peerRate}}
	b.res.DataBytes, b.res.DataFiles = treeSize(c.data)
	log.Printf("data %s: %d files, %.1f MB", c.data, b.res.DataFiles, float64(b.res.DataBytes)/1e6)
	if err := b.cli("init", "--repo", b.repo); err != nil {
		return err
	}
	if err := b.cli("backup", "--repo", b.repo, c.data); err != nil {
		return err
	}
	// Replicas are hard-linked copies: each peer reads and verifies the
	// files of its own directory, without 3x the disk space.
	var peers []*peer
	defer func() {
		for _, p := range peers {
			p.stop()
		}
	}()
	for _, name := range []string{"a", "b", "c"} {
		replica := filepath.Join(c.work, "replica-"+name)
		if out, err := exec.Command("cp", "-al", c.data, replica).CombinedOutput(); err != nil {
			return fmt.Errorf("cp -al: %v: %s", err, out)
		}
		p, err := b.serve(b.rateArgs("--source", replica)...)
		if err != nil {
			return err
		}
		peers = append(peers, p)
	}
	benchutil.Warm(c.data)
	a, pb, pc := peers[0], peers[1], peers[2]

	if _, err := b.scenario("1 peer", false, nil, a); err != nil {
		return err
	}
	fastOnly, err := b.scenario("2 peers", false, nil, a, pb)
	if err != nil {
		return err
	}
	// What one of two peers sends per second: the speed the slowed peer
	// gets a tenth of.
	last := b.res.Measurements[len(b.res.Measurements)-1]
	peerSpeed := float64(last.Bytes) / 2 / fastOnly
	three, err := b.scenario("3 peers", false, nil, a, pb, pc)
	if err != nil {
		return err
	}
	if _, err := b.scenario("repository + 3 peers", true, nil, a, pb, pc); err != nil {
		return err
	}

	if c.peerRate > 0 {
		peerSpeed = float64(c.peerRate)
	}
	b.res.SlowThrottle = max(int64(peerSpeed/10), 1<<10)
	slowDir := filepath.Join(c.work, "replica-slow")
	if out, err := exec.Command("cp", "-al", c.data, slowDir).CombinedOutput(); err != nil {
		return fmt.Errorf("cp -al: %v: %s", err, out)
	}
	slow, err := b.serve("--source", slowDir, "--throttle", fmt.Sprint(b.res.SlowThrottle))
	if err != nil {
		return err
	}
	peers = append(peers, slow)
	slowed, err := b.scenario("2 peers + 1 slowed to 1/10", false, nil, a, pb, slow)
	if err != nil {
		return err
	}
	b.res.SlowRatio = slowed / fastOnly

	// A peer killed halfway through (3 peers took `three`).
	killDir := filepath.Join(c.work, "replica-killed")
	if out, err := exec.Command("cp", "-al", c.data, killDir).CombinedOutput(); err != nil {
		return fmt.Errorf("cp -al: %v: %s", err, out)
	}
	if _, err := b.scenario("3 peers, 1 killed halfway", false, func() ([]*peer, func()) {
		victim, err := b.serve(b.rateArgs("--source", killDir)...)
		if err != nil {
			log.Fatal(err)
		}
		t := time.AfterFunc(time.Duration(three/2*float64(time.Second)), func() { victim.cmd.Process.Kill() })
		return []*peer{victim}, func() { t.Stop(); victim.stop() }
	}, a, pb); err != nil {
		return err
	}
	return b.write()
}

// scenario restores c.runs times from the given peers (and the repository
// when withRepo) and returns the median seconds. extra, when set, starts
// per-run peers and returns a clean-up.
func (b *bench) scenario(name string, withRepo bool, extra func() ([]*peer, func()), peers ...*peer) (float64, error) {
	var secs []float64
	for i := range b.c.runs {
		os.RemoveAll(b.target)
		// Let the file system finish the deletion, or it lands in the
		// next run's time.
		exec.Command("sync").Run()
		all := peers
		var cleanup func()
		if extra != nil {
			var more []*peer
			more, cleanup = extra()
			all = append(append([]*peer(nil), peers...), more...)
		}
		args := []string{"restore", "--json", "--repo", b.repo}
		if !withRepo {
			args = append(args, "--no-repo-source")
		}
		if b.c.perSource > 0 {
			args = append(args, "--per-source", fmt.Sprint(b.c.perSource))
		}
		for _, p := range all {
			args = append(args, "--from", p.url)
		}
		args = append(args, "latest", b.target)
		start := time.Now()
		cmd := exec.Command(b.bin, args...)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		took := time.Since(start).Seconds()
		if cleanup != nil {
			cleanup()
		}
		if err != nil {
			return 0, fmt.Errorf("%s: restore: %v: %s", name, err, stderr.String())
		}
		m := measurement{Scenario: name, Run: i + 1, Seconds: took, Warnings: warningsIn(stderr.Bytes())}
		var sum struct {
			BytesDownloaded int64    `json:"bytes_downloaded"`
			Sources         []source `json:"sources"`
		}
		lines := bytes.Split(bytes.TrimSpace(out), []byte("\n"))
		if err := json.Unmarshal(lines[len(lines)-1], &sum); err != nil {
			return 0, fmt.Errorf("%s: summary: %w", name, err)
		}
		m.Bytes, m.Sources = sum.BytesDownloaded, sum.Sources
		m.Identical = exec.Command("diff", "-r", "--no-dereference", b.c.data, b.target).Run() == nil
		if !m.Identical {
			return 0, fmt.Errorf("%s: the restored tree differs from the source", name)
		}
		log.Printf("%s, run %d: %.2fs, %.1f MB/s, per source %s, warnings %v", name, i+1, took, float64(m.Bytes)/1e6/took, perSource(m), m.Warnings)
		b.res.Measurements = append(b.res.Measurements, m)
		secs = append(secs, took)
	}
	return benchutil.Median(secs), nil
}

func perSource(m measurement) string {
	var parts []string
	for _, s := range m.Sources {
		parts = append(parts, fmt.Sprintf("%s %.1f MB/s (%.1f MB)", shortName(s.Source), float64(s.FetchedBytes)/1e6/m.Seconds, float64(s.FetchedBytes)/1e6))
	}
	return strings.Join(parts, ", ")
}

func shortName(s string) string {
	if i := strings.LastIndex(s, ":"); strings.HasPrefix(s, "peer ") && i > 0 {
		return "peer :" + s[i+1:]
	}
	return "repository"
}

// rateArgs adds the -peer-rate throttle to serve arguments.
func (b *bench) rateArgs(args ...string) []string {
	if b.c.peerRate > 0 {
		args = append(args, "--throttle", fmt.Sprint(b.c.peerRate))
	}
	return args
}

func (b *bench) cli(args ...string) error {
	cmd := exec.Command(b.bin, args...)
	cmd.Stderr = os.Stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("deltabackup %s: %w", strings.Join(args, " "), err)
	}
	return nil
}

func (b *bench) serve(args ...string) (*peer, error) {
	// The repository is read for its chunking only, so files kept in
	// chunks are served chunk by chunk from the replica.
	cmd := exec.Command(b.bin, append([]string{"serve", "--json", "--listen", "127.0.0.1:0", "--rescan", "0", "--no-auth", "--repo", b.repo, "--no-repo-objects"}, args...)...)
	cmd.Env = append(os.Environ(), "DELTABACKUP_CACHE_DIR="+filepath.Join(b.c.work, "cache"))
	cmd.Stderr = os.Stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	lines := bufio.NewScanner(stdout)
	if !lines.Scan() {
		cmd.Wait()
		return nil, fmt.Errorf("serve %v printed nothing", args)
	}
	go io.Copy(io.Discard, stdout)
	var hello struct {
		URL string `json:"url"`
	}
	if err := json.Unmarshal(lines.Bytes(), &hello); err != nil {
		return nil, fmt.Errorf("serve announced %q: %w", lines.Text(), err)
	}
	return &peer{url: hello.URL, cmd: cmd}, nil
}

func (p *peer) stop() {
	p.cmd.Process.Signal(syscall.SIGINT)
	p.cmd.Wait()
}

func treeSize(dir string) (int64, int) {
	var bytes int64
	files := 0
	filepath.Walk(dir, func(_ string, fi os.FileInfo, err error) error {
		if err == nil && fi.Mode().IsRegular() {
			bytes += fi.Size()
			files++
		}
		return nil
	})
	return bytes, files
}

// write saves the measurements as JSON and a Markdown table of medians.
func (b *bench) write() error {
	data, err := json.MarshalIndent(b.res, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(b.c.out+".json", append(data, '\n'), 0o644); err != nil {
		return err
	}
	var md strings.Builder
	r := b.res
	fmt.Fprintf(&md, "# Restore from peers on loopback\n\n")
	fmt.Fprintf(&md, "Machine: %s cores, %s, kernel %s, %s. Data: `%s`, %d files, %.1f MB. Restored into `%s`. Medians of %d runs; every restore compared with `diff -r`.\n\n",
		r.Machine["nproc"], r.Machine["cpu"], r.Machine["kernel"], r.Machine["date"], r.Data, r.DataFiles, float64(r.DataBytes)/1e6, r.Target, b.c.runs)
	limit := "no limit on the peers (the machine's cores are shared by the peers and the restore)"
	if r.PeerRate > 0 {
		limit = fmt.Sprintf("each peer limited to %.1f MB/s, as by a network link", float64(r.PeerRate)/1e6)
	}
	fmt.Fprintf(&md, "Generated by `go run ./bench/peers`. Peers are `deltabackup serve --source` on hard-linked replicas; %s; the slowed peer sends at most %.2f MB/s, a tenth of a fast peer's rate. With it, the restore took %.2fx the time of the two fast peers alone.\n\n",
		limit, float64(r.SlowThrottle)/1e6, r.SlowRatio)
	fmt.Fprintf(&md, "| scenario | seconds | MB/s total | MB fetched per source | MB/s per source | warnings (all runs) |\n| --- | ---: | ---: | --- | --- | ---: |\n")
	var order []string
	by := map[string][]measurement{}
	for _, m := range r.Measurements {
		if by[m.Scenario] == nil {
			order = append(order, m.Scenario)
		}
		by[m.Scenario] = append(by[m.Scenario], m)
	}
	for _, name := range order {
		ms := by[name]
		var secs []float64
		for _, m := range ms {
			secs = append(secs, m.Seconds)
		}
		med := benchutil.Median(secs)
		// The run closest to the median speaks for the scenario.
		rep := ms[0]
		for _, m := range ms {
			if abs(m.Seconds-med) < abs(rep.Seconds-med) {
				rep = m
			}
		}
		var fetched, rates []string
		for _, s := range rep.Sources {
			fetched = append(fetched, fmt.Sprintf("%.1f", float64(s.FetchedBytes)/1e6))
			rates = append(rates, fmt.Sprintf("%.1f", float64(s.FetchedBytes)/1e6/rep.Seconds))
		}
		warnings := 0
		for _, m := range ms {
			for _, n := range m.Warnings {
				warnings += n
			}
		}
		fmt.Fprintf(&md, "| %s | %.2f | %.1f | %s | %s | %d |\n", name, med, float64(rep.Bytes)/1e6/med, strings.Join(fetched, " / "), strings.Join(rates, " / "), warnings)
	}
	return os.WriteFile(b.c.out+".md", []byte(md.String()), 0o644)
}

func abs(x float64) float64 {
	if x < 0 {
		return -x
	}
	return x
}

// warningsIn counts the restore's JSON log lines at level WARN by message.
func warningsIn(stderr []byte) map[string]int {
	counts := map[string]int{}
	for _, line := range bytes.Split(stderr, []byte("\n")) {
		var rec struct{ Level, Msg string }
		if json.Unmarshal(line, &rec) == nil && rec.Level == "WARN" {
			counts[rec.Msg]++
		}
	}
	return counts
}
