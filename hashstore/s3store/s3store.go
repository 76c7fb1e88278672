package s3store

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
	"github.com/aws/smithy-go"
	smithyhttp "github.com/aws/smithy-go/transport/http"
	"golang.org/x/sync/errgroup"

	"github.com/deltabackup/deltabackup/hashstore"
)

// Errors for conditions a user fixes differently. They wrap
// hashstore.PermanentError, so retries give up at once.
var (
	// ErrBucketMissing: the bucket does not exist.
	ErrBucketMissing = errors.New("bucket does not exist")
	// ErrAccessDenied: the credentials are rejected or lack permission.
	ErrAccessDenied = errors.New("access denied")
	// ErrWrongRegion: the bucket lives in another region than the
	// client's.
	ErrWrongRegion = errors.New("bucket is in another region")
)

// Config describes where and how to store.
type Config struct {
	Bucket string
	// Prefix is prepended to every key ("" or ending in "/").
	Prefix string
	// Endpoint is the server's URL; empty means AWS, or the standard
	// AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL environment variables.
	Endpoint string
	// Region; empty takes it from the AWS configuration, else us-east-1.
	Region string
	// Profile selects a shared-config profile (AWS_PROFILE works too).
	Profile string
	// PathStyle forces path-style ("endpoint/bucket/key") or, when false,
	// virtual-hosted addressing. Nil: path-style for custom endpoints,
	// virtual-hosted for AWS.
	PathStyle *bool
	// InsecureSkipVerify disables TLS certificate checks (test setups only).
	InsecureSkipVerify bool
	// CABundle is a PEM file of extra trusted certificate authorities.
	CABundle string
	// ConnectTimeout bounds dialing; ReadTimeout bounds how long a
	// response may stall (the SDK has none for S3 by default).
	ConnectTimeout time.Duration
	ReadTimeout    time.Duration
	// PartSize is the multipart part size, also the largest object sent
	// with one PUT; UploadConcurrency the parts in flight per upload.
	PartSize          int64
	UploadConcurrency int
	// StorageClass for new objects (STANDARD, STANDARD_IA, ...); empty is
	// the bucket's default.
	StorageClass string
	// CreateBucket creates a missing bucket when the backend opens (with
	// Object Lock enabled when ObjectLock is set).
	CreateBucket bool
	// ObjectLock, when set, puts every key written but locks and gc
	// markers under S3 Object Lock for this long: until then no one, with
	// any credentials, can delete or overwrite it (in compliance mode;
	// governance mode lets users with s3:BypassGovernanceRetention). The
	// bucket must have Object Lock enabled.
	ObjectLock time.Duration
	// ObjectLockMode is "compliance" (default) or "governance".
	ObjectLockMode string
}

// Defaults for Config fields left zero.
const (
	DefaultPartSize          = 8 << 20
	DefaultUploadConcurrency = 4
	DefaultConnectTimeout    = 10 * time.Second
	DefaultReadTimeout       = 60 * time.Second
	minPartSize              = 5 << 20 // S3's minimum for all parts but the last
)

// Backend stores objects in one bucket under a prefix.
type Backend struct {
	client   *s3.Client
	cfg      Config
	endpoint string
	counts   *requestCounts
	// parts bounds part buffers in flight across all uploads, so memory
	// stays at about PartSize x (UploadConcurrency+1) however many objects
	// are uploaded at once.
	parts chan struct{}
	pool  sync.Pool
	conns *connections
	// lockMu guards cfg.ObjectLock*, which the repository's config may
	// set after Open.
	lockMu sync.Mutex
}

var _ hashstore.Backend = (*Backend)(nil)

// requestCounts counts S3 requests by operation, retries included.
type requestCounts struct{ hashstore.RequestCounts }

func (c *requestCounts) BeforeTransmit(ctx context.Context, in *smithyhttp.InterceptorContext) error {
	c.Add(strings.TrimSuffix(strings.TrimPrefix(fmt.Sprintf("%T", in.Input), "*s3."), "Input"))
	return nil
}

