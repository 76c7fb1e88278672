// Command fleet measures many nodes backing up into one S3 repository at
// once (issue 18): N node processes started together against one node
// alone, and what the repository stores when they race against what it
// stores when they back up one after another (no race: every shared
// content stored once). Each node's source is the same base tree (shared
// by all) plus a directory of its own.
//
// It needs an S3 server: .ci/s3.sh starts versitygw and sets
// DELTABACKUP_S3_ENDPOINT and the AWS variables:
//
//	source .ci/s3.sh && ci_s3_start && go run ./bench/fleet
package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"log"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/zeebo/blake3"

	"github.com/deltabackup/deltabackup/bench/internal/benchutil"
)

type config struct {
	work, data, bucket, out string
	nodes, ownMiB           int
}

func main() {
	var c config
	flag.StringVar(&c.work, "work", "/tmp/deltabackup-bench-fleet", "work directory for the node sources and caches")
	flag.StringVar(&c.data, "data", "", "the base tree every node holds (default: $(go env GOROOT)/src)")
	flag.StringVar(&c.bucket, "bucket", "deltabackup-fleet", "S3 bucket (created if missing)")
	flag.StringVar(&c.out, "out", "bench/fleet-results", "output path prefix: .md and .json are appended")
	flag.IntVar(&c.nodes, "nodes", 4, "nodes backing up at once")
	flag.IntVar(&c.ownMiB, "own-mib", 16, "MiB of files of its own each node holds besides the base tree")
	flag.Parse()
	if os.Getenv("DELTABACKUP_S3_ENDPOINT") == "" {
		log.Fatal("no S3 server: source .ci/s3.sh && ci_s3_start (or set DELTABACKUP_S3_ENDPOINT and the AWS variables)")
	}
	if c.data == "" {
		out, err := exec.Command("go", "env", "GOROOT").Output()
		if err != nil {
			log.Fatal(err)
		}
		c.data = filepath.Join(strings.TrimSpace(string(out)), "src")
	}
	if err := run(c); err != nil {
		log.Fatal(err)
	}
}

// scenario is one way of backing up the fleet.
type scenario struct {
	Name          string  `json:"name"`
	Nodes         int     `json:"nodes"`
	WallSeconds   float64 `json:"wall_seconds"`
	StoredBytes   int64   `json:"stored_bytes"`
	StoredObjects int     `json:"stored_objects"` // distinct ids, trees included
	Verified      bool    `json:"verified"`
	// GCSeconds is the wall time of the gc that ran beside the backups.
	GCSeconds float64 `json:"gc_seconds,omitempty"`
}

