package hashstore_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/deltabackup/deltabackup/hashstore"
)

// nightly returns one backup per day at 02:00 UTC for days days up to
// 2026-11-24 (a Tuesday), plus extra ones on the given days.
func nightly(days int, extra ...string) []hashstore.BackupRecord {
	end := time.Date(2026, 11, 24, 2, 0, 0, 0, time.UTC)
	var recs []hashstore.BackupRecord
	for d := range days {
		t := end.AddDate(0, 0, -d)
		recs = append(recs, hashstore.BackupRecord{Name: t.Format("2006-01-02"), End: t})
	}
	for _, e := range extra {
		t, _ := time.Parse(time.RFC3339, e)
		recs = append(recs, hashstore.BackupRecord{Name: "extra-" + t.Format("0102T1504"), End: t})
	}
	return recs
}

func TestRetentionPolicies(t *testing.T) {
	cases := []struct {
		name   string
		recs   []hashstore.BackupRecord
		policy hashstore.RetentionPolicy
		keep   string // names kept, newest first
	}{
		{"last 3", nightly(10), hashstore.RetentionPolicy{Last: 3}, "2026-11-24 2026-11-23 2026-11-22"},
		{"last more than there are", nightly(2), hashstore.RetentionPolicy{Last: 5}, "2026-11-24 2026-11-23"},
		{"daily 2 keeps the newest of each day", nightly(4, "2026-11-24T01:00:00Z", "2026-11-23T23:00:00Z"),
			hashstore.RetentionPolicy{Daily: 2}, "2026-11-24 extra-1123T2300"},
		{"weekly 3 across ISO weeks", nightly(20), hashstore.RetentionPolicy{Weekly: 3}, "2026-11-24 2026-11-22 2026-11-15"},
		{"monthly 2", nightly(70), hashstore.RetentionPolicy{Monthly: 2}, "2026-11-24 2026-10-31"},
		{"combined", nightly(40), hashstore.RetentionPolicy{Last: 2, Daily: 3, Weekly: 2, Monthly: 2},
			"2026-11-24 2026-11-23 2026-11-22 2026-10-31"},
		{"nothing to keep from", nil, hashstore.RetentionPolicy{Last: 1}, ""},
		{"hourly 2 keeps the newest of each hour", nightly(3, "2026-11-24T02:30:00Z", "2026-11-24T01:10:00Z", "2026-11-24T01:50:00Z"),
			hashstore.RetentionPolicy{Hourly: 2}, "extra-1124T0230 extra-1124T0150"},
		{"yearly 2", nightly(800), hashstore.RetentionPolicy{Yearly: 2}, "2026-11-24 2025-12-31"},
		{"within 3 days of the newest", nightly(10), hashstore.RetentionPolicy{Within: 72 * time.Hour}, "2026-11-24 2026-11-23 2026-11-22 2026-11-21"},
		{"within counts from the newest backup, not from now", nightly(3), hashstore.RetentionPolicy{Within: time.Hour}, "2026-11-24"},
		{"tags", tagged(nightly(5), map[string][]string{"2026-11-22": {"monthly-check"}, "2026-11-20": {"other", "pre-upgrade"}}),
			hashstore.RetentionPolicy{Last: 1, Tags: []string{"pre-upgrade", "monthly-check"}}, "2026-11-24 2026-11-22 2026-11-20"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			c.policy.Location = time.UTC
			var kept []string
			for _, d := range hashstore.ApplyRetention(c.recs, c.policy) {
				if d.Keep {
					kept = append(kept, d.Record.Name)
					if len(d.Reasons) == 0 {
						t.Errorf("%s kept without a reason", d.Record.Name)
					}
				} else if len(d.Reasons) != 0 {
					t.Errorf("%s removed with reasons %v", d.Record.Name, d.Reasons)
				}
			}
			if got := strings.Join(kept, " "); got != c.keep {
				t.Fatalf("kept %q, want %q", got, c.keep)
			}
		})
	}
}

func TestRetentionReasons(t *testing.T) {
	ds := hashstore.ApplyRetention(nightly(3), hashstore.RetentionPolicy{Last: 1, Daily: 2, Monthly: 1, Location: time.UTC})
	got := fmt.Sprint(ds[0].Reasons, ds[1].Reasons, ds[2].Keep)
	if got != "[last 1 daily 2026-11-24 monthly 2026-11] [daily 2026-11-23] false" {
		t.Fatalf("reasons: %s", got)
	}
	if !(hashstore.RetentionPolicy{}).Empty() || (hashstore.RetentionPolicy{Weekly: 1}).Empty() {
		t.Fatal("Empty is wrong")
	}
}

// tagged sets the tags of the named records.
func tagged(recs []hashstore.BackupRecord, tags map[string][]string) []hashstore.BackupRecord {
	for i := range recs {
		recs[i].Tags = tags[recs[i].Name]
	}
	return recs
}