// Requests returns the number of S3 requests sent so far, by operation
// (PutObject, UploadPart, HeadObject, ListObjectsV2, ...).
func (b *Backend) Requests() map[string]int64 { return b.counts.Snapshot() }

// String names the backend without credentials.
func (b *Backend) String() string {
	s := "s3://" + b.cfg.Bucket + "/" + strings.TrimSuffix(b.cfg.Prefix, "/")
	if b.endpoint != "" {
		s += " at " + b.endpoint
	}
	return strings.TrimSuffix(s, "/")
}

// Open connects to the bucket in cfg and checks it exists and is reachable
// with the credentials at hand (creating it if cfg.CreateBucket).
func Open(ctx context.Context, cfg Config) (*Backend, error) {
	if cfg.Bucket == "" {
		return nil, errors.New("s3: no bucket given")
	}
	if cfg.Prefix != "" && !strings.HasSuffix(cfg.Prefix, "/") {
		cfg.Prefix += "/"
	}
	if cfg.PartSize == 0 {
		cfg.PartSize = DefaultPartSize
	}
	var err error
	if cfg.ObjectLockMode, err = objectLockMode(cfg.ObjectLockMode); err != nil {
		return nil, err
	}
	if cfg.PartSize < minPartSize {
		return nil, fmt.Errorf("s3: part size %d is below S3's minimum of 5 MiB", cfg.PartSize)
	}
	if cfg.UploadConcurrency <= 0 {
		cfg.UploadConcurrency = DefaultUploadConcurrency
	}
	if cfg.ConnectTimeout <= 0 {
		cfg.ConnectTimeout = DefaultConnectTimeout
	}
	if cfg.ReadTimeout <= 0 {
		cfg.ReadTimeout = DefaultReadTimeout
	}
	endpoint := cfg.Endpoint
	if endpoint == "" {
		endpoint = os.Getenv("AWS_ENDPOINT_URL_S3")
	}
	if endpoint == "" {
		endpoint = os.Getenv("AWS_ENDPOINT_URL")
	}
	if err := checkEndpoint(endpoint); err != nil {
		return nil, err
	}
	pathStyle := endpoint != ""
	if cfg.PathStyle != nil {
		pathStyle = *cfg.PathStyle
	}

	conns := &connections{}
	httpClient := awshttp.NewBuildableClient().
		WithDialerOptions(func(d *net.Dialer) { d.Timeout = cfg.ConnectTimeout }).
		WithTransportOptions(func(t *http.Transport) {
			t.DialContext = conns.wrap(t.DialContext)
			t.MaxIdleConnsPerHost = 64
			if cfg.InsecureSkipVerify {
				if t.TLSClientConfig == nil {
					t.TLSClientConfig = &tls.Config{}
				}
				t.TLSClientConfig.InsecureSkipVerify = true
			}
		}).
		WithReadTimeout(cfg.ReadTimeout)
	opts := []func(*config.LoadOptions) error{
		config.WithHTTPClient(httpClient),
		// Requests (and each part) are retried by the SDK, with backoff;
		// whole operations by hashstore.WithRetry on top.
		config.WithRetryMaxAttempts(5),
	}
	if cfg.Region != "" {
		opts = append(opts, config.WithRegion(cfg.Region))
	}
	if cfg.Profile != "" {
		opts = append(opts, config.WithSharedConfigProfile(cfg.Profile))
	}
	if cfg.CABundle != "" {
		pem, err := os.ReadFile(cfg.CABundle)
		if err != nil {
			return nil, fmt.Errorf("s3: CA bundle: %w", err)
		}
		opts = append(opts, config.WithCustomCABundle(bytes.NewReader(pem)))
	}
	awsCfg, err := config.LoadDefaultConfig(ctx, opts...)
	if err != nil {
		return nil, fmt.Errorf("s3: load AWS configuration: %w", err)
	}
	if awsCfg.Region == "" {
		awsCfg.Region = "us-east-1"
	}
	counts := &requestCounts{}
	client := s3.NewFromConfig(awsCfg, func(o *s3.Options) {
		if endpoint != "" {
			o.BaseEndpoint = aws.String(endpoint)
		}
		o.UsePathStyle = pathStyle
		// Checksums only where S3 requires them: every byte is verified
		// by BLAKE3 anyway, some servers refuse multipart completions that
		// carry per-part CRCs, and ranged GETs have no whole-object CRC.
		o.RequestChecksumCalculation = aws.RequestChecksumCalculationWhenRequired
		o.ResponseChecksumValidation = aws.ResponseChecksumValidationWhenRequired
		o.DisableLogOutputChecksumValidationSkipped = true
		o.Interceptors.AddBeforeTransmit(counts)
	})
	b := &Backend{client: client, cfg: cfg, endpoint: endpoint, counts: counts,
		parts: make(chan struct{}, cfg.UploadConcurrency+1), conns: conns}
	b.pool.New = func() any { buf := make([]byte, cfg.PartSize); return &buf }
	if err := b.checkBucket(ctx); err != nil {
		b.Close()
		return nil, err
	}
	return b, nil
}

