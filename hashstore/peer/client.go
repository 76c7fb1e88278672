package peer

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/time/rate"

	"github.com/deltabackup/deltabackup/hashstore"
	"github.com/deltabackup/deltabackup/snapshot/digest"
)

// ClientOptions configure a Client.
type ClientOptions struct {
	// Token is sent as a bearer token.
	Token string
	// CABundle is a PEM file of extra certificate authorities for https.
	CABundle string
	// ConnectTimeout bounds dialing; IdleTimeout how long a response may
	// stall before the request fails (a peer that hangs is given up).
	ConnectTimeout time.Duration
	IdleTimeout    time.Duration
	// DownloadLimit, when set, bounds the bytes per second received
	// (hashstore.NewLimiter; shared by every client of a restore).
	DownloadLimit *rate.Limiter
}

// ErrUnauthorized is a peer refusing the token (or its absence).
var ErrUnauthorized = errors.New("wrong or missing token")

// ErrRedirect is a peer answering with a redirect, which clients refuse.
var ErrRedirect = errors.New("peer answered with a redirect, which is refused")

// Client fetches objects from one peer. It implements the restore
// package's Source and BatchSource.
type Client struct {
	base  *url.URL
	http  *http.Client
	token string
	idle  time.Duration
}

// NewClient returns a client of the peer at rawURL (http://host:port or
// https://host:port).
func NewClient(rawURL string, opts ClientOptions) (*Client, error) {
	u, err := url.Parse(rawURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("peer %q: want http://host:port or https://host:port", rawURL)
	}
	if u.User != nil {
		return nil, errors.New("peer URLs take no credentials (give the token as ClientOptions.Token)")
	}
	u.Path, u.RawQuery = "", ""
	if opts.ConnectTimeout <= 0 {
		opts.ConnectTimeout = 10 * time.Second
	}
	if opts.IdleTimeout <= 0 {
		opts.IdleTimeout = 30 * time.Second
	}
	transport := http.DefaultTransport.(*http.Transport).Clone()
	transport.DialContext = (&net.Dialer{Timeout: opts.ConnectTimeout, KeepAlive: 30 * time.Second}).DialContext
	transport.MaxIdleConnsPerHost = 32
	transport.ResponseHeaderTimeout = opts.IdleTimeout
	if opts.CABundle != "" {
		pem, err := os.ReadFile(opts.CABundle)
		if err != nil {
			return nil, fmt.Errorf("peer CA bundle: %w", err)
		}
		pool, err := x509.SystemCertPool()
		if err != nil {
			pool = x509.NewCertPool()
		}
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("peer CA bundle %s holds no certificate", opts.CABundle)
		}
		transport.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	}
	// Redirects are refused: the token is for this peer only, and Go would
	// send it along to another port of the same host.
	noRedirects := func(*http.Request, []*http.Request) error { return ErrRedirect }
	var rt http.RoundTripper = transport
	if opts.DownloadLimit != nil {
		rt = limitedTransport{base: transport, l: opts.DownloadLimit}
	}
	return &Client{base: u, http: &http.Client{Transport: rt, CheckRedirect: noRedirects}, token: opts.Token, idle: opts.IdleTimeout}, nil
}

// String names the peer.
func (c *Client) String() string { return "peer " + c.base.String() }

func (c *Client) request(ctx context.Context, method, path string, body any) (*http.Response, error) {
	var rd io.Reader
	if body != nil {
		data, err := json.Marshal(body)
		if err != nil {
			return nil, err
		}
		rd = bytes.NewReader(data)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base.String()+path, rd)
	if err != nil {
		return nil, err
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", c, err)
	}
	switch resp.StatusCode {
	case http.StatusOK, http.StatusPartialContent:
		return resp, nil
	case http.StatusNotFound:
		resp.Body.Close()
		return nil, fmt.Errorf("%s: %s: %w", c, path, hashstore.ErrNotFound)
	case http.StatusUnauthorized:
		resp.Body.Close()
		return nil, hashstore.Permanent(fmt.Errorf("%s: refused the request: %w", c, ErrUnauthorized))
	}
	msg, _ := io.ReadAll(io.LimitReader(resp.Body, 200))
	resp.Body.Close()
	return nil, fmt.Errorf("%s: %s: HTTP %d %s", c, path, resp.StatusCode, strings.TrimSpace(string(msg)))
}

