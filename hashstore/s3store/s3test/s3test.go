package s3test

import (
	"fmt"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/deltabackup/deltabackup/hashstore/s3store"
)

// Endpoint returns the S3 server the tests use. Outside CI, with no server
// configured, the test is skipped and says how to get one; in CI (CI set)
// a missing server fails the test: the S3 tests must never silently not
// run there.
func Endpoint(t testing.TB) string {
	t.Helper()
	endpoint := os.Getenv("DELTABACKUP_S3_ENDPOINT")
	if endpoint == "" {
		if os.Getenv("CI") != "" {
			t.Fatal("CI is set but DELTABACKUP_S3_ENDPOINT is not: .ci/run starts the S3 server these tests need")
		}
		t.Skip("no S3 server: run .ci/run, which starts one, or set DELTABACKUP_S3_ENDPOINT and AWS credentials")
	}
	return endpoint
}

var bucketSeq atomic.Int64

// NewBucket returns a bucket name no other test uses.
func NewBucket(t testing.TB) string {
	var b strings.Builder
	for _, r := range strings.ToLower(t.Name()) {
		if r >= 'a' && r <= 'z' || r >= '0' && r <= '9' {
			b.WriteRune(r)
		} else {
			b.WriteByte('-')
		}
	}
	name := strings.Trim(b.String(), "-")
	suffix := fmt.Sprintf("-%d-%d", time.Now().UnixNano()%1e9, bucketSeq.Add(1))
	if len(name)+len(suffix) > 63 {
		name = name[:63-len(suffix)]
	}
	return strings.Trim(name, "-") + suffix
}

// Config returns a configuration for a new bucket on the test server,
// created when the backend opens.
func Config(t testing.TB) s3store.Config {
	t.Helper()
	return s3store.Config{Bucket: NewBucket(t), Endpoint: Endpoint(t), CreateBucket: true, ReadTimeout: 20 * time.Second}
}
