package peer

import (
	"bufio"
	"bytes"
	"context"
	"crypto/subtle"
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

	"golang.org/x/time/rate"

	"github.com/deltabackup/deltabackup/hashstore"
	"github.com/deltabackup/deltabackup/snapshot/digest"
)

// Provider is something a Server serves objects from: a repository, or a
// directory whose snapshot says which file holds which content.
type Provider interface {
	// Name describes the provider in health answers ("repository").
	Name() string
	// Has returns, for the ids it can serve, their sizes (-1 when
	// not known without reading).
	Has(ctx context.Context, ids []digest.Digest) (map[digest.Digest]int64, error)
	// Open returns the content of id and its size. The reader must
	// fail, rather than end, if the bytes it gave do not hash to
	// id. Any error means it cannot serve id (unknown, or its file
	// changed since it was hashed); the server tries the next provider.
	Open(ctx context.Context, id digest.Digest) (io.ReadCloser, int64, error)
	// Count is the number of objects it can serve, for health answers.
	Count() int64
}

// ServerOptions configure a Server.
type ServerOptions struct {
	// Node names this peer in health answers.
	Node string
	// Token must be presented as "Authorization: Bearer TOKEN" with every
	// request. Without one, NoAuth must say that no token is wanted (for
	// tests): whoever can reach the server could otherwise read, and test
	// for the presence of, any content it serves.
	Token  string
	NoAuth bool
	// PerClient bounds concurrent requests from one client address
	// (default 8); further requests wait.
	PerClient int
	// HasRate and HasBurst bound, per client address, how many ids
	// /v1/has answers per second and at once (default 1,000,000 per
	// second, 2,000,000 at once): enough for any restore, while a token
	// holder testing guesses of a file's content is slowed down.
	HasRate, HasBurst int
	// SpoolDir holds verified copies of objects too large to be served
	// from memory (default the system's temporary directory), at most
	// SpoolBytes of them kept for later requests (default 1 GiB).
	SpoolDir   string
	SpoolBytes int64
	// Throttle limits the bytes per second the server sends, all
	// transfers together (0: no limit); for tests and benchmarks of slow
	// peers and of peers behind a slow network.
	Throttle int64
	Logger   *slog.Logger
}

// Server answers the protocol from its providers.
type Server struct {
	providers []Provider
	opts      ServerOptions
	logger    *slog.Logger

	pace  *pacer // nil: no throttle
	spool *spool

	mu      sync.Mutex
	clients map[string]*client
}

// client is what the server keeps per client address.
type client struct {
	slots    chan struct{} // PerClient request slots
	failures *rate.Limiter // failed authentications
	has      *rate.Limiter // ids asked about
}

// ErrNoToken is NewServer's answer to options with neither a token nor
// NoAuth.
var ErrNoToken = errors.New("a peer server needs a token (or NoAuth, for tests)")

// NewServer serves objects from providers, in order of preference.
func NewServer(opts ServerOptions, providers ...Provider) (*Server, error) {
	if opts.Token == "" && !opts.NoAuth {
		return nil, ErrNoToken
	}
	if opts.PerClient <= 0 {
		opts.PerClient = 8
	}
	if opts.HasRate <= 0 {
		opts.HasRate = 1_000_000
	}
	if opts.HasBurst <= 0 {
		opts.HasBurst = 2_000_000
	}
	if opts.SpoolBytes <= 0 {
		opts.SpoolBytes = 1 << 30
	}
	logger := opts.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	s := &Server{providers: providers, opts: opts, logger: logger, clients: map[string]*client{},
		spool: newSpool(opts.SpoolDir, opts.SpoolBytes)}
	if opts.Throttle > 0 {
		s.pace = &pacer{rate: float64(opts.Throttle)}
	}
	return s, nil
}

// Close releases the verified copies the server keeps.
func (s *Server) Close() { s.spool.close() }

// Handler returns the HTTP handler of the protocol.
func (s *Server) Handler() http.Handler { return http.HandlerFunc(s.serveHTTP) }

// Failed authentications are limited per client address: a few in a row,
// then one every authRetry; past that the answer is 429 at once.
const (
	authBurst = 10
	authRetry = 6 * time.Second
)

