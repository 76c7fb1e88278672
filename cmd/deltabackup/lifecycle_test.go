package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/deltabackup/deltabackup/restore/restoretest"
)

// TestForgetGCDiffStats runs the lifecycle as a user would: five nightly
// backups, forget by policy (dry run first), gc, then verify, restore
// what is kept, and look at stats and diff.
func TestForgetGCDiffStats(t *testing.T) {
	c := newCLI(t)
	dir := t.TempDir()
	repo, src := filepath.Join(dir, "repo"), filepath.Join(dir, "src")
	makeSource(t, src)
	c.ok("init", "--repo", repo)
	for i := 1; i <= 5; i++ {
		os.WriteFile(filepath.Join(src, fmt.Sprintf("night%d.bin", i)), []byte(strings.Repeat(fmt.Sprintf("night %d ", i), 100000)), 0o644)
		os.Remove(filepath.Join(src, fmt.Sprintf("night%d.bin", i-1)))
		c.ok("backup", "--repo", repo, "--name", fmt.Sprintf("n%d", i), src)
	}
	o := c.ok("forget", "--repo", repo, "--keep-last", "2", "--dry-run")
	if !strings.Contains(o.stdout, "keep    n5") || !strings.Contains(o.stdout, "remove  n1") || !strings.Contains(o.stdout, "would remove (dry run) 3 backups") {
		t.Fatalf("forget --dry-run:\n%s", o.stdout)
	}
	var list []any
	json.Unmarshal([]byte(c.ok("list", "--json", "--repo", repo).stdout), &list)
	if len(list) != 5 {
		t.Fatalf("dry run removed backups: %d left", len(list))
	}
	var forget struct{ Removed []string }
	json.Unmarshal([]byte(c.ok("forget", "--json", "--repo", repo, "--keep-last", "2").stdout), &forget)
	if strings.Join(forget.Removed, ",") != "n3,n2,n1" {
		t.Fatalf("forget removed %v", forget.Removed)
	}
	before := summary(t, c.ok("stats", "--json", "--repo", repo))
	gc := summary(t, c.ok("gc", "--json", "--repo", repo))
	after := summary(t, c.ok("stats", "--json", "--repo", repo))
	t.Logf("gc: %v", gc)
	if gc["deleted_objects"].(float64) < 3 || after["stored_bytes"].(float64) >= before["stored_bytes"].(float64) {
		t.Fatalf("gc freed nothing: %v; stored %v → %v", gc, before["stored_bytes"], after["stored_bytes"])
	}
	if after["backups"].(float64) != 2 || after["dedup_ratio"].(float64) < 1.5 {
		t.Fatalf("stats after gc: %v", after)
	}
	c.ok("verify", "--repo", repo, "--read-data")
	out := filepath.Join(dir, "out")
	c.ok("restore", "--repo", repo, "n5", out)
	restoretest.CompareTrees(t, src, out)

	d := c.ok("diff", "--repo", repo, "n4", "n5")
	if !strings.Contains(d.stdout, "+ night5.bin") || !strings.Contains(d.stdout, "- night4.bin") || !strings.Contains(d.stdout, "1 added") {
		t.Fatalf("diff:\n%s", d.stdout)
	}
	if o := c.run("forget", "--repo", repo); o.code != 2 || !strings.Contains(o.stderr, "needs a policy") {
		t.Fatalf("forget without a policy: exit %d %s", o.code, o.stderr)
	}
}

// TestMetricsFile writes the metrics of a good and a failed run and
// parses them as Prometheus does.
func TestMetricsFile(t *testing.T) {
	c := newCLI(t)
	dir := t.TempDir()
	repo, src, metrics := filepath.Join(dir, "repo"), filepath.Join(dir, "src"), filepath.Join(dir, "deltabackup.prom")
	makeSource(t, src)
	c.ok("init", "--repo", repo)
	c.ok("backup", "--repo", repo, "--metrics-file", metrics, src)
	good := parseMetrics(t, metrics)
	if good["deltabackup_backup_success"] != 1 || good["deltabackup_backup_files"] != 125 || good["deltabackup_backup_uploaded_bytes"] <= 0 ||
		good["deltabackup_backup_failures_total"] != 0 || good["deltabackup_backup_last_success_timestamp_seconds"] <= 0 {
		t.Fatalf("metrics of a good run: %v", good)
	}
	// The repository is gone: the run fails, the last success stays.
	os.RemoveAll(repo)
	if o := c.run("backup", "--repo", repo, "--metrics-file", metrics, src); o.code != 10 {
		t.Fatalf("backup into a missing repository: exit %d", o.code)
	}
	bad := parseMetrics(t, metrics)
	if bad["deltabackup_backup_success"] != 0 || bad["deltabackup_backup_failures_total"] != 1 ||
		bad["deltabackup_backup_last_success_timestamp_seconds"] != good["deltabackup_backup_last_success_timestamp_seconds"] {
		t.Fatalf("metrics of a failed run: %v (good run: %v)", bad, good)
	}
}

