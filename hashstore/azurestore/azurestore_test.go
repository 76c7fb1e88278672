package azurestore_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/deltabackup/deltabackup/hashstore"
	"github.com/deltabackup/deltabackup/hashstore/azurestore"
	"github.com/deltabackup/deltabackup/hashstore/azurestore/azuretest"
	"github.com/deltabackup/deltabackup/hashstore/storetest"
)

func open(t *testing.T, cfg azurestore.Config) *azurestore.Backend {
	t.Helper()
	b, err := azurestore.Open(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) hashstore.Backend { return open(t, azuretest.Config(t)) })
}

func TestConformanceWithPrefix(t *testing.T) {
	storetest.Run(t, func(t *testing.T) hashstore.Backend {
		cfg := azuretest.Config(t)
		cfg.Prefix = "some/prefix"
		return open(t, cfg)
	})
}

func TestMissingContainerIsNamed(t *testing.T) {
	cfg := azuretest.Config(t)
	cfg.CreateContainer = false
	_, err := azurestore.Open(context.Background(), cfg)
	if !errors.Is(err, azurestore.ErrContainerMissing) || !strings.Contains(err.Error(), cfg.Container) || hashstore.Retryable(err) {
		t.Fatalf("missing container: got %v", err)
	}
}

func TestWrongKeyIsAccessDenied(t *testing.T) {
	cfg := azuretest.Config(t)
	// The emulator's account with another (valid base64) key.
	cfg.ConnectionString = strings.Replace(cfg.ConnectionString, "AccountKey=", "AccountKey=AAAA", 1)
	_, err := azurestore.Open(context.Background(), cfg)
	if !errors.Is(err, azurestore.ErrAccessDenied) || hashstore.Retryable(err) || strings.Contains(err.Error(), "AccountKey") {
		t.Fatalf("wrong key: got %v", err)
	}
}

// TestBlockSizeKeepsBlobsWithin50000Blocks: the service takes at most
// 50,000 blocks per blob.
func TestBlockSizeKeepsBlobsWithin50000Blocks(t *testing.T) {
	for _, size := range []int64{0, 1, 8 << 20, 400 << 30, 4 << 40, 190 << 40} {
		bs := azurestore.BlockSize(size)
		if bs < 8<<20 || (size+bs-1)/bs > 50_000 {
			t.Errorf("size %d: blocks of %d need %d blocks", size, bs, (size+bs-1)/bs)
		}
	}
}

func TestParseURL(t *testing.T) {
	for _, tc := range []struct {
		in, container, prefix, bad string
	}{
		{in: "azure://c", container: "c"},
		{in: "azure://c/p/q/", container: "c", prefix: "p/q"},
		{in: "azure://", bad: "no container"},
		{in: "azure://acct:secret@c/p", bad: "no user"},
		{in: "azure://c/p?sig=secret", bad: "query"},
	} {
		cfg, err := azurestore.ParseURL(tc.in)
		if tc.bad != "" {
			if err == nil || !strings.Contains(err.Error(), tc.bad) || strings.Contains(err.Error(), "secret") {
				t.Errorf("%s: got %v, want an error about %q", tc.in, err, tc.bad)
			}
			continue
		}
		if err != nil || cfg.Container != tc.container || cfg.Prefix != tc.prefix {
			t.Errorf("%s: got %+v, %v", tc.in, cfg, err)
		}
	}
}