func (s *Server) serveHTTP(w http.ResponseWriter, r *http.Request) {
	c := s.client(r)
	if !s.opts.NoAuth {
		got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if !ok || subtle.ConstantTimeCompare([]byte(got), []byte(s.opts.Token)) != 1 {
			// The connection of a refused request is closed: an
			// unauthenticated client holds nothing open.
			w.Header().Set("Connection", "close")
			if !c.failures.Allow() {
				http.Error(w, "too many failed attempts", http.StatusTooManyRequests)
				return
			}
			w.Header().Set("WWW-Authenticate", `Bearer realm="deltabackup"`)
			http.Error(w, "unauthorized", http.StatusUnauthorized)
			return
		}
	}
	release, err := s.acquire(r, c)
	if err != nil {
		return // the client went away while waiting
	}
	defer release()
	switch {
	case r.Method == http.MethodGet && r.URL.Path == "/v1/health":
		s.health(w, r)
	case r.Method == http.MethodPost && r.URL.Path == "/v1/has":
		s.has(w, r, c)
	case r.Method == http.MethodPost && r.URL.Path == "/v1/objects":
		s.getMany(w, r)
	case r.Method == http.MethodGet && strings.HasPrefix(r.URL.Path, "/v1/objects/"):
		// Parsed once here; anything but a hexdigest is just not there.
		id, err := digest.Parse(strings.TrimPrefix(r.URL.Path, "/v1/objects/"))
		if err != nil {
			http.NotFound(w, r)
			return
		}
		s.get(w, r, id)
	default:
		http.NotFound(w, r)
	}
}

// maxClients bounds the per-address state kept; past it, the state of
// idle addresses is dropped.
const maxClients = 10000

// client returns the state of the request's client address.
func (s *Server) client(r *http.Request) *client {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		host = r.RemoteAddr
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.clients[host]
	if c == nil {
		if len(s.clients) >= maxClients {
			for h, old := range s.clients {
				if len(old.slots) == 0 {
					delete(s.clients, h)
				}
			}
		}
		c = &client{slots: make(chan struct{}, s.opts.PerClient),
			failures: rate.NewLimiter(rate.Every(authRetry), authBurst),
			has:      rate.NewLimiter(rate.Limit(s.opts.HasRate), s.opts.HasBurst)}
		s.clients[host] = c
	}
	return c
}

// acquire waits for one of the client's request slots.
func (s *Server) acquire(r *http.Request, c *client) (func(), error) {
	select {
	case c.slots <- struct{}{}:
		return func() { <-c.slots }, nil
	case <-r.Context().Done():
		return nil, r.Context().Err()
	}
}

// health answers with the node's name and how many objects it serves;
// never with paths or repository locations.
func (s *Server) health(w http.ResponseWriter, r *http.Request) {
	h := Health{Status: "ok", Node: s.opts.Node, Serves: []string{}}
	for _, p := range s.providers {
		h.Objects += p.Count()
		kind, _, _ := strings.Cut(p.Name(), " ")
		h.Serves = append(h.Serves, kind)
	}
	writeJSON(w, h)
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(v)
}

func readHexdigests(w http.ResponseWriter, r *http.Request, limit int) ([]digest.Digest, bool) {
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
		if h.IsZero() { // "" decodes to no id
			http.Error(w, "invalid hexdigest", http.StatusBadRequest)
			return nil, false
		}
	}
	return req.Hexdigests, true
}

