package peertest

import (
	"bytes"
	"encoding/binary"
	"net/http"
	"net/http/httptest"
	"strings"
)

// Lying wraps a peer server's handler so that it flips one bit in the
// content of every object it sends, after the server has verified it:
// in the body of GET /v1/objects/ID, and in every available frame of
// POST /v1/objects. Everything else (headers, sizes, digests, other
// paths) passes unchanged, so only a client that hashes what it
// receives can tell. Responses are buffered whole; use it with test-sized
// objects.
func Lying(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, r)
		body := rec.Body.Bytes()
		if rec.Code/100 == 2 && strings.HasPrefix(r.URL.Path, "/v1/objects") {
			if r.Method == http.MethodPost {
				flipFrames(body)
			} else if len(body) > 0 {
				body[len(body)/2] ^= 0x01
			}
		}
		for k, v := range rec.Header() {
			w.Header()[k] = v
		}
		w.WriteHeader(rec.Code)
		w.Write(body)
	})
}

// flipFrames flips a bit in the middle of each available object of a
// frame stream (see the peer package's doc for the format): "DBP1", then
// per object a 32-byte digest, a status byte (0: available) and, when
// available, a big-endian uint64 size and the content.
func flipFrames(b []byte) {
	const magic = "DBP1"
	if !bytes.HasPrefix(b, []byte(magic)) {
		return
	}
	b = b[len(magic):]
	for len(b) >= 33 {
		status := b[32]
		b = b[33:]
		if status != 0 {
			continue
		}
		if len(b) < 8 {
			return
		}
		size := binary.BigEndian.Uint64(b)
		b = b[8:]
		if size > uint64(len(b)) {
			return
		}
		if size > 0 {
			b[size/2] ^= 0x01
		}
		b = b[size:]
	}
}
