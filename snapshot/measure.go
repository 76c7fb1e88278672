package snapshot

import (
	"context"
	"time"
)

// Measurement is what reading a tree once cost.
type Measurement struct {
	Workers int  `json:"workers"`
	Hashed  bool `json:"hashed"`
	// Chunked: files were cut into chunks and each chunk hashed, as a
	// backup into a chunking repository does.
	Chunked  bool          `json:"chunked"`
	Files    int64         `json:"files"`
	Bytes    int64         `json:"bytes"`
	Duration time.Duration `json:"duration_ns"`
}

// BytesPerSecond is the throughput of the measurement.
func (m Measurement) BytesPerSecond() float64 { return float64(m.Bytes) / m.Duration.Seconds() }

// FilesPerSecond is the file rate of the measurement.
func (m Measurement) FilesPerSecond() float64 { return float64(m.Files) / m.Duration.Seconds() }

// Measure walks dir and reads every regular file with the given number of
// workers — the walk and read loop of a backup, without cache, embedding
// or storage — and hashes what it reads when hash is true. With hash
// false it gives the rate at which the same tree can merely be read (from
// the page cache when warm): the limit for hashing.
//
// With chunking set (and hash true), files of at least its threshold are
// cut into chunks and each chunk hashed, in the one pass a backup makes.
func Measure(ctx context.Context, dir string, workers int, hash bool, chunking Chunking) (Measurement, error) {
	opts := DefaultOptions()
	opts.Parallel = workers
	opts.EmbedThreshold = -1
	opts.ChangeRetries = 0
	if hash {
		opts.Chunking = chunking
	}
	s, err := New(dir, opts)
	if err != nil {
		return Measurement{}, err
	}
	s.readOnly = !hash
	start := time.Now()
	res, err := s.Snapshot(ctx)
	if err != nil {
		return Measurement{}, err
	}
	return Measurement{Workers: workers, Hashed: hash, Chunked: opts.Chunking.Enabled(), Files: res.Stats.HashedFiles, Bytes: res.Stats.HashedBytes, Duration: time.Since(start)}, nil
}
