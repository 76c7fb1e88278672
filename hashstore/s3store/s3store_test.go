package s3store_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/deltabackup/deltabackup/hashstore"
	"github.com/deltabackup/deltabackup/hashstore/s3store"
	"github.com/deltabackup/deltabackup/hashstore/s3store/s3test"
	"github.com/deltabackup/deltabackup/hashstore/storetest"
)

func open(t *testing.T, cfg s3store.Config) *s3store.Backend {
	t.Helper()
	b, err := s3store.Open(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) hashstore.Backend { return open(t, s3test.Config(t)) })
}

func TestConformanceWithPrefixAndSmallParts(t *testing.T) {
	storetest.Run(t, func(t *testing.T) hashstore.Backend {
		cfg := s3test.Config(t)
		cfg.Prefix = "some/prefix"
		cfg.PartSize = 5 << 20
		return open(t, cfg)
	})
}

func randomBytes(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, 7))
	b := make([]byte, n)
	for i := 0; i+8 <= n; i += 8 {
		v := r.Uint64()
		for j := range 8 {
			b[i+j] = byte(v >> (8 * j))
		}
	}
	return b
}

// onlyReader hides Seek, as a pipe would.
type onlyReader struct{ io.Reader }

func TestMultipartRoundTrip(t *testing.T) {
	cfg := s3test.Config(t)
	cfg.PartSize = 5 << 20
	b := open(t, cfg)
	ctx := context.Background()
	data := randomBytes(1, 100<<20+12345)
	for _, size := range []int64{int64(len(data)), -1} {
		if err := b.Put(ctx, "objects/big", onlyReader{bytes.NewReader(data)}, size); err != nil {
			t.Fatalf("put 100 MiB (size %d): %v", size, err)
		}
		rc, err := b.Get(ctx, "objects/big")
		if err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(rc)
		rc.Close()
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("multipart round trip: %d bytes, %v", len(got), err)
		}
	}
	if n := b.Requests()["UploadPart"]; n < 2*21 {
		t.Fatalf("%d UploadPart requests for two 100 MiB uploads in 5 MiB parts", n)
	}
	rc, err := b.GetRange(ctx, "objects/big", 50<<20, 1000)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(rc)
	rc.Close()
	if !bytes.Equal(got, data[50<<20:50<<20+1000]) {
		t.Fatal("ranged get inside a multipart object differs")
	}
}

// cancelAfter cancels a context once n bytes have been read through it.
type cancelAfter struct {
	r      io.Reader
	n      int
	cancel func()
}

func (c *cancelAfter) Read(p []byte) (int, error) {
	k, err := c.r.Read(p)
	if c.n -= k; c.n <= 0 {
		c.cancel()
	}
	return k, err
}

type brokenReader struct {
	r io.Reader
	n int
}

func (b *brokenReader) Read(p []byte) (int, error) {
	if b.n <= 0 {
		return 0, errors.New("source failed")
	}
	k, err := b.r.Read(p[:min(len(p), b.n)])
	b.n -= k
	return k, err
}

