// Package gcstest holds helpers for tests against a Google Cloud Storage
// emulator: the fake-gcs-server that .ci/run starts (STORAGE_EMULATOR_HOST)
// and a fresh bucket per test.
package gcstest

import (
	"testing"

	"github.com/deltabackup/deltabackup/hashstore/gcsstore"
	"github.com/deltabackup/deltabackup/hashstore/storetest"
)

// Emulator returns the emulator's address. Outside CI, with none set, the
// test is skipped and says how to get one; in CI (CI set) a missing
// emulator fails the test.
func Emulator(t testing.TB) string {
	t.Helper()
	return storetest.ServerFromEnv(t, "STORAGE_EMULATOR_HOST", ".ci/run starts fake-gcs-server for these tests",
		"no GCS emulator: run .ci/run, which starts fake-gcs-server, or set STORAGE_EMULATOR_HOST")
}

// Config returns a configuration for a new bucket on the emulator,
// created when the backend opens.
func Config(t testing.TB) gcsstore.Config {
	t.Helper()
	Emulator(t)
	return gcsstore.Config{Bucket: storetest.BucketName(t), CreateBucket: true, Project: "ci-project"}
}
