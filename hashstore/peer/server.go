package peer

import (
	"bufio"
	"bytes"
	"context"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/deltabackup/deltabackup/snapshot"
)

// ErrUnavailable is what a Provider returns for an object it cannot serve
// (unknown, or its file changed since it was hashed).
var ErrUnavailable = errors.New("object not available")

// Provider is something a Server serves objects from: a repository, or a
// directory whose snapshot says which file holds which content.
type Provider interface {
	// Name describes the provider in health answers ("repository").
	Name() string
	// Has returns, for the hexdigests it can serve, their sizes (-1 when
	// not known without reading).
	Has(ctx context.Context, hexdigests []string) (map[string]int64, error)
	// Open returns the content of hexdigest and its size. The reader must
	// fail, rather than end, if the bytes it gave do not hash to
	// hexdigest. ErrUnavailable when it cannot serve it.
	Open(ctx context.Context, hexdigest string) (io.ReadCloser, int64, error)
	// Count is the number of objects it can serve, for health answers.
	Count() int64
}

// ServerOptions configure a Server.
type ServerOptions struct {
	// Node names this peer in health answers.
	Node string
	// Token, when set, must be presented as "Authorization: Bearer TOKEN".
	Token string
	// PerClient bounds concurrent requests from one client address
	// (default 8); further requests wait.
	PerClient int
	// Throttle limits the bytes per second the server sends, all
	// transfers together (0: no limit); for tests and benchmarks of slow
	// peers and of peers behind a slow network.
	Throttle int64
	// CorruptForTesting, when set, flips a byte of every object served:
	// a peer that answers wrong bytes, for tests of the clients.
	CorruptForTesting bool
	Logger            *slog.Logger
}

// Server answers the protocol from its providers.
type Server struct {
	providers []Provider
	opts      ServerOptions
	logger    *slog.Logger

	pace *pacer // nil: no throttle

	mu      sync.Mutex
	clients map[string]chan struct{}
}

// NewServer serves objects from providers, in order of preference.
func NewServer(opts ServerOptions, providers ...Provider) *Server {
	if opts.PerClient <= 0 {
		opts.PerClient = 8
	}
	logger := opts.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	s := &Server{providers: providers, opts: opts, logger: logger, clients: map[string]chan struct{}{}}
	if opts.Throttle > 0 {
		s.pace = &pacer{rate: float64(opts.Throttle)}
	}
	return s
}

// Handler returns the HTTP handler of the protocol.
func (s *Server) Handler() http.Handler { return http.HandlerFunc(s.serveHTTP) }

func (s *Server) serveHTTP(w http.ResponseWriter, r *http.Request) {
	if s.opts.Token != "" {
		got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if !ok || subtle.ConstantTimeCompare([]byte(got), []byte(s.opts.Token)) != 1 {
			w.Header().Set("WWW-Authenticate", `Bearer realm="deltabackup"`)
			http.Error(w, "unauthorized", http.StatusUnauthorized)
			return
		}
	}
	release, err := s.acquire(r)
	if err != nil {
		return // the client went away while waiting
	}
	defer release()
	switch {
	case r.Method == http.MethodGet && r.URL.Path == "/v1/health":
		s.health(w, r)
	case r.Method == http.MethodPost && r.URL.Path == "/v1/has":
		s.has(w, r)
	case r.Method == http.MethodPost && r.URL.Path == "/v1/objects":
		s.getMany(w, r)
	case r.Method == http.MethodGet && strings.HasPrefix(r.URL.Path, "/v1/objects/"):
		s.get(w, r, strings.TrimPrefix(r.URL.Path, "/v1/objects/"))
	default:
		http.NotFound(w, r)
	}
}

// acquire waits for one of the client's request slots.
func (s *Server) acquire(r *http.Request) (func(), error) {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		host = r.RemoteAddr
	}
	s.mu.Lock()
	sem := s.clients[host]
	if sem == nil {
		sem = make(chan struct{}, s.opts.PerClient)
		s.clients[host] = sem
	}
	s.mu.Unlock()
	select {
	case sem <- struct{}{}:
		return func() { <-sem }, nil
	case <-r.Context().Done():
		return nil, r.Context().Err()
	}
}

func (s *Server) health(w http.ResponseWriter, r *http.Request) {
	h := Health{Status: "ok", Node: s.opts.Node, Serves: []string{}}
	for _, p := range s.providers {
		h.Objects += p.Count()
		h.Serves = append(h.Serves, p.Name())
	}
	writeJSON(w, h)
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(v)
}