func run(c config) error {
	os.RemoveAll(c.work)
	bin := filepath.Join(c.work, "bin")
	if err := os.MkdirAll(bin, 0o755); err != nil {
		return err
	}
	exe, err := benchutil.BuildDeltabackup(bin)
	if err != nil {
		return err
	}
	sources, distinct, err := makeSources(c)
	if err != nil {
		return err
	}
	for _, s := range sources {
		benchutil.Warm(s)
	}
	stamp := time.Now().UTC().Format("20060102T150405")
	env := append(os.Environ(), "DELTABACKUP_PASSWORD=fleet", "DELTABACKUP_KEY_CACHE=0", "AWS_ENDPOINT_URL_S3="+os.Getenv("DELTABACKUP_S3_ENDPOINT"))
	cmd := func(cache string, args ...string) *exec.Cmd {
		x := exec.Command(exe, args...)
		x.Env = append(env, "DELTABACKUP_CACHE_DIR="+cache)
		return x
	}
	// repo makes a fresh repository for a scenario.
	repo := func(name string) (string, error) {
		url := fmt.Sprintf("s3://%s/%s-%s", c.bucket, stamp, name)
		out, err := cmd(filepath.Join(c.work, "cache-init"), "init", "-q", "--create-bucket", "--repo", url).CombinedOutput()
		if err != nil {
			return "", fmt.Errorf("init %s: %v: %s", url, err, out)
		}
		return url, nil
	}
	// backup runs node i's backup into url.
	backup := func(url string, i int, tag string) error {
		cache := filepath.Join(c.work, fmt.Sprintf("cache-%s-%d", tag, i))
		out, err := cmd(cache, "backup", "-q", "--repo", url, "--node", fmt.Sprintf("node-%d", i), sources[i]).CombinedOutput()
		if err != nil {
			return fmt.Errorf("node %d: %v: %s", i, err, out)
		}
		return nil
	}
	finish := func(s *scenario, url string) error {
		var st struct {
			StoredBytes   int64 `json:"stored_bytes"`
			LooseObjects  int   `json:"loose_objects"`
			PackedObjects int   `json:"packed_objects"`
		}
		out, err := cmd(filepath.Join(c.work, "cache-stats"), "stats", "--json", "--repo", url).Output()
		if err != nil {
			return fmt.Errorf("stats: %v", err)
		}
		if err := json.Unmarshal(bytes.TrimSpace(out), &st); err != nil {
			return err
		}
		s.StoredBytes, s.StoredObjects = st.StoredBytes, st.LooseObjects+st.PackedObjects
		s.Verified = cmd(filepath.Join(c.work, "cache-verify"), "verify", "-q", "--read-data", "--repo", url).Run() == nil
		log.Printf("%-12s %d nodes: %6.2fs, stored %.1f MiB in %d objects, verify ok %v", s.Name, s.Nodes, s.WallSeconds, float64(s.StoredBytes)/(1<<20), s.StoredObjects, s.Verified)
		return nil
	}
	var results []scenario

	// One node alone.
	url, err := repo("alone")
	if err != nil {
		return err
	}
	alone := scenario{Name: "alone", Nodes: 1}
	start := time.Now()
	if err := backup(url, 0, "alone"); err != nil {
		return err
	}
	alone.WallSeconds = time.Since(start).Seconds()
	if err := finish(&alone, url); err != nil {
		return err
	}
	results = append(results, alone)

	// The nodes one after another: no race, the reference for storage.
	url, err = repo("sequential")
	if err != nil {
		return err
	}
	seq := scenario{Name: "sequential", Nodes: c.nodes}
	start = time.Now()
	for i := range c.nodes {
		if err := backup(url, i, "seq"); err != nil {
			return err
		}
	}
	seq.WallSeconds = time.Since(start).Seconds()
	if err := finish(&seq, url); err != nil {
		return err
	}
	results = append(results, seq)

	// All at once.
	url, err = repo("concurrent")
	if err != nil {
		return err
	}
	conc := scenario{Name: "concurrent", Nodes: c.nodes}
	var wg sync.WaitGroup
	errs := make([]error, c.nodes)
	start = time.Now()
	for i := range c.nodes {
		wg.Add(1)
		go func() { defer wg.Done(); errs[i] = backup(url, i, "conc") }()
	}
	wg.Wait()
	conc.WallSeconds = time.Since(start).Seconds()
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	if err := finish(&conc, url); err != nil {
		return err
	}
	results = append(results, conc)

	// gc drops the copies racing nodes stored twice (an id in two packs:
	// the index names one, the other is dead and repacked away).
	after := scenario{Name: "concurrent, after gc", Nodes: c.nodes}
	start = time.Now()
	if out, err := cmd(filepath.Join(c.work, "cache-gc"), "gc", "-q", "--repo", url).CombinedOutput(); err != nil {
		return fmt.Errorf("gc: %v: %s", err, out)
	}
	after.WallSeconds = time.Since(start).Seconds()
	if err := finish(&after, url); err != nil {
		return err
	}
	results = append(results, after)

	// gc beside backups: two repositories brought to the same state (two
	// nights, the first forgotten, so gc has packs to delete and repack);
	// the third night runs alone in one and beside a gc in the other.
	gcRuns, err := nightsBesideGC(c, sources, repo, backup, cmd, finish)
	if err != nil {
		return err
	}
	results = append(results, gcRuns...)
	return write(c, results, distinct)
}