// Close ends the connections the backend holds open between requests;
// the backend must not be used afterwards.
func (b *Backend) Close() error {
	b.conns.closeAll()
	return nil
}

// checkBucket tells a missing bucket from refused credentials.
func (b *Backend) checkBucket(ctx context.Context) error {
	_, err := b.client.HeadBucket(ctx, &s3.HeadBucketInput{Bucket: aws.String(b.cfg.Bucket)})
	if err == nil {
		return nil
	}
	if statusCode(err) == http.StatusNotFound || isCode(err, "NoSuchBucket", "NotFound") {
		if !b.cfg.CreateBucket {
			return hashstore.Permanent(fmt.Errorf("s3 bucket %q: %w", b.cfg.Bucket, ErrBucketMissing))
		}
		in := &s3.CreateBucketInput{Bucket: aws.String(b.cfg.Bucket)}
		if b.cfg.ObjectLock > 0 {
			in.ObjectLockEnabledForBucket = aws.Bool(true)
		}
		if region := b.client.Options().Region; region != "" && region != "us-east-1" {
			in.CreateBucketConfiguration = &types.CreateBucketConfiguration{LocationConstraint: types.BucketLocationConstraint(region)}
		}
		if _, err := b.client.CreateBucket(ctx, in); err != nil && !isCode(err, "BucketAlreadyOwnedByYou") {
			return b.mapErr("create bucket", b.cfg.Bucket, err)
		}
		return nil
	}
	if statusCode(err) == http.StatusForbidden {
		// HEAD answers carry no body, so "wrong credentials" and "no
		// permission" look alike; a one-key listing says which it is.
		_, lerr := b.client.ListObjectsV2(ctx, &s3.ListObjectsV2Input{Bucket: aws.String(b.cfg.Bucket), MaxKeys: aws.Int32(1)})
		if lerr != nil {
			return b.mapErr("open bucket", b.cfg.Bucket, lerr)
		}
	}
	return b.mapErr("open bucket", b.cfg.Bucket, err)
}

func (b *Backend) key(k string) string { return b.cfg.Prefix + k }

// ErrEndpointCredentials is an endpoint URL with a user name or password
// in it: credentials come from the AWS configuration, and a URL is
// printed in messages.
var ErrEndpointCredentials = errors.New("the S3 endpoint URL holds credentials")

// checkEndpoint refuses an endpoint URL that is not one, or that holds
// credentials; the message never repeats them.
func checkEndpoint(endpoint string) error {
	if endpoint == "" {
		return nil
	}
	u, err := url.Parse(endpoint)
	if err != nil {
		return fmt.Errorf("invalid S3 endpoint URL: %v", redactErr(err))
	}
	if u.User != nil {
		u.User = nil
		return fmt.Errorf("S3 endpoint %s: %w (user name or password removed from this message); take them out of the URL", u, ErrEndpointCredentials)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return fmt.Errorf("S3 endpoint %s: want http:// or https://", u.Redacted())
	}
	return nil
}

