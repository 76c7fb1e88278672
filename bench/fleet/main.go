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
	nodes, ownMiB, nightMiB int
	nightLimit              string
}

func main() {
	var c config
	flag.StringVar(&c.work, "work", "/tmp/deltabackup-bench-fleet", "work directory for the node sources and caches")
	flag.StringVar(&c.data, "data", "", "the base tree every node holds (default: $(go env GOROOT)/src)")
	flag.StringVar(&c.bucket, "bucket", "deltabackup-fleet", "S3 bucket (created if missing)")
	flag.StringVar(&c.out, "out", "bench/fleet-results", "output path prefix: .md and .json are appended")
	flag.IntVar(&c.nodes, "nodes", 4, "nodes backing up at once")
	flag.IntVar(&c.ownMiB, "own-mib", 16, "MiB of files of its own each node holds besides the base tree")
	flag.StringVar(&c.nightLimit, "night-limit", "", "--limit-upload of each node on the night measured beside gc (e.g. 24MiB: a link-bound night)")
	flag.IntVar(&c.nightMiB, "night-mib", 128, "MiB each node writes anew for the night measured beside gc (long enough that gc marks while it runs)")
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
	// GCSeconds is the wall time of the gc that ran beside the backups,
	// GC what it reported (swept_marks, pending_marks, waiting_for, …).
	GCSeconds float64        `json:"gc_seconds,omitempty"`
	GC        map[string]any `json:"gc,omitempty"`
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
	backup := func(url string, i int, tag string, extra ...string) error {
		cache := filepath.Join(c.work, fmt.Sprintf("cache-%s-%d", tag, i))
		args := append([]string{"backup", "-q", "--repo", url, "--node", fmt.Sprintf("node-%d", i)}, extra...)
		out, err := cmd(cache, append(args, sources[i])...).CombinedOutput()
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
func nightsBesideGC(c config, sources []string, repo func(string) (string, error), backup func(string, int, string, ...string) error,
	cmd func(string, ...string) *exec.Cmd, finish func(*scenario, string) error) ([]scenario, error) {
	urls := map[string]string{}
	for _, name := range []string{"gc-off", "gc-on"} {
		url, err := repo(name)
		if err != nil {
			return nil, err
		}
		urls[name] = url
	}
	concurrent := func(url, tag string, extra ...string) error {
		var wg sync.WaitGroup
		errs := make([]error, c.nodes)
		for i := range c.nodes {
			wg.Add(1)
			go func() { defer wg.Done(); errs[i] = backup(url, i, tag, extra...) }()
		}
		wg.Wait()
		return errors.Join(errs...)
	}
	for night := range 2 {
		if err := changeOwn(c, sources, 100+night, c.ownMiB); err != nil {
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
	if err := changeOwn(c, sources, 200, c.nightMiB); err != nil {
		return nil, err
	}
	alone := scenario{Name: "night 3, no gc", Nodes: c.nodes}
	start := time.Now()
	var limit []string
	if c.nightLimit != "" {
		limit = []string{"--limit-upload", c.nightLimit}
	}
	if err := concurrent(urls["gc-off"], "gc-off", limit...); err != nil {
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
		// Started a moment after the backups, so that they hold their
		// locks when it looks.
		time.Sleep(300 * time.Millisecond)
		out, err := cmd(filepath.Join(c.work, "cache-gc-on"), "gc", "--json", "--repo", urls["gc-on"]).Output()
		beside.GCSeconds = time.Since(start).Seconds() - 0.3
		if err != nil {
			err = fmt.Errorf("gc beside backups: %v: %s", err, out)
		} else {
			err = json.Unmarshal(bytes.TrimSpace(out), &beside.GC)
		}
		gcDone <- err
	}()
	err := concurrent(urls["gc-on"], "gc-on", limit...)
	beside.WallSeconds = time.Since(start).Seconds()
	if gcErr := <-gcDone; err != nil || gcErr != nil {
		return nil, errors.Join(err, gcErr)
	}
	if err := finish(&beside, urls["gc-on"]); err != nil {
		return nil, err
	}
	sweep := scenario{Name: "night 3, gc after (sweep)", Nodes: c.nodes}
	start = time.Now()
	out, err := cmd(filepath.Join(c.work, "cache-gc-on"), "gc", "--json", "--repo", urls["gc-on"]).Output()
	if err != nil {
		return nil, fmt.Errorf("gc after: %v: %s", err, out)
	}
	sweep.WallSeconds = time.Since(start).Seconds()
	if err := json.Unmarshal(bytes.TrimSpace(out), &sweep.GC); err != nil {
		return nil, err
	}
	if err := finish(&sweep, urls["gc-on"]); err != nil {
		return nil, err
	}
	log.Printf("gc beside the night's backups took %.2fs", beside.GCSeconds)
	return []scenario{alone, beside, sweep}, nil
}

// changeOwn writes mib files of 1 MiB into every node's own directory,
// with contents of seed: one night's new data.
func changeOwn(c config, sources []string, seed, mib int) error {
	for i, dir := range sources {
		r := rand.New(rand.NewPCG(uint64(i), uint64(seed)))
		for j := range mib {
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
		besideGC, after := results[5].GC, results[6].GC
		fmt.Fprintf(&b, "\ngc beside backups: nodes hold %d MiB of new files on night 3", c.nightMiB)
		if c.nightLimit != "" {
			fmt.Fprintf(&b, " and upload at most %s/s each", c.nightLimit)
		}
		b.WriteString(". ")
		fmt.Fprintf(&b, "The night-3 backups of %d nodes took %.2f s with no gc and %.2f s with a gc started 0.3 s after them (%.2f×). "+
			"That gc took %.2f s; its mark waited for %d running backups, it swept %v marks and freed %.1f MiB, leaving %v marks pending. "+
			"The gc after the backups took %.2f s, swept %v marks and freed %.1f MiB: %.1f MiB stored, against %.1f MiB in the repository without gc. "+
			"Before gc ran in two phases, the backups waited for the whole gc instead.\n",
			c.nodes, results[4].WallSeconds, results[5].WallSeconds, results[5].WallSeconds/results[4].WallSeconds,
			results[5].GCSeconds, len(asList(besideGC["waiting_for"])), besideGC["swept_marks"], num(besideGC["deleted_bytes"])/(1<<20), besideGC["pending_marks"],
			results[6].WallSeconds, after["swept_marks"], num(after["deleted_bytes"])/(1<<20),
			float64(results[6].StoredBytes)/(1<<20), float64(results[4].StoredBytes)/(1<<20))
	}
	return os.WriteFile(c.out+".md", []byte(b.String()), 0o644)
}

func asList(v any) []any { l, _ := v.([]any); return l }

func num(v any) float64 { f, _ := v.(float64); return f }
