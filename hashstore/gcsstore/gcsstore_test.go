package gcsstore_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/deltabackup/deltabackup/hashstore"
	"github.com/deltabackup/deltabackup/hashstore/gcsstore"
	"github.com/deltabackup/deltabackup/hashstore/gcsstore/gcstest"
	"github.com/deltabackup/deltabackup/hashstore/storetest"
)

func open(t *testing.T, cfg gcsstore.Config) *gcsstore.Backend {
	t.Helper()
	b, err := gcsstore.Open(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b
}

func TestConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) hashstore.Backend { return open(t, gcstest.Config(t)) })
}

func TestConformanceWithPrefix(t *testing.T) {
	storetest.Run(t, func(t *testing.T) hashstore.Backend {
		cfg := gcstest.Config(t)
		cfg.Prefix = "some/prefix"
		return open(t, cfg)
	})
}

func TestMissingBucketIsNamed(t *testing.T) {
	cfg := gcstest.Config(t)
	cfg.CreateBucket = false
	_, err := gcsstore.Open(context.Background(), cfg)
	if !errors.Is(err, gcsstore.ErrBucketMissing) || !strings.Contains(err.Error(), cfg.Bucket) || hashstore.Retryable(err) {
		t.Fatalf("missing bucket: got %v", err)
	}
}

func TestParseURL(t *testing.T) {
	for _, tc := range []struct {
		in, bucket, prefix, bad string
	}{
		{in: "gs://b", bucket: "b"},
		{in: "gs://b/p/q/", bucket: "b", prefix: "p/q"},
		{in: "gs://", bad: "no bucket"},
		{in: "gs://u:secret@b/p", bad: "no user"},
		{in: "gs://b/p?x=1", bad: "query"},
	} {
		cfg, err := gcsstore.ParseURL(tc.in)
		if tc.bad != "" {
			if err == nil || !strings.Contains(err.Error(), tc.bad) || strings.Contains(err.Error(), "secret") {
				t.Errorf("%s: got %v, want an error about %q", tc.in, err, tc.bad)
			}
			continue
		}
		if err != nil || cfg.Bucket != tc.bucket || cfg.Prefix != tc.prefix {
			t.Errorf("%s: got %+v, %v", tc.in, cfg, err)
		}
	}
}

// TestRefusedCredentialsAreAccessDenied: the emulator checks no
// credentials, so a server that refuses every request stands in for GCS
// refusing a service account.
func TestRefusedCredentialsAreAccessDenied(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusForbidden)
		io.WriteString(w, `{"error":{"code":403,"message":"sa@p.iam.gserviceaccount.com does not have storage.buckets.get access"}}`)
	}))
	defer srv.Close()
	t.Setenv("STORAGE_EMULATOR_HOST", srv.URL)
	_, err := gcsstore.Open(context.Background(), gcsstore.Config{Bucket: "b"})
	if !errors.Is(err, gcsstore.ErrAccessDenied) || hashstore.Retryable(err) {
		t.Fatalf("refused credentials: got %v, want ErrAccessDenied, not retried", err)
	}
}