func statusCode(err error) int {
	var re *awshttp.ResponseError
	if errors.As(err, &re) {
		return re.HTTPStatusCode()
	}
	return 0
}

func isCode(err error, codes ...string) bool {
	var ae smithy.APIError
	if !errors.As(err, &ae) {
		return false
	}
	for _, c := range codes {
		if ae.ErrorCode() == c {
			return true
		}
	}
	return false
}

// mapErr turns SDK errors into the hashstore vocabulary, with one line a
// user can act on. The SDK's messages carry no credentials; request IDs
// and the key are kept.
func (b *Backend) mapErr(op, key string, err error) error {
	if err == nil {
		return nil
	}
	switch code := statusCode(err); {
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return err
	case code == http.StatusNotFound && isCode(err, "NoSuchBucket"):
		return hashstore.Permanent(fmt.Errorf("s3 %s %s: bucket %q: %w", op, key, b.cfg.Bucket, ErrBucketMissing))
	case code == http.StatusNotFound, isCode(err, "NoSuchKey", "NotFound"):
		return fmt.Errorf("%s: %w", key, hashstore.ErrNotFound)
	case code == http.StatusRequestedRangeNotSatisfiable, isCode(err, "InvalidRange"):
		return fmt.Errorf("s3 %s %s: %w", op, key, hashstore.ErrInvalidRange)
	case isCode(err, "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken"):
		return hashstore.Permanent(fmt.Errorf("s3 %s %s: the server rejected the credentials (%s): %w",
			op, key, apiCode(err), ErrAccessDenied))
	case code == http.StatusForbidden, isCode(err, "AccessDenied"):
		return hashstore.Permanent(fmt.Errorf("s3 %s %s: bucket %q: %w", op, key, b.cfg.Bucket, ErrAccessDenied))
	case code == http.StatusMovedPermanently, isCode(err, "PermanentRedirect", "AuthorizationHeaderMalformed"):
		return hashstore.Permanent(fmt.Errorf("s3 %s %s: bucket %q: %w (%s)", op, key, b.cfg.Bucket, ErrWrongRegion, apiCode(err)))
	}
	var dnsErr *net.DNSError
	var opErr *net.OpError
	switch {
	case errors.As(err, &dnsErr) || errors.As(err, &opErr) && opErr.Op == "dial":
		return fmt.Errorf("s3 %s %s: cannot reach %s: %w", op, key, b.describeEndpoint(), rootCause(err))
	case errors.As(err, &opErr):
		return fmt.Errorf("s3 %s %s: connection to %s failed: %w", op, key, b.describeEndpoint(), rootCause(err))
	}
	return fmt.Errorf("s3 %s %s: %w", op, key, err)
}

// rootCause strips the SDK's layers (operation, attempts, URL) down to the
// network error, for a message that fits on a line.
func rootCause(err error) error {
	var opErr *net.OpError
	if errors.As(err, &opErr) {
		return opErr
	}
	var dnsErr *net.DNSError
	if errors.As(err, &dnsErr) {
		return dnsErr
	}
	return err
}

func apiCode(err error) string {
	var ae smithy.APIError
	if errors.As(err, &ae) {
		return ae.ErrorCode()
	}
	return "unknown"
}

func (b *Backend) describeEndpoint() string {
	if b.endpoint != "" {
		return b.endpoint
	}
	return "AWS S3"
}

