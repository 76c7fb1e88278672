package progress

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"sync"
	"testing"
)

func TestCountersFollowRohmuSemantics(t *testing.T) {
	p := New()
	p.Start(3)
	p.AddTotal(2)
	p.UploadSuccess("aa", 100)
	p.DownloadSuccess(50)
	p.AddSuccess(3)
	if p.FinishedSuccessfully() || p.FinishedFailed() {
		t.Fatal("not final yet, but reported as finished")
	}
	p.Done()
	if !p.FinishedSuccessfully() || p.FinishedFailed() {
		t.Fatalf("all 5 handled and final: %+v", p.Snapshot())
	}
	q := New()
	q.Start(2)
	q.AddSuccess(1)
	q.UploadFailure("bb")
	q.Done()
	if q.FinishedSuccessfully() || !q.FinishedFailed() {
		t.Fatalf("one failure: %+v", q.Snapshot())
	}
	r := New()
	r.Start(2)
	r.AddSuccess(1)
	r.Done()
	if !r.FinishedFailed() {
		t.Fatal("final with fewer handled than total must count as failed")
	}
	s := p.Snapshot()
	if s.Handled != 5 || s.Total != 5 || s.BytesHandled != 150 || s.Failed != 0 || !s.Final {
		t.Fatalf("snapshot %+v", s)
	}
}

func TestJSONFieldNames(t *testing.T) {
	p := New()
	p.Start(4)
	p.AddSuccess(1)
	p.UploadMissing("cc")
	p.AddTotalBytes(10)
	data, err := json.Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	json.Unmarshal(data, &m)
	for k, want := range map[string]any{"handled": 1.0, "failed": 1.0, "total": 4.0, "final": false, "bytes_total": 10.0} {
		if m[k] != want {
			t.Errorf("%s = %v, want %v (JSON %s)", k, m[k], want, data)
		}
	}
}

func TestMerge(t *testing.T) {
	a, b := New(), New()
	a.Start(2)
	a.AddSuccess(2)
	a.Done()
	b.Start(3)
	b.AddSuccess(1)
	b.AddFail(1)
	m := Merge(a, b)
	if s := m.Snapshot(); s.Handled != 3 || s.Failed != 1 || s.Total != 5 || s.Final {
		t.Fatalf("merge of a final and an unfinished progress: %+v", s)
	}
	b.AddSuccess(1)
	b.Done()
	if !Merge(a, b).Snapshot().Final {
		t.Fatal("merge of final progresses is not final")
	}
}

func TestWorthReporting(t *testing.T) {
	cases := []struct {
		old, new, total int64
		want            bool
	}{
		{0, 1, 0, true},
		{5, 6, 0, true},
		{1000, 1001, 0, false},
		{1000, 1100, 0, true},
		{10, 10, 0, false},
		{500, 501, 1000, false},
		{509, 510, 1000, true},
		{999, 1000, 1000, true},
		{3, 4, 50, true},
	}
	for _, c := range cases {
		if got := WorthReporting(c.old, c.new, c.total); got != c.want {
			t.Errorf("WorthReporting(%d, %d, %d) = %v, want %v", c.old, c.new, c.total, got, c.want)
		}
	}
}

func countReports(total, n int64) int {
	p := New()
	if total > 0 {
		p.Start(total)
	}
	reports := 0
	p.SetReporter(func(Snapshot) { reports++ })
	for range n {
		p.AddSuccess(1)
	}
	return reports
}

func TestReportingIsSparse(t *testing.T) {
	if got := countReports(100000, 100000); got < 100 || got > 110 {
		t.Errorf("with a known total of 100000, %d reports; want about one per percent", got)
	}
	if got := countReports(0, 1000000); got < 100 || got > 200 {
		t.Errorf("with an unknown total of 1e6 items, %d reports; want about log_1.1(1e6) = 145", got)
	}
}

func TestConcurrentUpdates(t *testing.T) {
	p := New()
	p.Start(8000)
	var reports int
	p.SetReporter(func(Snapshot) { reports++ }) // serialised by Progress: no race
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 1000 {
				p.AddSuccess(1)
				p.AddBytes(3)
			}
		}()
	}
	wg.Wait()
	if s := p.Snapshot(); s.Handled != 8000 || s.BytesHandled != 24000 {
		t.Fatalf("lost updates: %+v", s)
	}
	if reports == 0 {
		t.Fatal("no reports")
	}
}

func TestJSONReporterLines(t *testing.T) {
	var buf bytes.Buffer
	p := New()
	p.SetReporter(JSONReporter(&buf, "upload"))
	p.Start(3)
	p.AddTotalBytes(30)
	for range 3 {
		p.UploadSuccess("x", 10)
	}
	p.Done()
	sc := bufio.NewScanner(&buf)
	var last StatusLine
	lines := 0
	for sc.Scan() {
		if err := json.Unmarshal(sc.Bytes(), &last); err != nil {
			t.Fatalf("line %q: %v", sc.Text(), err)
		}
		lines++
	}
	if lines != 4 || last.MessageType != "status" || last.Phase != "upload" || !last.Final || last.BytesHandled != 30 {
		t.Fatalf("%d lines, last %+v", lines, last)
	}
}

func TestBarDrawsAndStops(t *testing.T) {
	var buf bytes.Buffer
	hash, up := New(), New()
	bar := NewBar(context.Background(), &buf, Phase{"hash", hash}, Phase{"upload", up})
	hash.AddTotal(2)
	hash.AddTotalBytes(2048)
	hash.AddBytes(2048)
	hash.AddSuccess(2)
	hash.Done()
	up.Start(1)
	up.AddTotalBytes(1 << 20)
	up.UploadSuccess("x", 1<<20)
	up.Done()
	bar.Stop()
	bar.Stop()
	out := buf.String()
	if !strings.Contains(out, "upload") || !strings.Contains(out, "1.0 MiB") {
		t.Fatalf("bar output %q does not show the last phase", out)
	}
}
