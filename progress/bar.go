package progress

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/vbauerster/mpb/v8"
	"github.com/vbauerster/mpb/v8/decor"
)

// Phase is one stage of a command (hash, upload, restore) with its own
// counters.
type Phase struct {
	Name     string
	Progress *Progress
}

// Bar draws the first unfinished of several phases as a terminal bar with
// bytes, bytes/s, files/s and ETA. It only reads the counters.
type Bar struct {
	container *mpb.Progress
	bar       *mpb.Bar
	phases    []Phase
	stop      chan struct{}
	stopped   sync.WaitGroup
	stopOnce  sync.Once
}

// NewBar starts drawing phases on w, normally a terminal.
func NewBar(ctx context.Context, w io.Writer, phases ...Phase) *Bar {
	b := &Bar{phases: phases, stop: make(chan struct{})}
	b.container = mpb.NewWithContext(ctx,
		mpb.WithOutput(w),
		mpb.WithWidth(100),
		mpb.WithRefreshRate(150*time.Millisecond),
		mpb.WithAutoRefresh(),
	)
	text := func(fn func(name string, s Snapshot) string) decor.Decorator {
		return decor.Any(func(decor.Statistics) string {
			name, s := b.current()
			return fn(name, s)
		}, decor.WCSyncSpaceR)
	}
	b.bar = b.container.New(0, mpb.BarStyle(),
		mpb.PrependDecorators(
			text(func(name string, _ Snapshot) string { return name }),
			text(func(_ string, s Snapshot) string {
				return fmt.Sprintf("%s / %s", FormatBytes(s.BytesHandled), FormatBytes(s.BytesTotal))
			}),
		),
		mpb.AppendDecorators(
			text(func(_ string, s Snapshot) string {
				l := NewStatusLine("", s)
				return fmt.Sprintf("%s/s %.0f files/s %d/%d files", FormatBytes(int64(l.BytesPerSecond)), l.FilesPerSecond, s.Handled+s.Failed, s.Total)
			}),
			text(func(_ string, s Snapshot) string {
				if s.Final {
					return "done"
				}
				l := NewStatusLine("", s)
				if l.SecondsRemaining <= 0 {
					return "ETA -"
				}
				return "ETA " + (time.Duration(l.SecondsRemaining) * time.Second).String()
			}),
		),
	)
	b.stopped.Add(1)
	go b.follow()
	return b
}

// current returns the first phase that is not final, or the last one.
func (b *Bar) current() (string, Snapshot) {
	for _, p := range b.phases {
		if s := p.Progress.Snapshot(); !s.Final {
			return p.Name, s
		}
	}
	last := b.phases[len(b.phases)-1]
	return last.Name, last.Progress.Snapshot()
}

func (b *Bar) follow() {
	defer b.stopped.Done()
	ticker := time.NewTicker(100 * time.Millisecond)
	defer ticker.Stop()
	for {
		_, s := b.current()
		b.bar.SetTotal(max(s.BytesTotal, s.BytesHandled, 1), false)
		b.bar.SetCurrent(s.BytesHandled)
		select {
		case <-b.stop:
			return
		case <-ticker.C:
		}
	}
}

// Stop draws the final state and releases the terminal. It may be called
// more than once.
func (b *Bar) Stop() {
	b.stopOnce.Do(func() {
		close(b.stop)
		b.stopped.Wait()
		_, s := b.current()
		b.bar.SetTotal(max(s.BytesTotal, s.BytesHandled, 1), false)
		b.bar.SetCurrent(s.BytesHandled)
		b.bar.SetTotal(-1, true)
		b.container.Wait()
	})
}

// FormatBytes prints a byte count for people, in binary units.
func FormatBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

// StatusLine is one JSON progress line, as printed with --json.
type StatusLine struct {
	MessageType string `json:"message_type"`
	Phase       string `json:"phase"`
	Snapshot
	BytesPerSecond   float64 `json:"bytes_per_second"`
	FilesPerSecond   float64 `json:"files_per_second"`
	SecondsRemaining float64 `json:"seconds_remaining,omitempty"`
}

// NewStatusLine computes rates and the ETA of s.
func NewStatusLine(phase string, s Snapshot) StatusLine {
	line := StatusLine{MessageType: "status", Phase: phase, Snapshot: s}
	if s.Elapsed > 0 {
		line.BytesPerSecond = float64(s.BytesHandled) / s.Elapsed
		line.FilesPerSecond = float64(s.Handled+s.Failed) / s.Elapsed
	}
	if line.BytesPerSecond > 0 && s.BytesTotal > s.BytesHandled && !s.Final {
		line.SecondsRemaining = float64(s.BytesTotal-s.BytesHandled) / line.BytesPerSecond
	}
	return line
}

// JSONReporter returns a reporter for SetReporter that writes one
// StatusLine per report to w. Progress serialises the calls.
func JSONReporter(w io.Writer, phase string) func(Snapshot) {
	enc := json.NewEncoder(w)
	return func(s Snapshot) {
		// A progress line that cannot be written must not fail the work.
		_ = enc.Encode(NewStatusLine(phase, s))
	}
}
