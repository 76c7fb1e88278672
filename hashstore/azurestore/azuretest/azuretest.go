// Package azuretest holds helpers for tests against Azurite, the Azure
// Storage emulator that .ci/run starts (its connection string in
// DELTABACKUP_AZURE_CONNECTION_STRING), with a fresh container per test.
package azuretest

import (
	"testing"

	"github.com/deltabackup/deltabackup/hashstore/azurestore"
	"github.com/deltabackup/deltabackup/hashstore/storetest"
)

// ConnectionString returns the emulator's connection string. Outside CI,
// with none set, the test is skipped and says how to get one; in CI (CI
// set) a missing emulator fails the test.
func ConnectionString(t testing.TB) string {
	t.Helper()
	return storetest.ServerFromEnv(t, "DELTABACKUP_AZURE_CONNECTION_STRING", ".ci/run starts Azurite for these tests",
		"no Azure Storage emulator: run .ci/run, which starts Azurite, or set DELTABACKUP_AZURE_CONNECTION_STRING")
}

// Config returns a configuration for a new container on the emulator,
// created when the backend opens.
func Config(t testing.TB) azurestore.Config {
	t.Helper()
	return azurestore.Config{Container: storetest.BucketName(t), ConnectionString: ConnectionString(t), CreateContainer: true}
}