// nightsBesideGC measures the slowdown of a night's concurrent backups
// while a gc runs beside them.
func nightsBesideGC(c config, sources []string, repo func(string) (string, error), backup func(string, int, string) error,
	cmd func(string, ...string) *exec.Cmd, finish func(*scenario, string) error) ([]scenario, error) {
	urls := map[string]string{}
	for _, name := range []string{"gc-off", "gc-on"} {
		url, err := repo(name)
		if err != nil {
			return nil, err
		}
		urls[name] = url
	}
	concurrent := func(url, tag string) error {
		var wg sync.WaitGroup
		errs := make([]error, c.nodes)
		for i := range c.nodes {
			wg.Add(1)
			go func() { defer wg.Done(); errs[i] = backup(url, i, tag) }()
		}
		wg.Wait()
		return errors.Join(errs...)
	}
	for night := range 2 {
		if err := changeOwn(c, sources, 100+night); err != nil {
			return nil, err
		}
		for name, url := range urls {
			if err := concurrent(url, name); err != nil {
				return nil, err
			}
		}
	}
	for name, url := range urls {
		if out, err := cmd(filepath.Join(c.work, "cache-forget-"+name), "forget", "-q", "--keep-last", "1", "--repo", url).CombinedOutput(); err != nil {
			return nil, fmt.Errorf("forget: %v: %s", err, out)
		}
	}
	if err := changeOwn(c, sources, 200); err != nil {
		return nil, err
	}
	alone := scenario{Name: "night 3, no gc", Nodes: c.nodes}
	start := time.Now()
	if err := concurrent(urls["gc-off"], "gc-off"); err != nil {
		return nil, err
	}
	alone.WallSeconds = time.Since(start).Seconds()
	if err := finish(&alone, urls["gc-off"]); err != nil {
		return nil, err
	}
	beside := scenario{Name: "night 3 beside gc", Nodes: c.nodes}
	gcDone := make(chan error, 1)
	start = time.Now()
	go func() {
		out, err := cmd(filepath.Join(c.work, "cache-gc-on"), "gc", "-q", "--repo", urls["gc-on"]).CombinedOutput()
		beside.GCSeconds = time.Since(start).Seconds()
		if err != nil {
			err = fmt.Errorf("gc beside backups: %v: %s", err, out)
		}
		gcDone <- err
	}()
	err := concurrent(urls["gc-on"], "gc-on")
	beside.WallSeconds = time.Since(start).Seconds()
	if gcErr := <-gcDone; err != nil || gcErr != nil {
		return nil, errors.Join(err, gcErr)
	}
	if err := finish(&beside, urls["gc-on"]); err != nil {
		return nil, err
	}
	sweep := scenario{Name: "night 3, gc after (sweep)", Nodes: c.nodes}
	start = time.Now()
	if out, err := cmd(filepath.Join(c.work, "cache-gc-on"), "gc", "-q", "--repo", urls["gc-on"]).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("gc after: %v: %s", err, out)
	}
	sweep.WallSeconds = time.Since(start).Seconds()
	if err := finish(&sweep, urls["gc-on"]); err != nil {
		return nil, err
	}
	log.Printf("gc beside the night's backups took %.2fs", beside.GCSeconds)
	return []scenario{alone, beside, sweep}, nil
}

// changeOwn rewrites every node's own files with contents of seed: one
// night's new data.
func changeOwn(c config, sources []string, seed int) error {
	for i, dir := range sources {
		r := rand.New(rand.NewPCG(uint64(i), uint64(seed)))
		for j := range c.ownMiB {
			b := make([]byte, 1<<20)
			for k := range b {
				b[k] = byte(r.Uint32())
			}
			if err := os.WriteFile(filepath.Join(dir, "own", fmt.Sprintf("f%03d", j)), b, 0o644); err != nil {
				return err
			}
		}
	}
	return nil
}