// Health asks the peer how it is.
func (c *Client) Health(ctx context.Context) (Health, error) {
	resp, err := c.request(ctx, http.MethodGet, "/v1/health", nil)
	if err != nil {
		return Health{}, err
	}
	defer resp.Body.Close()
	var h Health
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<16)).Decode(&h); err != nil {
		return Health{}, fmt.Errorf("%s: health: %w: %w", c, ErrProtocol, err)
	}
	return h, nil
}

// Missing returns which of ids the peer does not hold, asking in
// batches.
func (c *Client) Missing(ctx context.Context, ids []digest.Digest) ([]digest.Digest, error) {
	have := make(map[digest.Digest]bool, len(ids))
	for start := 0; start < len(ids); start += MaxHasBatch {
		batch := ids[start:min(start+MaxHasBatch, len(ids))]
		resp, err := c.request(ctx, http.MethodPost, "/v1/has", hexdigestsRequest{Hexdigests: batch})
		if err != nil {
			return nil, err
		}
		var answer hasResponse
		err = json.NewDecoder(io.LimitReader(resp.Body, int64(len(batch))*128+1024)).Decode(&answer)
		resp.Body.Close()
		if err != nil {
			return nil, fmt.Errorf("%s: has: %w: %w", c, ErrProtocol, err)
		}
		for _, o := range answer.Have {
			have[o.ID] = true
		}
	}
	var missing []digest.Digest
	for _, h := range ids {
		if !have[h] {
			missing = append(missing, h)
		}
	}
	return missing, nil
}

// Get fetches one object; the reader fails at its end unless every byte
// hashed to id.
func (c *Client) Get(ctx context.Context, id digest.Digest) (io.ReadCloser, error) {
	return c.GetRange(ctx, id, 0, -1)
}

// GetRange fetches length bytes of an object from offset (length < 0: to
// the end). Only whole objects can be verified here; callers verify
// ranges once they have them all.
func (c *Client) GetRange(ctx context.Context, id digest.Digest, offset, length int64) (io.ReadCloser, error) {
	if id.IsZero() {
		return nil, errors.New("get from a peer: no id")
	}
	path := "/v1/objects/" + id.String()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.base.String()+path, nil)
	if err != nil {
		return nil, err
	}
	whole := offset == 0 && length < 0
	if !whole {
		rng := fmt.Sprintf("bytes=%d-", offset)
		if length >= 0 {
			rng += strconv.FormatInt(offset+length-1, 10)
		}
		req.Header.Set("Range", rng)
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", c, err)
	}
	switch {
	case resp.StatusCode == http.StatusNotFound:
		resp.Body.Close()
		return nil, fmt.Errorf("%s: object %s: %w", c, id, hashstore.ErrNotFound)
	case resp.StatusCode == http.StatusUnauthorized:
		resp.Body.Close()
		return nil, hashstore.Permanent(fmt.Errorf("%s: refused the request: %w", c, ErrUnauthorized))
	case resp.StatusCode == http.StatusRequestedRangeNotSatisfiable:
		resp.Body.Close()
		return nil, fmt.Errorf("%s: object %s: %w", c, id, hashstore.ErrInvalidRange)
	case resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusPartialContent:
		resp.Body.Close()
		return nil, fmt.Errorf("%s: object %s: HTTP %d", c, id, resp.StatusCode)
	}
	if got := resp.Header.Get("X-Deltabackup-Hexdigest"); got != id.String() {
		resp.Body.Close()
		return nil, fmt.Errorf("%s: %w: answered %q for object %s", c, ErrProtocol, got, id)
	}
	size, err := strconv.ParseInt(resp.Header.Get("X-Deltabackup-Size"), 10, 64)
	if err != nil || size < 0 {
		resp.Body.Close()
		return nil, fmt.Errorf("%s: %w: object %s without a size", c, ErrProtocol, id)
	}
	if resp.StatusCode == http.StatusPartialContent {
		// The bytes must start where they were asked to, or they would be
		// verified (and rejected) only at the end.
		var first int64
		if _, err := fmt.Sscanf(resp.Header.Get("Content-Range"), "bytes %d-", &first); err != nil || first != offset {
			resp.Body.Close()
			return nil, fmt.Errorf("%s: %w: object %s: range %q does not start at %d", c, ErrProtocol, id, resp.Header.Get("Content-Range"), offset)
		}
	} else if offset > 0 {
		resp.Body.Close()
		return nil, fmt.Errorf("%s: %w: object %s: whole object sent for a range", c, ErrProtocol, id)
	}
	body := &idleReader{rc: resp.Body, idle: c.idle}
	if whole {
		rb := &resumingBody{c: c, ctx: ctx, id: id, size: size, body: body}
		return readCloser{hashstore.VerifyReader(rb, id, size), rb}, nil
	}
	return body, nil
}

