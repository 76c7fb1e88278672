// Package gcstest holds helpers for tests against a Google Cloud Storage
// emulator: the fake-gcs-server that .ci/run starts (STORAGE_EMULATOR_HOST)
// and a fresh bucket per test.
package gcstest

import (
	"os"
	"testing"

	"github.com/deltabackup/deltabackup/hashstore/gcsstore"
	"github.com/deltabackup/deltabackup/hashstore/storetest"
)

// Emulator returns the emulator's address. Outside CI, with none set, the
// test is skipped and says how to get one; in CI (CI set) a missing
// emulator fails the test.
func Emulator(t testing.TB) string {
	t.Helper()
	host := os.Getenv("STORAGE_EMULATOR_HOST")
	if host == "" {
		if os.Getenv("CI") != "" {
			t.Fatal("CI is set but STORAGE_EMULATOR_HOST is not: .ci/run starts fake-gcs-server for these tests")
		}
		t.Skip("no GCS emulator: run .ci/run, which starts fake-gcs-server, or set STORAGE_EMULATOR_HOST")
	}
	return host
}

// Config returns a configuration for a new bucket on the emulator,
// created when the backend opens.
func Config(t testing.TB) gcsstore.Config {
	t.Helper()
	Emulator(t)
	return gcsstore.Config{Bucket: storetest.BucketName(t), CreateBucket: true, Project: "ci-project"}
}
