package peer

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/deltabackup/deltabackup/snapshot/digest"
)

// Limits of the protocol, enforced by both sides.
const (
	MaxHasBatch    = 100000
	MaxGetBatch    = 1000
	MaxBatchObject = 1 << 20
	frameMagic     = "DBP1"
	// maxRequestBody bounds a JSON request: 100,000 quoted hexdigests.
	maxRequestBody = MaxHasBatch*68 + 1024
)

// Frame statuses.
const (
	frameContent     = 0
	frameUnavailable = 1
)

// Object is an id and its size, as /v1/has answers.
type Object struct {
	ID   digest.Digest `json:"hexdigest"`
	Size int64         `json:"size"`
}

// Health is what /v1/health answers.
type Health struct {
	Status  string   `json:"status"`
	Node    string   `json:"node,omitempty"`
	Objects int64    `json:"objects"`
	Serves  []string `json:"serves"`
}

type hexdigestsRequest struct {
	Hexdigests []digest.Digest `json:"hexdigests"`
}

type hasResponse struct {
	Have []Object `json:"have"`
}

// ErrProtocol marks a response that breaks the protocol.
var ErrProtocol = errors.New("peer protocol violation")

// frameHeader is the fixed part of a frame.
type frameHeader struct {
	id        digest.Digest
	available bool
	size      int64
}

func writeFrameHeader(w io.Writer, h frameHeader) error {
	var b [41]byte
	copy(b[:32], h.id[:])
	n := 33
	if h.available {
		b[32] = frameContent
		binary.BigEndian.PutUint64(b[33:], uint64(h.size))
		n = 41
	} else {
		b[32] = frameUnavailable
	}
	_, err := w.Write(b[:n])
	return err
}

// readFrameHeader reads the fixed part of the next frame, checking it
// against what was asked for: the digest in request order and a size
// within the batch limit. The content is for the caller to read.
func readFrameHeader(r *bufio.Reader, want digest.Digest) (frameHeader, error) {
	var h frameHeader
	if _, err := io.ReadFull(r, h.id[:]); err != nil {
		return h, fmt.Errorf("%w: frame for %s: %v", ErrProtocol, want, err)
	}
	if got := h.id; got != want {
		return h, fmt.Errorf("%w: frame for %s arrived where %s was asked for", ErrProtocol, got, want)
	}
	status, err := r.ReadByte()
	if err != nil {
		return h, fmt.Errorf("%w: frame for %s: %v", ErrProtocol, want, err)
	}
	switch status {
	case frameUnavailable:
		return h, nil
	case frameContent:
	default:
		return h, fmt.Errorf("%w: frame for %s has status %d", ErrProtocol, want, status)
	}
	var size [8]byte
	if _, err := io.ReadFull(r, size[:]); err != nil {
		return h, fmt.Errorf("%w: frame for %s: %v", ErrProtocol, want, err)
	}
	n := binary.BigEndian.Uint64(size[:])
	if n > MaxBatchObject {
		return h, fmt.Errorf("%w: frame for %s claims %d bytes, more than %d", ErrProtocol, want, n, MaxBatchObject)
	}
	h.available, h.size = true, int64(n)
	return h, nil
}

func readMagic(r *bufio.Reader) error {
	var m [4]byte
	if _, err := io.ReadFull(r, m[:]); err != nil || string(m[:]) != frameMagic {
		return fmt.Errorf("%w: not a frame stream", ErrProtocol)
	}
	return nil
}
