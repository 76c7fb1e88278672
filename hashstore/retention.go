package hashstore

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"time"
)

// RetentionPolicy says which backups to keep, as restic's forget does:
// the Last newest; the newest of each of the Hourly, Daily, Weekly (ISO
// weeks), Monthly and Yearly most recent hours, days, weeks, months and
// years that have backups; every backup that ended within Within of the
// newest one (so a node that stopped backing up keeps its last ones);
// and every backup carrying one of Tags. Hours, days, weeks, months and
// years are those of Location (local time when nil).
type RetentionPolicy struct {
	Last, Hourly, Daily, Weekly, Monthly, Yearly int
	Within                                       time.Duration
	Tags                                         []string
	Location                                     *time.Location
}

// Empty reports whether the policy keeps nothing, which forget refuses.
func (p RetentionPolicy) Empty() bool {
	return p.Last <= 0 && p.Hourly <= 0 && p.Daily <= 0 && p.Weekly <= 0 && p.Monthly <= 0 && p.Yearly <= 0 &&
		p.Within <= 0 && len(p.Tags) == 0
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
		{"hourly", p.Hourly, func(t time.Time) string { return t.Format("2006-01-02T15") }},
		{"daily", p.Daily, func(t time.Time) string { return t.Format("2006-01-02") }},
		{"weekly", p.Weekly, func(t time.Time) string { y, w := t.ISOWeek(); return fmt.Sprintf("%04d-W%02d", y, w) }},
		{"monthly", p.Monthly, func(t time.Time) string { return t.Format("2006-01") }},
		{"yearly", p.Yearly, func(t time.Time) string { return t.Format("2006") }},
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
	if p.Within > 0 && len(decisions) > 0 {
		since := decisions[0].Record.End.Add(-p.Within)
		for i := range decisions {
			if !decisions[i].Record.End.Before(since) {
				keep(i, "within "+p.Within.String())
			}
		}
	}
	for i := range decisions {
		for _, tag := range p.Tags {
			if slices.Contains(decisions[i].Record.Tags, tag) {
				keep(i, "tag "+tag)
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
	if err := s.checkDeletable(ctx, "backup "+name, backupKey(name)); err != nil {
		return err
	}
	if err := s.backend.Delete(ctx, backupKey(name)); err != nil {
		return fmt.Errorf("delete backup %s: %w", name, err)
	}
	return nil
}

// ForgetOptions say which backups Forget removes.
type ForgetOptions struct {
	// Policy decides, per node and source, what is kept (required: an
	// empty policy is refused).
	Policy RetentionPolicy
	// Filter limits forgetting to the backups of a node or source.
	Filter BackupFilter
	// DryRun decides and reports, and removes nothing.
	DryRun bool
}

// ForgetGroup is the decisions for the backups of one node and source.
type ForgetGroup struct {
	Node      string              `json:"node"`
	Source    string              `json:"source"`
	Decisions []RetentionDecision `json:"decisions"`
}

// ForgetReport is what Forget decided and did.
type ForgetReport struct {
	DryRun  bool          `json:"dry_run"`
	Groups  []ForgetGroup `json:"groups"`
	Removed []string      `json:"removed"`
	// Retained are backups the policy would remove that are under object
	// lock: kept until their retention ends (a later forget removes them).
	Retained []string `json:"retained,omitempty"`
}

// ErrEmptyPolicy is Forget's answer to a policy that keeps nothing.
var ErrEmptyPolicy = errors.New("a retention policy must keep something")

// Forget applies opts.Policy to the backups of each node and source on
// its own and removes the records of the backups it does not keep. Their
// objects stay until gc.
func (s *Store) Forget(ctx context.Context, opts ForgetOptions) (*ForgetReport, error) {
	if opts.Policy.Empty() {
		return nil, ErrEmptyPolicy
	}
	records, err := s.Backups(ctx)
	if err != nil {
		return nil, err
	}
	groups := map[string][]BackupRecord{}
	var order []string
	for _, r := range records {
		if !opts.Filter.Match(r) {
			continue
		}
		k := RetentionGroup(r)
		if groups[k] == nil {
			order = append(order, k)
		}
		groups[k] = append(groups[k], r)
	}
	sort.Strings(order)
	rep := &ForgetReport{DryRun: opts.DryRun, Groups: []ForgetGroup{}, Removed: []string{}}
	for _, k := range order {
		first := groups[k][0]
		g := ForgetGroup{Node: first.Node, Source: first.Source, Decisions: ApplyRetention(groups[k], opts.Policy)}
		rep.Groups = append(rep.Groups, g)
		for _, d := range g.Decisions {
			if d.Keep {
				continue
			}
			if !opts.DryRun {
				err := s.DeleteBackup(ctx, d.Record.Name)
				if errors.Is(err, ErrRetained) {
					s.logger.Info("backup kept: under object lock", "backup", d.Record.Name, "err", err)
					rep.Retained = append(rep.Retained, d.Record.Name)
					continue
				}
				if err != nil {
					return rep, err
				}
			}
			rep.Removed = append(rep.Removed, d.Record.Name)
		}
	}
	return rep, nil
}