func parseMetrics(t *testing.T, path string) map[string]float64 {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(f)
	if err != nil {
		t.Fatalf("metrics file does not parse: %v", err)
	}
	out := map[string]float64{}
	for name, fam := range families {
		m := fam.GetMetric()[0]
		if g := m.GetGauge(); g != nil {
			out[name] = g.GetValue()
		} else if c := m.GetCounter(); c != nil {
			out[name] = c.GetValue()
		}
	}
	return out
}

// TestNotifications posts events to a working endpoint and to one that
// always fails: the backup succeeds either way.
func TestNotifications(t *testing.T) {
	var mu sync.Mutex
	var events []map[string]any
	var failing int
	ok := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var e map[string]any
		data, _ := io.ReadAll(r.Body)
		json.Unmarshal(data, &e)
		mu.Lock()
		events = append(events, e)
		mu.Unlock()
	}))
	defer ok.Close()
	broken := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		failing++
		mu.Unlock()
		http.Error(w, "down for maintenance", http.StatusServiceUnavailable)
	}))
	defer broken.Close()

	c := newCLI(t)
	dir := t.TempDir()
	repo, src := filepath.Join(dir, "repo"), filepath.Join(dir, "src")
	makeSource(t, src)
	c.ok("init", "--repo", repo)
	c.ok("backup", "--repo", repo, "--name", "first", "--notify-url", ok.URL, src)
	if o := c.run("backup", "--repo", filepath.Join(dir, "none"), "--notify-url", ok.URL, src); o.code != 10 {
		t.Fatalf("backup into a missing repository: exit %d", o.code)
	}
	kinds := map[string]map[string]any{}
	for _, e := range events {
		kinds[e["event"].(string)] = e
	}
	if f := kinds["backup_finished"]; f == nil || f["backup"] != "first" || f["files"].(float64) != 125 || f["repository"] == nil {
		t.Fatalf("backup_finished event: %v", events)
	}
	if kinds["objects_created"] == nil || kinds["backup_failed"] == nil || !strings.Contains(kinds["backup_failed"]["error"].(string), "does not exist") {
		t.Fatalf("events: %v", events)
	}

	o := c.run("backup", "--repo", repo, "--notify-url", broken.URL, src)
	if o.code != 0 || !strings.Contains(o.stderr, "notification not delivered") {
		t.Fatalf("backup with a failing endpoint: exit %d\n%s", o.code, o.stderr)
	}
	if failing != notifyAttempts {
		t.Fatalf("the failing endpoint was tried %d times, want %d", failing, notifyAttempts)
	}
}

// TestVerifyReadDataSubset: the parts of --read-data-subset N/M read
// everything between them; a bad specification is a usage error.
func TestVerifyReadDataSubset(t *testing.T) {
	c := newCLI(t)
	dir := t.TempDir()
	repo, src := filepath.Join(dir, "repo"), filepath.Join(dir, "src")
	makeSource(t, src)
	c.ok("init", "--repo", repo)
	c.ok("backup", "--repo", repo, src)
	all := summary(t, c.ok("verify", "--repo", repo, "--read-data", "--json"))
	read := 0.0
	for _, part := range []string{"1/2", "2/2"} {
		s := summary(t, c.ok("verify", "--repo", repo, "--read-data-subset", part, "--json"))
		if s["subset"] != part {
			t.Fatalf("summary of part %s: %v", part, s)
		}
		read += s["read_objects"].(float64)
	}
	if read != all["read_objects"].(float64) {
		t.Fatalf("parts 1/2 and 2/2 read %v objects, everything is %v", read, all["read_objects"])
	}
	if o := c.run("verify", "--repo", repo, "--read-data-subset", "3/2"); o.code != exitUsage || !strings.Contains(o.stderr, "n/m") {
		t.Fatalf("--read-data-subset 3/2: exit %d\n%s", o.code, o.stderr)
	}
}

// TestBandwidthLimitsAreAccepted: backups, restores and copies run with
// --limit-upload and --limit-download (the rate they keep is measured by
// BenchmarkRateLimitedPut, not here); a bad size is a usage error.
func TestBandwidthLimitsAreAccepted(t *testing.T) {
	c := newCLI(t)
	dir := t.TempDir()
	repo, other, src := filepath.Join(dir, "repo"), filepath.Join(dir, "other"), filepath.Join(dir, "src")
	makeSource(t, src)
	c.ok("init", "--repo", repo)
	c.ok("backup", "--repo", repo, "--limit-upload", "512MiB", src)
	c.ok("init", "--repo", other)
	c.ok("copy", "--from", repo, "--to", other, "--limit-upload", "512MiB", "--limit-download", "512MiB")
	out := filepath.Join(dir, "out")
	c.ok("restore", "--repo", other, "--limit-download", "512MiB", "latest", out)
	restoretest.CompareTrees(t, src, out)
	if o := c.run("backup", "--repo", repo, "--limit-upload", "fast", src); o.code != exitUsage {
		t.Fatalf("--limit-upload fast: exit %d\n%s", o.code, o.stderr)
	}
}