func readHexdigests(w http.ResponseWriter, r *http.Request, limit int) ([]string, bool) {
	var req hexdigestsRequest
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxRequestBody))
	if err := dec.Decode(&req); err != nil {
		http.Error(w, "request is not {\"hexdigests\":[...]}", http.StatusBadRequest)
		return nil, false
	}
	if len(req.Hexdigests) > limit {
		http.Error(w, fmt.Sprintf("at most %d hexdigests per request", limit), http.StatusBadRequest)
		return nil, false
	}
	for _, h := range req.Hexdigests {
		if !snapshot.ValidHexdigest(h) {
			http.Error(w, "invalid hexdigest", http.StatusBadRequest)
			return nil, false
		}
	}
	return req.Hexdigests, true
}

func (s *Server) has(w http.ResponseWriter, r *http.Request) {
	hexdigests, ok := readHexdigests(w, r, MaxHasBatch)
	if !ok {
		return
	}
	found := map[string]int64{}
	for _, p := range s.providers {
		sizes, err := p.Has(r.Context(), hexdigests)
		if err != nil {
			s.logger.Warn("lookup failed", "provider", p.Name(), "err", err)
			continue // the other providers may still answer
		}
		for h, size := range sizes {
			if old, seen := found[h]; !seen || old < 0 {
				found[h] = size
			}
		}
	}
	resp := hasResponse{Have: make([]Object, 0, len(found))}
	for _, h := range hexdigests {
		if size, ok := found[h]; ok {
			resp.Have = append(resp.Have, Object{Hexdigest: h, Size: size})
			delete(found, h)
		}
	}
	writeJSON(w, resp)
}

// open finds a provider that serves hexdigest.
func (s *Server) open(ctx context.Context, hexdigest string) (io.ReadCloser, int64, error) {
	for _, p := range s.providers {
		rc, size, err := p.Open(ctx, hexdigest)
		if err == nil {
			return rc, size, nil
		}
		s.logger.Debug("not served", "provider", p.Name(), "object", hexdigest, "err", err)
	}
	return nil, 0, ErrUnavailable
}

func (s *Server) get(w http.ResponseWriter, r *http.Request, hexdigest string) {
	if !snapshot.ValidHexdigest(hexdigest) {
		http.NotFound(w, r)
		return
	}
	rc, size, err := s.open(r.Context(), hexdigest)
	if err != nil {
		http.NotFound(w, r)
		return
	}
	defer rc.Close()
	start, end, partial, ok := parseRange(r.Header.Get("Range"), size)
	if !ok {
		w.Header().Set("Content-Range", fmt.Sprintf("bytes */%d", size))
		http.Error(w, "range not satisfiable", http.StatusRequestedRangeNotSatisfiable)
		return
	}
	h := w.Header()
	h.Set("X-Deltabackup-Hexdigest", hexdigest)
	h.Set("X-Deltabackup-Size", strconv.FormatInt(size, 10))
	h.Set("Accept-Ranges", "bytes")
	h.Set("Content-Type", "application/octet-stream")
	h.Set("Content-Length", strconv.FormatInt(end-start, 10))
	// Reading through the whole content keeps the provider's verification
	// meaningful: the bytes before the range are read and hashed too.
	if start > 0 {
		if _, err := io.CopyN(io.Discard, rc, start); err != nil {
			http.Error(w, "object not available", http.StatusNotFound)
			return
		}
	}
	if partial {
		h.Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", start, end-1, size))
		w.WriteHeader(http.StatusPartialContent)
	} else {
		w.WriteHeader(http.StatusOK)
	}
	body := io.Reader(io.LimitReader(rc, end-start))
	if end == size {
		body = rc // to the end, so the provider's final check runs
	}
	if _, err := io.Copy(s.throttled(r.Context(), w), s.corrupt(body)); err != nil {
		// The bytes sent so far may not be the object's: break the
		// connection so the client sees an incomplete answer.
		if r.Context().Err() != nil {
			// The client hung up: it took the object elsewhere or stopped.
			s.logger.Debug("transfer stopped: client went away", "object", hexdigest, "err", err)
		} else {
			s.logger.Warn("transfer stopped", "object", hexdigest, "err", err)
		}
		panic(http.ErrAbortHandler)
	}
}

