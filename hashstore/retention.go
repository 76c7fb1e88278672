package hashstore

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"time"
)

// RetentionPolicy says which backups to keep, as restic's forget does:
// the Last newest, and the newest of each of the Daily, Weekly (ISO weeks)
// and Monthly most recent days, weeks and months that have backups. Days,
// weeks and months are those of Location (local time when nil).
type RetentionPolicy struct {
	Last, Daily, Weekly, Monthly int
	Location                     *time.Location
}

// Empty reports whether the policy keeps nothing, which forget refuses.
func (p RetentionPolicy) Empty() bool {
	return p.Last <= 0 && p.Daily <= 0 && p.Weekly <= 0 && p.Monthly <= 0
}

// RetentionDecision is the fate of one backup under a policy.
type RetentionDecision struct {
	Record  BackupRecord `json:"record"`
	Keep    bool         `json:"keep"`
	Reasons []string     `json:"reasons"` // why it is kept: "last 1", "daily 2026-11-24", ...
}

// ApplyRetention decides, for records of one group (one node and source),
// which to keep. Decisions come newest first.
func ApplyRetention(records []BackupRecord, p RetentionPolicy) []RetentionDecision {
	loc := p.Location
	if loc == nil {
		loc = time.Local
	}
	sorted := append([]BackupRecord(nil), records...)
	sort.SliceStable(sorted, func(i, j int) bool {
		if !sorted[i].End.Equal(sorted[j].End) {
			return sorted[i].End.After(sorted[j].End)
		}
		return sorted[i].Name > sorted[j].Name
	})
	decisions := make([]RetentionDecision, len(sorted))
	for i, r := range sorted {
		decisions[i] = RetentionDecision{Record: r, Reasons: []string{}}
	}
	keep := func(i int, reason string) {
		decisions[i].Keep = true
		decisions[i].Reasons = append(decisions[i].Reasons, reason)
	}
	for i := 0; i < len(decisions) && i < p.Last; i++ {
		keep(i, fmt.Sprintf("last %d", i+1))
	}
	buckets := []struct {
		name string
		n    int
		key  func(time.Time) string
	}{
		{"daily", p.Daily, func(t time.Time) string { return t.Format("2006-01-02") }},
		{"weekly", p.Weekly, func(t time.Time) string { y, w := t.ISOWeek(); return fmt.Sprintf("%04d-W%02d", y, w) }},
		{"monthly", p.Monthly, func(t time.Time) string { return t.Format("2006-01") }},
	}
	for _, b := range buckets {
		seen := map[string]bool{}
		for i := range decisions {
			if len(seen) >= b.n {
				break
			}
			k := b.key(decisions[i].Record.End.In(loc))
			if !seen[k] {
				seen[k] = true
				keep(i, b.name+" "+k)
			}
		}
	}
	return decisions
}

// RetentionGroup is the node and source a backup belongs to: policies
// apply to each group on its own.
func RetentionGroup(r BackupRecord) string { return r.Node + "\x00" + r.Source }

// DeleteBackup removes the record of a backup. Its objects stay until gc.
func (s *Store) DeleteBackup(ctx context.Context, name string) error {
	if err := ValidateBackupName(name); err != nil {
		return err
	}
	if _, err := s.backend.Stat(ctx, backupKey(name)); err != nil {
		if errors.Is(err, ErrNotFound) {
			return fmt.Errorf("backup %q: %w", name, ErrNotFound)
		}
		return err
	}
	if err := s.backend.Delete(ctx, backupKey(name)); err != nil {
		return fmt.Errorf("delete backup %s: %w", name, err)
	}
	return nil
}
