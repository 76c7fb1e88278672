package main

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// backupMetrics is what --metrics-file records of a backup run, in the
// Prometheus text format for node_exporter's textfile collector.
type backupMetrics struct {
	success  bool
	duration time.Duration
	summary  *backupSummary // nil when the backup failed before it had one
}

// writeBackupMetrics replaces the metrics file atomically. Counters and
// the last success time are carried over from the file it replaces, so a
// failed run keeps the time of the last good one.
func (g *globals) writeBackupMetrics(m backupMetrics) {
	if g.metricsFile == "" {
		return
	}
	prev := readMetricValues(g.metricsFile)
	now := float64(time.Now().UnixNano()) / 1e9
	failures := prev["deltabackup_backup_failures_total"]
	lastSuccess := prev["deltabackup_backup_last_success_timestamp_seconds"]
	success := 0
	if m.success {
		success, lastSuccess = 1, now
	} else {
		failures++
	}
	var b strings.Builder
	metric := func(name, kind, help string, v float64) {
		fmt.Fprintf(&b, "# HELP %s %s\n# TYPE %s %s\n%s %s\n", name, help, name, kind, name, strconv.FormatFloat(v, 'g', -1, 64))
	}
	metric("deltabackup_backup_success", "gauge", "Whether the last backup run succeeded (1) or failed (0).", float64(success))
	metric("deltabackup_backup_duration_seconds", "gauge", "Wall time of the last backup run.", m.duration.Seconds())
	metric("deltabackup_backup_last_run_timestamp_seconds", "gauge", "When the last backup run ended.", now)
	metric("deltabackup_backup_last_success_timestamp_seconds", "gauge", "When the last successful backup ended.", lastSuccess)
	metric("deltabackup_backup_failures_total", "counter", "Backup runs that failed.", failures)
	if s := m.summary; s != nil {
		metric("deltabackup_backup_files", "gauge", "Files in the last backup.", float64(s.Files))
		metric("deltabackup_backup_bytes", "gauge", "Bytes of the files in the last backup.", float64(s.TotalBytes))
		metric("deltabackup_backup_hashed_bytes", "gauge", "Bytes read and hashed by the last backup.", float64(s.HashedBytes))
		metric("deltabackup_backup_uploaded_objects", "gauge", "Objects the last backup stored.", float64(s.UploadedObjects))
		metric("deltabackup_backup_uploaded_bytes", "gauge", "Bytes the last backup stored.", float64(s.UploadedBytes))
		metric("deltabackup_backup_unreadable_files", "gauge", "Files the last backup could not read or that kept changing.", float64(len(s.Unreadable)+len(s.Changed)))
	}
	tmp, err := os.CreateTemp(filepath.Dir(g.metricsFile), ".deltabackup-metrics-*")
	if err == nil {
		_, err = tmp.WriteString(b.String())
		if cerr := tmp.Close(); err == nil {
			err = cerr
		}
		if err == nil {
			_ = os.Chmod(tmp.Name(), 0o644)
			err = os.Rename(tmp.Name(), g.metricsFile)
		}
		if err != nil {
			os.Remove(tmp.Name())
		}
	}
	if err != nil {
		g.logger.Warn("metrics file not written", "path", g.metricsFile, "err", err)
	}
}

// readMetricValues reads the unlabelled samples of a metrics file this
// program wrote; anything else is ignored.
func readMetricValues(path string) map[string]float64 {
	out := map[string]float64{}
	f, err := os.Open(path)
	if err != nil {
		return out
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		name, value, ok := strings.Cut(sc.Text(), " ")
		if !ok || strings.HasPrefix(name, "#") {
			continue
		}
		if v, err := strconv.ParseFloat(value, 64); err == nil {
			out[name] = v
		}
	}
	return out
}
