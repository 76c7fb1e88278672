package hashstore

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
)

// ChunkingConfig is how a repository cuts files with much data into
// content-defined chunks (README "Chunking"). It is part of the config,
// so every node of a repository cuts the same data at the same places
// and equal data deduplicates across nodes.
type ChunkingConfig struct {
	// Algorithm names the chunker (snapshot.ChunkerFastCDC).
	Algorithm string `json:"algorithm"`
	MinSize   int    `json:"min_size"`
	AvgSize   int    `json:"avg_size"`
	MaxSize   int    `json:"max_size"`
	// Threshold: files with at least this many data bytes are chunked.
	Threshold int64 `json:"threshold"`
	// Seed keys the gear table of an unencrypted repository (hex, 32
	// bytes). An encrypted repository derives that key from its master
	// key and stores none, so cut points reveal nothing about the data.
	Seed string `json:"seed,omitempty"`
}

// DefaultChunking is what Init gives a repository unless told otherwise:
// FastCDC with chunks of 128 KiB on average (64 KiB to 1 MiB), for files
// of 1 MiB and more (README "Chunking" has the reasons).
func DefaultChunking() ChunkingConfig {
	return ChunkingConfig{Algorithm: "fastcdc-v1.0.0", MinSize: 64 << 10, AvgSize: 128 << 10, MaxSize: 1 << 20, Threshold: 1 << 20}
}

// ChunkingForAverage returns the default chunking with chunks of avg
// bytes on average (a power of two), from avg/2 to 8*avg.
func ChunkingForAverage(avg int) ChunkingConfig {
	c := DefaultChunking()
	c.MinSize, c.AvgSize, c.MaxSize = avg/2, avg, 8*avg
	c.Threshold = max(c.Threshold, int64(c.MaxSize))
	return c
}

// Chunking returns the repository's chunking and the key of its gear
// table; a zero ChunkingConfig means files are stored whole.
func (s *Store) Chunking() (ChunkingConfig, []byte, error) {
	c := s.config.Chunking
	if c == nil || c.Algorithm == "" {
		return ChunkingConfig{}, nil, nil
	}
	if s.seal != nil {
		if c.Seed != "" {
			return ChunkingConfig{}, nil, fmt.Errorf("config of an encrypted repository carries a chunker seed: %w", ErrConfigAltered)
		}
		k := s.master.ChunkerKey()
		return *c, k[:], nil
	}
	key, err := hex.DecodeString(c.Seed)
	if err != nil || len(key) != 32 {
		return ChunkingConfig{}, nil, errors.New("config: the chunker seed is not 32 bytes of hex")
	}
	return *c, key, nil
}

// newChunkingConfig completes c for a new repository: an unencrypted one
// gets a random seed.
func newChunkingConfig(c ChunkingConfig, encrypted bool) (*ChunkingConfig, error) {
	if c.Algorithm == "" {
		return nil, nil
	}
	c.Seed = ""
	if !encrypted {
		seed := make([]byte, 32)
		if _, err := rand.Read(seed); err != nil {
			return nil, err
		}
		c.Seed = hex.EncodeToString(seed)
	}
	return &c, nil
}
