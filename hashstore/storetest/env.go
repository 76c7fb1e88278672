package storetest

import (
	"os"
	"testing"
)

// ServerFromEnv returns the value of the environment variable that names
// a test server (an endpoint, a connection string). When it is empty the
// test fails in CI (CI set: real-server tests must never silently not
// run there), saying ciHint, and is skipped elsewhere, saying skipHint.
func ServerFromEnv(t testing.TB, variable, ciHint, skipHint string) string {
	t.Helper()
	v := os.Getenv(variable)
	if v == "" {
		if os.Getenv("CI") != "" {
			t.Fatalf("CI is set but %s is not: %s", variable, ciHint)
		}
		t.Skip(skipHint)
	}
	return v
}