// maxResumes is how often one object's transfer is resumed after its
// connection broke.
const maxResumes = 2

// resumingBody reads a whole object and, when the connection breaks
// before its end, asks for the rest with a Range request from the byte it
// reached: a large object is not sent twice because of one reset. A peer
// that stalls is not asked again; restore fetches the object elsewhere.
type resumingBody struct {
	c       *Client
	ctx     context.Context
	id      digest.Digest
	size    int64
	offset  int64
	body    io.ReadCloser
	resumes int
}

func (b *resumingBody) Read(p []byte) (int, error) {
	n, err := b.body.Read(p)
	b.offset += int64(n)
	if err == nil || err == io.EOF && b.offset >= b.size {
		return n, err
	}
	if err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	if errors.Is(err, errIdle) || b.ctx.Err() != nil || b.resumes >= maxResumes {
		return n, err
	}
	b.resumes++
	b.body.Close()
	rest, rerr := b.c.GetRange(b.ctx, b.id, b.offset, -1)
	if rerr != nil {
		b.body = io.NopCloser(errorReader{fmt.Errorf("%w; resuming at byte %d: %w", err, b.offset, rerr)})
	} else {
		b.body = rest
	}
	if n > 0 {
		return n, nil
	}
	return b.Read(p)
}

func (b *resumingBody) Close() error { return b.body.Close() }

type errorReader struct{ err error }

func (e errorReader) Read([]byte) (int, error) { return 0, e.err }

// errIdle marks a read given up because the peer sent nothing.
var errIdle = errors.New("peer sent nothing")

type readCloser struct {
	io.Reader
	io.Closer
}

// Verifies tells restore that the content is checked already (when it is).
func (r readCloser) Verifies() (digest.Digest, int64) {
	if v, ok := r.Reader.(hashstore.Verifying); ok {
		return v.Verifies()
	}
	return digest.Digest{}, -1
}

// idleReader fails a read that waits longer than idle: a peer that stops
// sending mid-body is given up, and the object fetched elsewhere.
type idleReader struct {
	rc   io.ReadCloser
	idle time.Duration
}

func (r *idleReader) Read(p []byte) (int, error) {
	timer := time.AfterFunc(r.idle, func() { r.rc.Close() })
	n, err := r.rc.Read(p)
	if !timer.Stop() && err != nil {
		err = fmt.Errorf("%w for %s: %w", errIdle, r.idle, err)
	}
	return n, err
}

func (r *idleReader) Close() error { return r.rc.Close() }

// GetMany fetches small objects (at most 1 MiB each) with one request per
// 1,000. fn gets each object's content, or the error that kept it.
func (c *Client) GetMany(ctx context.Context, ids []digest.Digest, fn func(id digest.Digest, r io.Reader, err error) error) error {
	for start := 0; start < len(ids); start += MaxGetBatch {
		batch := ids[start:min(start+MaxGetBatch, len(ids))]
		if err := c.getBatch(ctx, batch, fn); err != nil {
			return err
		}
	}
	return nil
}

func (c *Client) getBatch(ctx context.Context, batch []digest.Digest, fn func(digest.Digest, io.Reader, error) error) error {
	resp, err := c.request(ctx, http.MethodPost, "/v1/objects", hexdigestsRequest{Hexdigests: batch})
	if err != nil {
		for _, h := range batch {
			if ferr := fn(h, nil, err); ferr != nil {
				return ferr
			}
		}
		return nil
	}
	defer resp.Body.Close()
	return DecodeFrames(bufio.NewReaderSize(&idleReader{rc: resp.Body, idle: c.idle}, 64<<10), batch, func(h digest.Digest, r io.Reader, err error) error {
		if err != nil {
			err = fmt.Errorf("%s: %w", c, err)
		}
		return fn(h, r, err)
	})
}

