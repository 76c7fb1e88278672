package s3test

import (
	"testing"
	"time"

	"github.com/deltabackup/deltabackup/hashstore/s3store"
	"github.com/deltabackup/deltabackup/hashstore/storetest"
)

// Endpoint returns the S3 server the tests use. Outside CI, with no server
// configured, the test is skipped and says how to get one; in CI (CI set)
// a missing server fails the test: the S3 tests must never silently not
// run there.
func Endpoint(t testing.TB) string {
	t.Helper()
	return storetest.ServerFromEnv(t, "DELTABACKUP_S3_ENDPOINT", ".ci/run starts the S3 server these tests need",
		"no S3 server: run .ci/run, which starts one, or set DELTABACKUP_S3_ENDPOINT and AWS credentials")
}

// NewBucket returns a bucket name no other test uses.
func NewBucket(t testing.TB) string { return storetest.BucketName(t) }

// Config returns a configuration for a new bucket on the test server,
// created when the backend opens.
func Config(t testing.TB) s3store.Config {
	t.Helper()
	return s3store.Config{Bucket: NewBucket(t), Endpoint: Endpoint(t), CreateBucket: true, ReadTimeout: 20 * time.Second}
}