// Put implements hashstore.Backend: one PUT for objects up to the part
// size, a multipart upload above (or when the size is unknown and turns
// out larger).
func (b *Backend) Put(ctx context.Context, key string, r io.Reader, size int64) error {
	if err := hashstore.ValidateKey(key); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if size >= 0 && size <= b.cfg.PartSize {
		if rs, ok := r.(io.ReadSeeker); ok {
			return b.putSingle(ctx, key, rs, size)
		}
	}
	// Read the first part: if that is all there is, one PUT does.
	buf := b.getPart()
	n, err := io.ReadFull(r, *buf)
	switch {
	case err == io.EOF || err == io.ErrUnexpectedEOF:
		defer b.putPart(buf)
		if size >= 0 && int64(n) != size {
			return fmt.Errorf("put %s: got %d bytes, expected %d", key, n, size)
		}
		return b.putSingle(ctx, key, bytes.NewReader((*buf)[:n]), int64(n))
	case err != nil:
		b.putPart(buf)
		return fmt.Errorf("put %s: %w", key, err)
	}
	return b.putMultipart(ctx, key, r, size, buf)
}

func (b *Backend) putSingle(ctx context.Context, key string, body io.ReadSeeker, size int64) error {
	return b.putObject(ctx, key, body, size, false)
}

func (b *Backend) putObject(ctx context.Context, key string, body io.ReadSeeker, size int64, exclusive bool) error {
	in := &s3.PutObjectInput{Bucket: aws.String(b.cfg.Bucket), Key: aws.String(b.key(key)), Body: body, ContentLength: aws.Int64(size)}
	if b.cfg.StorageClass != "" {
		in.StorageClass = types.StorageClass(b.cfg.StorageClass)
	}
	if mode, until, ok := b.retention(key); ok {
		// S3 wants a checksum on every locked write.
		in.ObjectLockMode, in.ObjectLockRetainUntilDate, in.ChecksumAlgorithm = mode, &until, types.ChecksumAlgorithmCrc32
	}
	if exclusive {
		in.IfNoneMatch = aws.String("*")
	}
	_, err := b.client.PutObject(ctx, in)
	if exclusive && statusCode(err) == http.StatusPreconditionFailed {
		return fmt.Errorf("put %s: %w", key, hashstore.ErrExists)
	}
	return b.mapErr("put", key, err)
}

// PutIfAbsent implements hashstore.Creator with a conditional PUT
// (If-None-Match: *), which AWS S3 and versitygw honour: the server
// refuses it with 412 when the key exists. Only single PUTs (up to the
// part size) can be conditional here; records are far smaller.
func (b *Backend) PutIfAbsent(ctx context.Context, key string, r io.Reader, size int64) error {
	if err := hashstore.ValidateKey(key); err != nil {
		return err
	}
	data, err := io.ReadAll(io.LimitReader(r, b.cfg.PartSize+1))
	if err != nil {
		return fmt.Errorf("put %s: %w", key, err)
	}
	if int64(len(data)) > b.cfg.PartSize || (size >= 0 && int64(len(data)) != size) {
		return fmt.Errorf("put %s only if absent: %d bytes, more than one part or not the %d expected", key, len(data), size)
	}
	return b.putObject(ctx, key, bytes.NewReader(data), int64(len(data)), true)
}

func (b *Backend) getPart() *[]byte { return b.getPartOf(b.cfg.PartSize) }

// getPartOf returns a buffer of n bytes: pooled at the part size, made
// for the larger parts of uploads beyond 10,000 × PartSize.
func (b *Backend) getPartOf(n int64) *[]byte {
	b.parts <- struct{}{}
	if n != b.cfg.PartSize {
		buf := make([]byte, n)
		return &buf
	}
	return b.pool.Get().(*[]byte)
}

func (b *Backend) putPart(buf *[]byte) {
	if int64(len(*buf)) == b.cfg.PartSize {
		b.pool.Put(buf)
	}
	<-b.parts
}

// S3's limits on one multipart upload (variables only so that a test can
// scale them down: no S3 server takes parts under 5 MiB, so 10,001 parts
// would be 50 GB).
var (
	maxParts    int64 = 10000
	maxPartSize int64 = 5 << 30
	// partTier is how many parts of one size an upload of unknown size
	// sends before the size doubles: 900, so that even 5 MiB parts reach
	// S3's 5 TiB object limit within 10,000 parts.
	partTier int32 = 900
)