func TestFailedMultipartLeavesNoIncompleteUpload(t *testing.T) {
	cfg := s3test.Config(t)
	cfg.PartSize = 5 << 20
	b := open(t, cfg)
	data := randomBytes(2, 40<<20)

	ctx, cancel := context.WithCancel(context.Background())
	err := b.Put(ctx, "objects/cancelled", &cancelAfter{r: bytes.NewReader(data), n: 17 << 20, cancel: cancel}, -1)
	if err == nil {
		t.Fatal("a cancelled multipart upload succeeded")
	}
	err = b.Put(context.Background(), "objects/broken", &brokenReader{r: bytes.NewReader(data), n: 23 << 20}, int64(len(data)))
	if err == nil || !strings.Contains(err.Error(), "source failed") {
		t.Fatalf("multipart upload with a failing source: %v", err)
	}
	err = b.Put(context.Background(), "objects/short", onlyReader{bytes.NewReader(data[:12<<20])}, int64(len(data)))
	if err == nil {
		t.Fatal("a multipart upload shorter than its declared size succeeded")
	}
	uploads, err := b.IncompleteUploads(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(uploads) != 0 {
		t.Fatalf("incomplete multipart uploads left behind: %v", uploads)
	}
	for _, k := range []string{"objects/cancelled", "objects/broken", "objects/short"} {
		if _, err := b.Stat(context.Background(), k); !errors.Is(err, hashstore.ErrNotFound) {
			t.Fatalf("%s exists after a failed upload (%v)", k, err)
		}
	}
}

func TestBucketAndCredentialErrors(t *testing.T) {
	ctx := context.Background()
	cfg := s3test.Config(t)
	cfg.CreateBucket = false
	_, err := s3store.Open(ctx, cfg)
	if !errors.Is(err, s3store.ErrBucketMissing) || !strings.Contains(err.Error(), cfg.Bucket) {
		t.Fatalf("missing bucket: %v", err)
	}
	var perm *hashstore.PermanentError
	if !errors.As(err, &perm) {
		t.Fatal("a missing bucket is retried")
	}

	good := s3test.Config(t)
	open(t, good) // creates the bucket
	t.Setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret-do-not-print")
	_, err = s3store.Open(ctx, s3store.Config{Bucket: good.Bucket, Endpoint: good.Endpoint})
	if !errors.Is(err, s3store.ErrAccessDenied) || !strings.Contains(err.Error(), "rejected the credentials") {
		t.Fatalf("wrong credentials: %v", err)
	}
	if strings.Contains(err.Error(), "wrong-secret-do-not-print") {
		t.Fatalf("the secret appears in the error: %v", err)
	}

	_, err = s3store.Open(ctx, s3store.Config{Bucket: "any", Endpoint: "http://127.0.0.1:1", ConnectTimeout: 1e9})
	if err == nil || !strings.Contains(err.Error(), "cannot reach http://127.0.0.1:1") {
		t.Fatalf("unreachable endpoint: %v", err)
	}
}

func TestParseURL(t *testing.T) {
	cfg, err := s3store.ParseURL("s3://my-bucket/backups/node1?endpoint=http://localhost:9000&region=eu-west-1&path-style=false&part-size=16777216&upload-concurrency=8&storage-class=STANDARD_IA")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Bucket != "my-bucket" || cfg.Prefix != "backups/node1/" || cfg.Endpoint != "http://localhost:9000" || cfg.Region != "eu-west-1" ||
		cfg.PathStyle == nil || *cfg.PathStyle || cfg.PartSize != 16<<20 || cfg.UploadConcurrency != 8 || cfg.StorageClass != "STANDARD_IA" {
		t.Fatalf("parsed %+v", cfg)
	}
	for _, bad := range []string{"s3://", "s3://key:secret@bucket/x", "s3://b/x?colour=blue", "s3://b?part-size=lots"} {
		_, err := s3store.ParseURL(bad)
		if err == nil {
			t.Errorf("%s accepted", bad)
		} else if strings.Contains(err.Error(), "secret") && !strings.Contains(err.Error(), "AWS_SECRET_ACCESS_KEY") {
			t.Errorf("%s: error shows the secret: %v", bad, err)
		}
	}
}

// TestEndpointCredentialsAreRefusedUnprinted is the audit's L7: an
// endpoint URL holding a user name and password (in the URL's query, a
// flag, or AWS_ENDPOINT_URL) is refused, and no message repeats it.
func TestEndpointCredentialsAreRefusedUnprinted(t *testing.T) {
	t.Setenv("AWS_ACCESS_KEY_ID", "test-key")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "test-secret")
	t.Setenv("AWS_REGION", "us-east-1")
	for _, how := range []string{"config", "environment"} {
		cfg := s3store.Config{Bucket: "b", ConnectTimeout: time.Second}
		if how == "config" {
			cfg.Endpoint = "http://AKIAUSER:PassInUrl@127.0.0.1:1"
		} else {
			t.Setenv("AWS_ENDPOINT_URL", "http://AKIAUSER:PassInUrl@127.0.0.1:1")
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, err := s3store.Open(ctx, cfg)
		cancel()
		if err == nil || strings.Contains(err.Error(), "PassInUrl") || strings.Contains(err.Error(), "AKIAUSER") {
			t.Fatalf("%s: %v", how, err)
		}
	}
}

func TestRetriesThroughConnectionResets(t *testing.T) {
	cfg := s3test.Config(t)
	open(t, cfg) // create the bucket directly
	u, _ := url.Parse(cfg.Endpoint)
	proxy := storetest.NewProxy(t, u.Host)
	proxy.SetResetRate(0.1)
	cfg.Endpoint = "http://" + proxy.Addr
	cfg.CreateBucket = false
	cfg.PartSize = 5 << 20
	var raw *s3store.Backend
	var err error
	for range 10 { // opening may meet a reset too
		if raw, err = s3store.Open(context.Background(), cfg); err == nil {
			break
		}
	}
	if err != nil {
		t.Fatal(err)
	}
	b := hashstore.WithRetry(raw, hashstore.RetryPolicy{InitialBackoff: 1e6, MaxBackoff: 50e6})
	ctx := context.Background()
	var wg sync.WaitGroup
	errs := make(chan error, 100)
	for i := range 60 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			data := randomBytes(uint64(i), 1000+i*40000)
			if i%20 == 0 {
				data = randomBytes(uint64(i), 12<<20) // multipart
			}
			key := fmt.Sprintf("objects/%02d", i)
			if err := b.Put(ctx, key, bytes.NewReader(data), int64(len(data))); err != nil {
				errs <- fmt.Errorf("put %s: %w", key, err)
				return
			}
			rc, err := b.Get(ctx, key)
			if err != nil {
				errs <- fmt.Errorf("get %s: %w", key, err)
				return
			}
			got, err := io.ReadAll(rc)
			rc.Close()
			if err != nil || !bytes.Equal(got, data) {
				errs <- fmt.Errorf("read %s: %d bytes, %v", key, len(got), err)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if proxy.Resets() == 0 {
		t.Fatalf("the proxy reset none of %d connections; the test proved nothing", proxy.Connections())
	}
	t.Logf("%d of %d connections reset", proxy.Resets(), proxy.Connections())
}

// TestPartSizeKeepsEveryUploadWithin10000Parts: the rule alone, for
// object sizes up to S3's 5 TiB, known and unknown.
func TestPartSizeKeepsEveryUploadWithin10000Parts(t *testing.T) {
	for _, base := range []int64{5 << 20, 8 << 20, 64 << 20} {
		for _, size := range []int64{10000*base - 1, 10000 * base, 10000*base + 1, 78 << 30, 1 << 40, 5 << 40} {
			for _, known := range []bool{true, false} {
				declared := size
				if !known {
					declared = -1
				}
				var sent int64
				n := int32(0)
				for sent < size {
					n++
					p := s3store.PartSize(base, declared, n)
					if p < base || p > 5<<30 {
						t.Fatalf("base %d, size %d: part %d of %d bytes", base, declared, n, p)
					}
					sent += p
				}
				if n > 10000 {
					t.Errorf("base %d MiB, %d GiB (known %v): %d parts", base>>20, size>>30, known, n)
				}
			}
		}
	}
}

// TestUploadBeyondThePartLimit: the rule on a real server, with S3's
// 10,000 parts scaled down to 20 (and tiers of 900 parts to 4): an object
// of 21 parts at the configured 5 MiB, its size known or not, uploads in
// at most 20 parts and reads back whole; without the rule it fails.
func TestUploadBeyondThePartLimit(t *testing.T) {
	cfg := s3test.Config(t)
	cfg.PartSize = 5 << 20
	b := open(t, cfg)
	defer s3store.SetPartLimitsForTest(20, 4)()
	ctx := context.Background()
	data := randomBytes(3, 21*(5<<20)+1)
	for _, size := range []int64{int64(len(data)), -1} {
		before := b.Requests()["UploadPart"]
		if err := b.Put(ctx, "objects/many-parts", onlyReader{bytes.NewReader(data)}, size); err != nil {
			t.Fatalf("put (size %d): %v", size, err)
		}
		parts := b.Requests()["UploadPart"] - before
		if parts > 20 {
			t.Errorf("size %d: %d parts, more than the limit of 20", size, parts)
		}
		t.Logf("size %d: %d parts", size, parts)
		rc, err := b.Get(ctx, "objects/many-parts")
		if err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(rc)
		rc.Close()
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("size %d: read back %d bytes, %v", size, len(got), err)
		}
	}
}
