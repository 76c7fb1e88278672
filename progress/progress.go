package progress

import (
	"encoding/json"
	"math"
	"sync"
	"sync/atomic"
	"time"
)

// Progress counts items and bytes of one operation. All methods are safe for
// concurrent use; counters are atomics so that hot paths (one call per file)
// stay cheap.
type Progress struct {
	handled      atomic.Int64
	failed       atomic.Int64
	total        atomic.Int64
	bytesHandled atomic.Int64
	bytesTotal   atomic.Int64
	final        atomic.Bool
	started      atomic.Int64 // unix nanoseconds of Start, or of the first update

	reportMu sync.Mutex
	report   func(Snapshot)
}

// Snapshot is a consistent-enough copy of the counters, JSON-encodable with
// rohmu's field names plus the byte counters.
type Snapshot struct {
	Handled      int64   `json:"handled"`
	Failed       int64   `json:"failed"`
	Total        int64   `json:"total"`
	Final        bool    `json:"final"`
	BytesHandled int64   `json:"bytes_handled"`
	BytesTotal   int64   `json:"bytes_total"`
	Elapsed      float64 `json:"elapsed_seconds"`
}

// New returns a Progress whose clock starts now.
func New() *Progress {
	p := &Progress{}
	p.started.Store(time.Now().UnixNano())
	return p
}

// SetReporter installs fn, called (serialised) whenever an update is worth
// reporting and once more when Done is called. Pass nil to remove it.
func (p *Progress) SetReporter(fn func(Snapshot)) {
	p.reportMu.Lock()
	p.report = fn
	p.reportMu.Unlock()
}

// Start records the number of items expected and restarts the clock. It is
// the optional first step of an operation, as in rohmu.
func (p *Progress) Start(n int64) {
	p.total.Store(n)
	p.started.Store(time.Now().UnixNano())
}

// AddTotal raises the number of items expected by n.
func (p *Progress) AddTotal(n int64) { p.total.Add(n) }

// AddTotalBytes raises the number of bytes expected by n.
func (p *Progress) AddTotalBytes(n int64) { p.bytesTotal.Add(n) }

// AddBytes records n bytes handled.
func (p *Progress) AddBytes(n int64) { p.bytesHandled.Add(n) }

// AddSuccess records n items handled successfully.
func (p *Progress) AddSuccess(n int64) {
	if n <= 0 {
		return
	}
	newValue := p.handled.Add(n)
	p.maybeReport(newValue+p.failed.Load()-n, newValue+p.failed.Load())
}

// AddFail records n items that failed.
func (p *Progress) AddFail(n int64) {
	if n <= 0 {
		return
	}
	newValue := p.failed.Add(n)
	p.maybeReport(newValue+p.handled.Load()-n, newValue+p.handled.Load())
}

// UploadSuccess records one object stored, of size bytes.
func (p *Progress) UploadSuccess(hexdigest string, size int64) {
	p.AddBytes(size)
	p.AddSuccess(1)
}

// UploadMissing records one object that could not be uploaded because its
// source was gone or had changed.
func (p *Progress) UploadMissing(hexdigest string) { p.AddFail(1) }

// UploadFailure records one object whose upload failed.
func (p *Progress) UploadFailure(hexdigest string) { p.AddFail(1) }

// DownloadSuccess records one object fetched, of size bytes.
func (p *Progress) DownloadSuccess(size int64) {
	p.AddBytes(size)
	p.AddSuccess(1)
}

// DownloadFailure records one object that could not be fetched.
func (p *Progress) DownloadFailure(hexdigest string) { p.AddFail(1) }

// Done marks the operation finished and reports the final state.
func (p *Progress) Done() {
	p.final.Store(true)
	p.reportMu.Lock()
	defer p.reportMu.Unlock()
	if p.report != nil {
		p.report(p.Snapshot())
	}
}

// FinishedSuccessfully reports whether the operation is final, nothing
// failed and every expected item was handled.
func (p *Progress) FinishedSuccessfully() bool {
	s := p.Snapshot()
	return s.Final && s.Failed == 0 && s.Handled == s.Total
}

// FinishedFailed reports whether the operation is final but did not finish
// successfully.
func (p *Progress) FinishedFailed() bool {
	return p.final.Load() && !p.FinishedSuccessfully()
}

// Snapshot returns the current counters.
func (p *Progress) Snapshot() Snapshot {
	return Snapshot{
		Handled:      p.handled.Load(),
		Failed:       p.failed.Load(),
		Total:        p.total.Load(),
		Final:        p.final.Load(),
		BytesHandled: p.bytesHandled.Load(),
		BytesTotal:   p.bytesTotal.Load(),
		Elapsed:      time.Since(time.Unix(0, p.started.Load())).Seconds(),
	}
}

// MarshalJSON encodes the current counters.
func (p *Progress) MarshalJSON() ([]byte, error) { return json.Marshal(p.Snapshot()) }

// Merge returns a new Progress holding the sums of ps; it is final when
// every input is. Its clock starts at the earliest input's start.
func Merge(ps ...*Progress) *Progress {
	m := New()
	final := len(ps) > 0
	for _, p := range ps {
		m.handled.Add(p.handled.Load())
		m.failed.Add(p.failed.Load())
		m.total.Add(p.total.Load())
		m.bytesHandled.Add(p.bytesHandled.Load())
		m.bytesTotal.Add(p.bytesTotal.Load())
		final = final && p.final.Load()
		if s := p.started.Load(); s < m.started.Load() {
			m.started.Store(s)
		}
	}
	m.final.Store(final)
	return m
}

func (p *Progress) maybeReport(oldValue, newValue int64) {
	if !WorthReporting(oldValue, newValue, p.total.Load()) {
		return
	}
	p.reportMu.Lock()
	defer p.reportMu.Unlock()
	if p.report != nil {
		p.report(p.Snapshot())
	}
}

// WorthReporting tells whether a counter moving from oldValue to newValue
// crossed a reporting step: every percent when total is known (positive),
// otherwise each time the value passes a power of 1.1. Small values are
// always worth reporting, so short operations are not silent.
func WorthReporting(oldValue, newValue, total int64) bool {
	if newValue <= oldValue {
		return false
	}
	if total > 0 {
		if newValue >= total || total <= 100 {
			return true
		}
		return oldValue*100/total != newValue*100/total
	}
	if oldValue < 10 {
		return true
	}
	return step(oldValue) != step(newValue)
}

func step(v int64) int { return int(math.Log(float64(v)) / math.Log(1.1)) }