// partSize is the size of part number n (1-based) of an upload of size
// bytes (-1: unknown) with the configured part size base, so that no
// upload needs more than 10,000 parts: a known size gets parts of
// max(base, size/9,999 rounded up to 64 KiB); an unknown one starts at
// base and doubles every 900 parts (8 MiB parts carry the first 7.5 GB,
// and 10,000 parts over 14 TB; S3 objects end at 5 TiB), capped at S3's
// 5 GiB. Memory follows the part size: UploadConcurrency+1 buffers.
func partSize(base, size int64, n int32) int64 {
	if size >= 0 {
		need := (size + maxParts - 2) / (maxParts - 1)
		if need <= base {
			return base
		}
		return min((need+(64<<10)-1)&^((64<<10)-1), maxPartSize)
	}
	return min(base<<min(uint((n-1)/partTier), 20), maxPartSize)
}

// putMultipart uploads first (a full part already read) and the rest of r
// in parts, at most UploadConcurrency at once, and aborts the upload if
// anything fails, the context included.
func (b *Backend) putMultipart(ctx context.Context, key string, r io.Reader, size int64, first *[]byte) (err error) {
	create := &s3.CreateMultipartUploadInput{Bucket: aws.String(b.cfg.Bucket), Key: aws.String(b.key(key))}
	if b.cfg.StorageClass != "" {
		create.StorageClass = types.StorageClass(b.cfg.StorageClass)
	}
	locked := false
	if mode, until, ok := b.retention(key); ok {
		create.ObjectLockMode, create.ObjectLockRetainUntilDate, create.ChecksumAlgorithm = mode, &until, types.ChecksumAlgorithmCrc32
		locked = true
	}
	out, cerr := b.client.CreateMultipartUpload(ctx, create)
	if cerr != nil {
		b.putPart(first)
		return b.mapErr("put", key, cerr)
	}
	uploadID := out.UploadId
	defer func() {
		if err != nil {
			// The caller's context may be what failed: clean up anyway.
			abortCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
			defer cancel()
			_, _ = b.client.AbortMultipartUpload(abortCtx, &s3.AbortMultipartUploadInput{
				Bucket: aws.String(b.cfg.Bucket), Key: aws.String(b.key(key)), UploadId: uploadID})
		}
	}()
	var (
		mu    sync.Mutex
		parts []types.CompletedPart
		total int64
	)
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(b.cfg.UploadConcurrency)
	buf, n := first, len(*first)
	for number := int32(1); ; number++ {
		if int64(number) > maxParts {
			b.putPart(buf)
			g.Wait()
			return fmt.Errorf("put %s: more than %d parts (the object is larger than S3 allows)", key, maxParts)
		}
		part, partNumber := buf, number
		body := (*part)[:n]
		total += int64(n)
		g.Go(func() error {
			defer b.putPart(part)
			in := &s3.UploadPartInput{
				Bucket: aws.String(b.cfg.Bucket), Key: aws.String(b.key(key)), UploadId: uploadID,
				PartNumber: aws.Int32(partNumber), Body: bytes.NewReader(body), ContentLength: aws.Int64(int64(len(body))),
			}
			if locked {
				in.ChecksumAlgorithm = types.ChecksumAlgorithmCrc32
			}
			res, err := b.client.UploadPart(gctx, in)
			if err != nil {
				return b.mapErr("put part of", key, err)
			}
			mu.Lock()
			parts = append(parts, types.CompletedPart{ETag: res.ETag, PartNumber: aws.Int32(partNumber), ChecksumCRC32: res.ChecksumCRC32})
			mu.Unlock()
			return nil
		})
		if gctx.Err() != nil {
			break
		}
		buf = b.getPartOf(partSize(b.cfg.PartSize, size, number+1))
		var rerr error
		n, rerr = io.ReadFull(r, *buf)
		if rerr == io.EOF || (rerr == io.ErrUnexpectedEOF && n == 0) {
			b.putPart(buf)
			break
		}
		if rerr != nil && rerr != io.ErrUnexpectedEOF {
			b.putPart(buf)
			g.Wait()
			return fmt.Errorf("put %s: %w", key, rerr)
		}
	}
	if err := g.Wait(); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if size >= 0 && total != size {
		return fmt.Errorf("put %s: got %d bytes, expected %d", key, total, size)
	}
	sort.Slice(parts, func(i, j int) bool { return *parts[i].PartNumber < *parts[j].PartNumber })
	_, err = b.client.CompleteMultipartUpload(ctx, &s3.CompleteMultipartUploadInput{
		Bucket: aws.String(b.cfg.Bucket), Key: aws.String(b.key(key)), UploadId: uploadID,
		MultipartUpload: &types.CompletedMultipartUpload{Parts: parts},
	})
	return b.mapErr("complete upload of", key, err)
}