// parseRange reads a single "bytes=a-b" range.
func parseRange(header string, size int64) (start, end int64, partial, ok bool) {
	if header == "" {
		return 0, size, false, true
	}
	spec, found := strings.CutPrefix(header, "bytes=")
	if !found || strings.Contains(spec, ",") {
		return 0, 0, false, false
	}
	a, b, _ := strings.Cut(spec, "-")
	var err error
	switch {
	case a == "": // suffix: the last b bytes
		var n int64
		if n, err = strconv.ParseInt(b, 10, 64); err != nil || n <= 0 {
			return 0, 0, false, false
		}
		start, end = max(size-n, 0), size
	default:
		if start, err = strconv.ParseInt(a, 10, 64); err != nil || start < 0 || start >= size {
			return 0, 0, false, false
		}
		end = size
		if b != "" {
			last, err := strconv.ParseInt(b, 10, 64)
			if err != nil || last < start {
				return 0, 0, false, false
			}
			end = min(last+1, size)
		}
	}
	return start, end, true, true
}

func (s *Server) getMany(w http.ResponseWriter, r *http.Request) {
	hexdigests, ok := readHexdigests(w, r, MaxGetBatch)
	if !ok {
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	bw := bufio.NewWriterSize(s.throttled(r.Context(), w), 256<<10)
	bw.WriteString(frameMagic)
	var buf bytes.Buffer
	for _, h := range hexdigests {
		var digest [32]byte
		hex.Decode(digest[:], []byte(h))
		content, ok := s.readSmall(r.Context(), h, &buf)
		if !ok {
			if err := writeFrameHeader(bw, frameHeader{digest: digest}); err != nil {
				return
			}
			continue
		}
		if s.opts.CorruptForTesting && len(content) > 0 {
			content[len(content)/2] ^= 0x01
		}
		if err := writeFrameHeader(bw, frameHeader{digest: digest, available: true, size: int64(len(content))}); err != nil {
			return
		}
		if _, err := bw.Write(content); err != nil {
			return
		}
	}
	bw.Flush()
}

// readSmall reads a whole small object, verified, into buf: in a batch,
// an object is sent only once its every byte is known to be right.
func (s *Server) readSmall(ctx context.Context, hexdigest string, buf *bytes.Buffer) ([]byte, bool) {
	rc, size, err := s.open(ctx, hexdigest)
	if err != nil {
		return nil, false
	}
	defer rc.Close()
	if size > MaxBatchObject {
		return nil, false
	}
	buf.Reset()
	if _, err := buf.ReadFrom(io.LimitReader(rc, MaxBatchObject+1)); err != nil || int64(buf.Len()) != size {
		return nil, false // the provider's reader fails on wrong bytes
	}
	return buf.Bytes(), true
}

func (s *Server) corrupt(r io.Reader) io.Reader {
	if !s.opts.CorruptForTesting {
		return r
	}
	return &flipper{r: r}
}

// flipper flips one bit of the first chunk it passes on.
type flipper struct {
	r    io.Reader
	done bool
}

func (f *flipper) Read(p []byte) (int, error) {
	n, err := f.r.Read(p)
	if n > 0 && !f.done {
		p[n/2] ^= 0x01
		f.done = true
	}
	return n, err
}

func (s *Server) throttled(ctx context.Context, w io.Writer) io.Writer {
	if s.pace == nil {
		return w
	}
	return &throttledWriter{ctx: ctx, w: w, pace: s.pace}
}

// pacer spreads what all transfers of a server send over time, so that
// together they send at most rate bytes per second.
type pacer struct {
	rate float64
	mu   sync.Mutex
	next time.Time // when the bytes reserved so far are due
}

// reserve accounts for n bytes and returns when they may be followed by
// more. Idle time earns no credit.
func (p *pacer) reserve(n int) time.Time {
	p.mu.Lock()
	defer p.mu.Unlock()
	if now := time.Now(); p.next.Before(now) {
		p.next = now
	}
	p.next = p.next.Add(time.Duration(float64(n) / p.rate * float64(time.Second)))
	return p.next
}

type throttledWriter struct {
	ctx  context.Context // a client that leaves stops the wait
	w    io.Writer
	pace *pacer
}

func (t *throttledWriter) Write(p []byte) (int, error) {
	written := 0
	for len(p) > 0 {
		chunk := p[:min(len(p), 32<<10)]
		n, err := t.w.Write(chunk)
		written += n
		if err != nil {
			return written, err
		}
		if f, ok := t.w.(http.Flusher); ok {
			f.Flush()
		}
		wait := time.NewTimer(time.Until(t.pace.reserve(n)))
		select {
		case <-t.ctx.Done():
			wait.Stop()
			return written, t.ctx.Err()
		case <-wait.C:
		}
		p = p[n:]
	}
	return written, nil
}