func TestParseRetentionDuration(t *testing.T) {
	for in, want := range map[string]time.Duration{"36h": 36 * time.Hour, "14d": 14 * 24 * time.Hour, "2w": 14 * 24 * time.Hour,
		"1y": 365 * 24 * time.Hour, "1y2w3d4h": (365+14+3)*24*time.Hour + 4*time.Hour, "90m": 90 * time.Minute} {
		if got, err := parseRetentionDuration(in); err != nil || got != want {
			t.Errorf("%q: %v, %v; want %v", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "d", "3", "3x", "0d", "-1d", "1.5d", "99999999d"} {
		if _, err := parseRetentionDuration(bad); err == nil {
			t.Errorf("%q parsed", bad)
		}
	}
}

// TestForgetKeepTagAndPrune: a tagged backup outlives --keep-last, and
// --prune deletes the data of the removed ones in the same run.
func TestForgetKeepTagAndPrune(t *testing.T) {
	c := newCLI(t)
	dir := t.TempDir()
	repo, src := filepath.Join(dir, "repo"), filepath.Join(dir, "src")
	makeSource(t, src)
	c.ok("init", "--repo", repo)
	c.ok("backup", "--repo", repo, "--name", "a", "--tag", "pre-upgrade", src)
	os.WriteFile(filepath.Join(src, "data/only-b.bin"), bytes.Repeat([]byte("only in b "), 100000), 0o644)
	c.ok("backup", "--repo", repo, "--name", "b", src)
	os.Remove(filepath.Join(src, "data/only-b.bin"))
	c.ok("backup", "--repo", repo, "--name", "c", src)
	s := summary(t, c.ok("forget", "--repo", repo, "--keep-last", "1", "--keep-tag", "pre-upgrade", "--prune", "--json"))
	removed := fmt.Sprint(s["removed"])
	gc, _ := s["gc"].(map[string]any)
	if removed != "[b]" || gc == nil || gc["deleted_objects"].(float64)+gc["deleted_packs"].(float64)+gc["repacked_packs"].(float64) == 0 {
		t.Fatalf("forget --keep-last 1 --keep-tag pre-upgrade --prune: removed %s, gc %v", removed, gc)
	}
	c.ok("verify", "--repo", repo, "--read-data")
	if o := c.run("forget", "--repo", repo, "--keep-within", "3x"); o.code != exitUsage {
		t.Fatalf("--keep-within 3x: exit %d", o.code)
	}
}

// TestTagCommand: tags added and removed after the fact select backups
// and keep them through forget; nothing else in the record changes.
func TestTagCommand(t *testing.T) {
	c := newCLI(t)
	dir := t.TempDir()
	repo, src := filepath.Join(dir, "repo"), filepath.Join(dir, "src")
	makeSource(t, src)
	c.ok("init", "--repo", repo)
	c.ok("backup", "--repo", repo, "--name", "one", "--tag", "nightly", src)
	c.ok("backup", "--repo", repo, "--name", "two", src)
	before := c.ok("show", "--repo", repo, "--json", "one").stdout
	c.ok("tag", "--repo", repo, "--add", "pre-upgrade", "--add", "nightly", "--remove", "nightly", "one")
	var tagged []map[string]any
	json.Unmarshal([]byte(c.ok("list", "--json", "--repo", repo, "--tag", "pre-upgrade").stdout), &tagged)
	if len(tagged) != 1 || tagged[0]["name"] != "one" || fmt.Sprint(tagged[0]["tags"]) != "[pre-upgrade]" {
		t.Fatalf("list --tag pre-upgrade after tagging: %v", tagged)
	}
	var was, is map[string]any
	json.Unmarshal([]byte(before), &was)
	json.Unmarshal([]byte(c.ok("show", "--repo", repo, "--json", "one").stdout), &is)
	if fmt.Sprint(was["root"]) != fmt.Sprint(is["root"]) || fmt.Sprint(was["hashes"]) != fmt.Sprint(is["hashes"]) {
		t.Fatal("tagging changed what the backup holds")
	}
	s := summary(t, c.ok("forget", "--repo", repo, "--json", "--keep-last", "1", "--keep-tag", "pre-upgrade"))
	if fmt.Sprint(s["removed"]) != "[]" {
		t.Fatalf("forget removed %v; the tagged backup and the newest should stay", s["removed"])
	}
	if o := c.run("tag", "--repo", repo, "one"); o.code != exitUsage {
		t.Fatalf("tag without --add or --remove: exit %d", o.code)
	}
	if o := c.run("tag", "--repo", repo, "--add", "bad tag!", "one"); o.code == 0 {
		t.Fatal("an invalid tag was accepted")
	}
}