// objectLockMode checks a mode name; "" is compliance.
func objectLockMode(mode string) (string, error) {
	switch mode {
	case "":
		return "compliance", nil
	case "compliance", "governance":
		return mode, nil
	}
	return "", fmt.Errorf("s3: object lock mode %q: want compliance or governance", mode)
}

// retention returns the Object Lock of a new key: every key but locks
// and gc markers, which their writers delete.
func (b *Backend) retention(key string) (types.ObjectLockMode, time.Time, bool) {
	b.lockMu.Lock()
	d, modeName := b.cfg.ObjectLock, b.cfg.ObjectLockMode
	b.lockMu.Unlock()
	if d <= 0 || strings.HasPrefix(key, "locks/") || strings.HasPrefix(key, "gc/") {
		return "", time.Time{}, false
	}
	mode := types.ObjectLockModeCompliance
	if modeName == "governance" {
		mode = types.ObjectLockModeGovernance
	}
	return mode, time.Now().Add(d).UTC(), true
}

// SetRetention implements hashstore.RetentionSetter: the repository's
// config asks for a retention. A longer one set by Config stays; the
// mode is the repository's (compliance when it names none).
func (b *Backend) SetRetention(d time.Duration, mode string) error {
	mode, err := objectLockMode(mode)
	if err != nil {
		return err
	}
	b.lockMu.Lock()
	defer b.lockMu.Unlock()
	b.cfg.ObjectLock = max(b.cfg.ObjectLock, d)
	b.cfg.ObjectLockMode = mode
	return nil
}

// Retains implements hashstore.Retainer: whether this backend puts
// writes under Object Lock (flags or the repository's config).
func (b *Backend) Retains() bool {
	b.lockMu.Lock()
	defer b.lockMu.Unlock()
	return b.cfg.ObjectLock > 0
}

// RetainedUntil implements hashstore.Retainer: when the Object Lock of
// key ends (zero for none).
func (b *Backend) RetainedUntil(ctx context.Context, key string) (time.Time, error) {
	if err := hashstore.ValidateKey(key); err != nil {
		return time.Time{}, err
	}
	out, err := b.client.HeadObject(ctx, &s3.HeadObjectInput{Bucket: aws.String(b.cfg.Bucket), Key: aws.String(b.key(key))})
	if err != nil {
		return time.Time{}, b.mapErr("stat", key, err)
	}
	return aws.ToTime(out.ObjectLockRetainUntilDate), nil
}

// Get implements hashstore.Backend.
func (b *Backend) Get(ctx context.Context, key string) (io.ReadCloser, error) {
	return b.get(ctx, key, nil)
}

// GetRange implements hashstore.Backend.
func (b *Backend) GetRange(ctx context.Context, key string, offset, length int64) (io.ReadCloser, error) {
	return hashstore.ReadObjectRange(ctx, key, offset, length, b.Stat, func() (io.ReadCloser, error) {
		rng := fmt.Sprintf("bytes=%d-", offset)
		if length > 0 {
			rng = fmt.Sprintf("bytes=%d-%d", offset, offset+length-1)
		}
		return b.get(ctx, key, &rng)
	})
}