// DecodeFrames reads a frame stream answering a request for ids
// and hands each object to fn, verified: content that does not hash to its
// digest reaches fn as an error. When the stream breaks, the remaining
// objects get the error.
func DecodeFrames(r *bufio.Reader, ids []digest.Digest, fn func(id digest.Digest, r io.Reader, err error) error) error {
	fail := func(from int, err error) error {
		for _, h := range ids[from:] {
			if ferr := fn(h, nil, err); ferr != nil {
				return ferr
			}
		}
		return nil
	}
	if err := readMagic(r); err != nil {
		return fail(0, err)
	}
	for i, h := range ids {
		hdr, err := readFrameHeader(r, h)
		if err != nil {
			return fail(i, err)
		}
		if !hdr.available {
			if err := fn(h, nil, fmt.Errorf("object %s: %w", h, hashstore.ErrNotFound)); err != nil {
				return err
			}
			continue
		}
		body := io.LimitReader(r, hdr.size)
		verified := hashstore.VerifyReader(body, h, hdr.size)
		if err := fn(h, verified, nil); err != nil {
			return err
		}
		// Whatever fn left unread is skipped, so the next frame lines up.
		if _, err := io.Copy(io.Discard, body); err != nil {
			return fail(i+1, fmt.Errorf("%w: %w", ErrProtocol, err))
		}
	}
	return nil
}

// StoreProvider serves the objects of a repository.
type StoreProvider struct {
	Store *hashstore.Store
	// ReloadAfter: when an object asked for is missing, the repository's
	// pack index is read again if it is older than this (default a
	// minute), since backups and gc change the repository while a server
	// runs.
	ReloadAfter time.Duration
}

func (p StoreProvider) reload() bool {
	after := p.ReloadAfter
	if after <= 0 {
		after = time.Minute
	}
	return p.Store.ReloadObjects(after)
}

// Name implements Provider.
func (p StoreProvider) Name() string { return "repository " + p.Store.String() }

// Has implements Provider; sizes are not known without reading. What the
// repository holds is read again at most once per ReloadAfter, whatever
// the clients ask: lookups of unknown objects cost no listing each.
func (p StoreProvider) Has(ctx context.Context, ids []digest.Digest) (map[digest.Digest]int64, error) {
	p.reload()
	out := map[digest.Digest]int64{}
	if _, err := p.lookup(ctx, ids, out); err != nil {
		return nil, err
	}
	return out, nil
}

// lookup adds the ids the store holds to found (size unknown: -1)
// and returns the others.
func (p StoreProvider) lookup(ctx context.Context, ids []digest.Digest, found map[digest.Digest]int64) ([]digest.Digest, error) {
	infos, err := p.Store.LookupAll(ctx, ids)
	if err != nil {
		return nil, err
	}
	var missing []digest.Digest
	for i, info := range infos {
		if info.Found {
			found[ids[i]] = -1
		} else {
			missing = append(missing, ids[i])
		}
	}
	return missing, nil
}

// Open implements Provider: the store verifies what it reads.
func (p StoreProvider) Open(ctx context.Context, id digest.Digest) (io.ReadCloser, int64, error) {
	o, err := p.Store.Get(ctx, id)
	if errors.Is(err, hashstore.ErrNotFound) && p.reload() {
		o, err = p.Store.Get(ctx, id)
	}
	if err != nil {
		return nil, 0, err
	}
	return o, o.Size(), nil
}

// Count implements Provider (not known without listing: 0).
func (p StoreProvider) Count() int64 { return 0 }

// limitedTransport makes response bodies wait for a limiter.
type limitedTransport struct {
	base http.RoundTripper
	l    *rate.Limiter
}

func (t limitedTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := t.base.RoundTrip(req)
	if err == nil {
		resp.Body = hashstore.LimitReadCloser(req.Context(), resp.Body, t.l)
	}
	return resp, err
}