// makeSources copies the base tree once per node and adds each node's
// own files; it returns the sources and how many distinct file contents
// they hold together.
func makeSources(c config) ([]string, int, error) {
	var sources []string
	seen := map[[32]byte]bool{}
	for i := range c.nodes {
		dir := filepath.Join(c.work, fmt.Sprintf("node-%d", i))
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, 0, err
		}
		if out, err := exec.Command("cp", "-a", c.data, filepath.Join(dir, "base")).CombinedOutput(); err != nil {
			return nil, 0, fmt.Errorf("cp: %v: %s", err, out)
		}
		own := filepath.Join(dir, "own")
		os.MkdirAll(own, 0o755)
		r := rand.New(rand.NewPCG(uint64(i), 18))
		for j := range c.ownMiB {
			b := make([]byte, 1<<20)
			for k := range b {
				b[k] = byte(r.Uint32())
			}
			if err := os.WriteFile(filepath.Join(own, fmt.Sprintf("f%03d", j)), b, 0o644); err != nil {
				return nil, 0, err
			}
		}
		err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
			if err != nil || !d.Type().IsRegular() {
				return err
			}
			data, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			seen[blake3.Sum256(data)] = true
			return nil
		})
		if err != nil {
			return nil, 0, err
		}
		sources = append(sources, dir)
	}
	return sources, len(seen), nil
}

func write(c config, results []scenario, distinct int) error {
	m := benchutil.Machine()
	data, err := json.MarshalIndent(map[string]any{"machine": m, "distinct_contents": distinct, "scenarios": results}, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(c.out+".json", data, 0o644); err != nil {
		return err
	}
	var b strings.Builder
	fmt.Fprintf(&b, "# %d nodes backing up into one S3 repository\n\nMachine: %s, %s cores, kernel %s, %s. S3: versitygw on the same machine.\n",
		c.nodes, m["cpu"], m["nproc"], m["kernel"], m["date"])
	fmt.Fprintf(&b, "Each node: %s (shared by all) plus %d MiB of its own; %d distinct file contents in all. Repositories encrypted.\n\n", c.data, c.ownMiB, distinct)
	b.WriteString("| scenario | nodes | wall s | stored MiB | stored objects (distinct ids, trees included) | verify --read-data |\n| --- | ---: | ---: | ---: | ---: | --- |\n")
	for _, r := range results {
		fmt.Fprintf(&b, "| %s | %d | %.2f | %.1f | %d | %v |\n", r.Name, r.Nodes, r.WallSeconds, float64(r.StoredBytes)/(1<<20), r.StoredObjects, r.Verified)
	}
	if len(results) >= 4 {
		fmt.Fprintf(&b, "\nConcurrent / alone: %.2f× the wall time for %d× the nodes. Concurrent / sequential stored bytes: %.2f before gc (racing nodes each store what none of them has indexed yet), %.2f after one gc (wall s of the gc in its row).\n",
			results[2].WallSeconds/results[0].WallSeconds, c.nodes, float64(results[2].StoredBytes)/float64(results[1].StoredBytes),
			float64(results[3].StoredBytes)/float64(results[1].StoredBytes))
	}
	if len(results) == 7 {
		fmt.Fprintf(&b, "\ngc beside backups: the night-3 backups of %d nodes took %.2f s alone and %.2f s while a gc ran beside them (%.2f×; the gc took %.2f s, marking the forgotten night's data and waiting for the backups running then; it used to hold them all back until it finished). The gc after them swept in %.2f s: stored %.1f MiB, against %.1f MiB in the repository without gc.\n",
			c.nodes, results[4].WallSeconds, results[5].WallSeconds, results[5].WallSeconds/results[4].WallSeconds, results[5].GCSeconds,
			results[6].WallSeconds, float64(results[6].StoredBytes)/(1<<20), float64(results[4].StoredBytes)/(1<<20))
	}
	return os.WriteFile(c.out+".md", []byte(b.String()), 0o644)
}