func (s *Server) has(w http.ResponseWriter, r *http.Request, c *client) {
	ids, ok := readHexdigests(w, r, MaxHasBatch)
	if !ok {
		return
	}
	if len(ids) > s.opts.HasBurst {
		http.Error(w, fmt.Sprintf("at most %d hexdigests at once", s.opts.HasBurst), http.StatusTooManyRequests)
		return
	}
	if err := c.has.WaitN(r.Context(), len(ids)); err != nil {
		return // the client went away while held back
	}
	found := map[digest.Digest]int64{}
	for _, p := range s.providers {
		sizes, err := p.Has(r.Context(), ids)
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
	for _, h := range ids {
		if size, ok := found[h]; ok {
			resp.Have = append(resp.Have, Object{ID: h, Size: size})
			delete(found, h)
		}
	}
	writeJSON(w, resp)
}

// open finds a provider that serves id.
func (s *Server) open(ctx context.Context, id digest.Digest) (io.ReadCloser, int64, error) {
	for _, p := range s.providers {
		rc, size, err := p.Open(ctx, id)
		if err == nil {
			return rc, size, nil
		}
		s.logger.Debug("not served", "provider", p.Name(), "object", id, "err", err)
	}
	return nil, 0, fmt.Errorf("object %s: %w", id, hashstore.ErrNotFound)
}

func (s *Server) get(w http.ResponseWriter, r *http.Request, id digest.Digest) {
	v, release, err := s.verified(r.Context(), id)
	if err != nil {
		http.NotFound(w, r)
		return
	}
	defer release()
	size := v.size
	start, end, partial, ok := parseRange(r.Header.Get("Range"), size)
	if !ok {
		w.Header().Set("Content-Range", fmt.Sprintf("bytes */%d", size))
		http.Error(w, "range not satisfiable", http.StatusRequestedRangeNotSatisfiable)
		return
	}
	h := w.Header()
	h.Set("X-Deltabackup-Hexdigest", id.String())
	h.Set("X-Deltabackup-Size", strconv.FormatInt(size, 10))
	h.Set("Accept-Ranges", "bytes")
	h.Set("Content-Type", "application/octet-stream")
	h.Set("Content-Length", strconv.FormatInt(end-start, 10))
	if partial {
		h.Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", start, end-1, size))
		w.WriteHeader(http.StatusPartialContent)
	} else {
		w.WriteHeader(http.StatusOK)
	}
	if _, err := io.Copy(s.throttled(r.Context(), w), v.reader(start, end-start)); err != nil {
		// The client hung up: it took the object elsewhere or stopped.
		s.logger.Debug("transfer stopped", "object", id, "err", err)
		panic(http.ErrAbortHandler)
	}
}

// verified returns the object id with every byte checked: from
// memory when small, else from a verified spool copy.
func (s *Server) verified(ctx context.Context, id digest.Digest) (*verified, func(), error) {
	if sf, release := s.spool.peek(id); sf != nil {
		return &verified{size: sf.size, file: sf}, release, nil
	}
	rc, size, err := s.open(ctx, id)
	if err != nil {
		return nil, nil, err
	}
	if size <= memoryObjectMax {
		defer rc.Close()
		data, err := io.ReadAll(io.LimitReader(rc, size+1))
		if err != nil || int64(len(data)) != size {
			// The provider's reader fails on wrong bytes.
			return nil, nil, fmt.Errorf("object %s: %d of %d bytes read: %w", id, len(data), size, hashstore.ErrNotFound)
		}
		return &verified{size: size, data: data}, func() {}, nil
	}
	first := true
	sf, release, err := s.spool.get(ctx, id, func() (io.ReadCloser, int64, error) {
		if first {
			first = false
			return rc, size, nil
		}
		return s.open(ctx, id)
	})
	if first {
		rc.Close() // a copy was there already
	}
	if err != nil {
		return nil, nil, err
	}
	return &verified{size: sf.size, file: sf}, release, nil
}

// parseRange reads a single "bytes=a-b" range: digits only, last clamped
// to the object before anything is added to it.
func parseRange(header string, size int64) (start, end int64, partial, ok bool) {
	if header == "" {
		return 0, size, false, true
	}
	spec, found := strings.CutPrefix(header, "bytes=")
	if !found || strings.Contains(spec, ",") {
		return 0, 0, false, false
	}
	a, b, _ := strings.Cut(spec, "-")
	number := func(s string) (int64, bool) {
		if s == "" || len(s) > 19 || strings.TrimLeft(s, "0123456789") != "" {
			return 0, false
		}
		n, err := strconv.ParseInt(s, 10, 64)
		return n, err == nil
	}
	switch {
	case a == "": // suffix: the last b bytes
		n, ok := number(b)
		if !ok || n <= 0 || size == 0 {
			return 0, 0, false, false
		}
		start, end = max(size-n, 0), size
	default:
		var ok bool
		if start, ok = number(a); !ok || start >= size {
			return 0, 0, false, false
		}
		end = size
		if b != "" {
			last, ok := number(b)
			if !ok || last < start {
				return 0, 0, false, false
			}
			if last < size-1 {
				end = last + 1
			}
		}
	}
	return start, end, true, true
}

func (s *Server) getMany(w http.ResponseWriter, r *http.Request) {
	ids, ok := readHexdigests(w, r, MaxGetBatch)
	if !ok {
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	bw := bufio.NewWriterSize(s.throttled(r.Context(), w), 256<<10)
	bw.WriteString(frameMagic)
	var buf bytes.Buffer
	for _, h := range ids {
		content, ok := s.readSmall(r.Context(), h, &buf)
		if !ok {
			if err := writeFrameHeader(bw, frameHeader{id: h}); err != nil {
				return
			}
			continue
		}
		if err := writeFrameHeader(bw, frameHeader{id: h, available: true, size: int64(len(content))}); err != nil {
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
func (s *Server) readSmall(ctx context.Context, id digest.Digest, buf *bytes.Buffer) ([]byte, bool) {
	rc, size, err := s.open(ctx, id)
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