func (b *Backend) get(ctx context.Context, key string, rng *string) (io.ReadCloser, error) {
	if err := hashstore.ValidateKey(key); err != nil {
		return nil, err
	}
	out, err := b.client.GetObject(ctx, &s3.GetObjectInput{Bucket: aws.String(b.cfg.Bucket), Key: aws.String(b.key(key)), Range: rng})
	if err != nil {
		return nil, b.mapErr("get", key, err)
	}
	return out.Body, nil
}

// Stat implements hashstore.Backend with HEAD.
func (b *Backend) Stat(ctx context.Context, key string) (hashstore.Info, error) {
	if err := hashstore.ValidateKey(key); err != nil {
		return hashstore.Info{}, err
	}
	out, err := b.client.HeadObject(ctx, &s3.HeadObjectInput{Bucket: aws.String(b.cfg.Bucket), Key: aws.String(b.key(key))})
	if err != nil {
		return hashstore.Info{}, b.mapErr("stat", key, err)
	}
	return hashstore.Info{Key: key, Size: aws.ToInt64(out.ContentLength), ModTime: aws.ToTime(out.LastModified)}, nil
}

// List implements hashstore.Backend with ListObjectsV2, 1,000 keys a page.
func (b *Backend) List(ctx context.Context, prefix string, fn func(hashstore.Info) error) error {
	p := s3.NewListObjectsV2Paginator(b.client, &s3.ListObjectsV2Input{Bucket: aws.String(b.cfg.Bucket), Prefix: aws.String(b.key(prefix))})
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			return b.mapErr("list", prefix, err)
		}
		for _, o := range page.Contents {
			key := strings.TrimPrefix(aws.ToString(o.Key), b.cfg.Prefix)
			if err := fn(hashstore.Info{Key: key, Size: aws.ToInt64(o.Size), ModTime: aws.ToTime(o.LastModified)}); err != nil {
				return err
			}
		}
	}
	return nil
}

// Delete implements hashstore.Backend.
func (b *Backend) Delete(ctx context.Context, key string) error {
	if err := hashstore.ValidateKey(key); err != nil {
		return err
	}
	_, err := b.client.DeleteObject(ctx, &s3.DeleteObjectInput{Bucket: aws.String(b.cfg.Bucket), Key: aws.String(b.key(key))})
	return b.mapErr("delete", key, err)
}

// DeleteMany removes keys with DeleteObjects, 1,000 per request.
func (b *Backend) DeleteMany(ctx context.Context, keys []string) error {
	for start := 0; start < len(keys); start += 1000 {
		batch := keys[start:min(start+1000, len(keys))]
		objs := make([]types.ObjectIdentifier, len(batch))
		for i, k := range batch {
			if err := hashstore.ValidateKey(k); err != nil {
				return err
			}
			objs[i] = types.ObjectIdentifier{Key: aws.String(b.key(k))}
		}
		out, err := b.client.DeleteObjects(ctx, &s3.DeleteObjectsInput{Bucket: aws.String(b.cfg.Bucket),
			Delete: &types.Delete{Objects: objs, Quiet: aws.Bool(true)}})
		if err != nil {
			return b.mapErr("delete", fmt.Sprintf("%d keys", len(batch)), err)
		}
		if len(out.Errors) > 0 {
			e := out.Errors[0]
			return fmt.Errorf("s3 delete %s: %s (%d keys failed)", aws.ToString(e.Key), aws.ToString(e.Code), len(out.Errors))
		}
	}
	return nil
}

// IncompleteUploads lists multipart uploads under the prefix that were
// neither completed nor aborted.
func (b *Backend) IncompleteUploads(ctx context.Context) ([]string, error) {
	out, err := b.client.ListMultipartUploads(ctx, &s3.ListMultipartUploadsInput{Bucket: aws.String(b.cfg.Bucket), Prefix: aws.String(b.cfg.Prefix)})
	if err != nil {
		return nil, b.mapErr("list uploads", b.cfg.Prefix, err)
	}
	var keys []string
	for _, u := range out.Uploads {
		keys = append(keys, aws.ToString(u.Key))
	}
	return keys, nil
}
