package hashstore_test

import (
	"bytes"
	"context"
	"io"
	"testing"

	"github.com/deltabackup/deltabackup/hashstore"
	"github.com/deltabackup/deltabackup/hashstore/storetest"
	"github.com/deltabackup/deltabackup/upload"
)

func TestParseSubset(t *testing.T) {
	for _, good := range []string{"1/1", "2/7", "7/7", "100%", "0.5%", "10%"} {
		if _, err := hashstore.ParseSubset(good); err != nil {
			t.Errorf("%q: %v", good, err)
		}
	}
	for _, bad := range []string{"", "0/3", "4/3", "3", "1/0", "-1/2", "0%", "101%", "x%", "a/b"} {
		if _, err := hashstore.ParseSubset(bad); err == nil {
			t.Errorf("%q parsed", bad)
		}
	}
}

// TestVerifySubsetsPartitionTheData: the parts 1/3, 2/3 and 3/3 read
// every object exactly once between them, and a damaged object is found
// by exactly one of them; 100% reads everything.
func TestVerifySubsetsPartitionTheData(t *testing.T) {
	ctx := context.Background()
	backend := hashstore.NewLocal(t.TempDir())
	newGCFixture(t, backend)
	store, err := hashstore.Open(ctx, backend, storetest.Options(hashstore.Options{}))
	if err != nil {
		t.Fatal(err)
	}
	verify := func(spec string) *hashstore.VerifyReport {
		t.Helper()
		store, err := hashstore.Open(ctx, backend, storetest.Options(hashstore.Options{}))
		if err != nil {
			t.Fatal(err)
		}
		opts := hashstore.VerifyOptions{Referrer: upload.Referrer{Store: store}, ReadData: true, Parallel: 2}
		if spec != "" {
			if opts.Subset, err = hashstore.ParseSubset(spec); err != nil {
				t.Fatal(err)
			}
		}
		rep, err := store.Verify(ctx, opts)
		if err != nil {
			t.Fatal(err)
		}
		return rep
	}
	all := verify("")
	if !all.OK() || all.ReadObjects != all.Objects || all.ReadObjects < 20 {
		t.Fatalf("full verify: %d of %d objects read, problems %v", all.ReadObjects, all.Objects, all.Problems)
	}
	var objects int
	var bytesRead int64
	for _, part := range []string{"1/3", "2/3", "3/3"} {
		rep := verify(part)
		if !rep.OK() || rep.Subset != part || rep.ReadObjects == 0 || rep.ReadObjects == all.ReadObjects {
			t.Fatalf("part %s: %d of %d objects read (%v)", part, rep.ReadObjects, all.ReadObjects, rep.Problems)
		}
		objects += rep.ReadObjects
		bytesRead += rep.ReadBytes
	}
	if objects != all.ReadObjects || bytesRead != all.ReadBytes {
		t.Fatalf("the three parts read %d objects, %d bytes; everything is %d objects, %d bytes", objects, bytesRead, all.ReadObjects, all.ReadBytes)
	}
	if rep := verify("100%"); rep.ReadObjects != all.ReadObjects {
		t.Fatalf("100%% read %d of %d objects", rep.ReadObjects, all.ReadObjects)
	}

	// Damage one loose object: exactly one part finds it.
	var victim string
	backend.List(ctx, "objects/", func(i hashstore.Info) error { victim = i.Key; return nil })
	rc, _ := backend.Get(ctx, victim)
	data, _ := io.ReadAll(rc)
	rc.Close()
	data[len(data)/2] ^= 0xff
	backend.Put(ctx, victim, bytes.NewReader(data), int64(len(data)))
	found := 0
	for _, part := range []string{"1/3", "2/3", "3/3"} {
		for _, p := range verify(part).Problems {
			if p.Kind == hashstore.ProblemCorrupt && store.ObjectKey(p.ID) == victim {
				found++
			}
		}
	}
	if found != 1 {
		t.Fatalf("the damaged object %s was found by %d of the three parts, want 1", victim, found)
	}

}
