package hashstore

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/deltabackup/deltabackup/snapshot/digest"
)

// TestWriteOfADoomedObjectWaitsForARunningSweep is the writer's half of
// the rule that keeps a loose object a backup stores again: the backup
// says so on its lock, then waits while a sweep that may delete the
// object runs, and writes only when it ended.
func TestWriteOfADoomedObjectWaitsForARunningSweep(t *testing.T) {
	ctx := context.Background()
	mem := NewMemory()
	s, err := Init(ctx, mem, testOptions(Options{}))
	if err != nil {
		t.Fatal(err)
	}
	content := bytes.Repeat([]byte("doomed but wanted again "), 50000)
	id := digest.Of(content)
	if _, err := s.PutBytes(ctx, id, content); err != nil {
		t.Fatal(err)
	}
	// A gc marked the object, and its sweep is under way: its marker
	// names the pending deletion, and its lock is live.
	now := time.Now().UTC()
	gcLock := newLockInfo(LockExclusive, "gc", now)
	if err := s.writeLock(ctx, gcLock); err != nil {
		t.Fatal(err)
	}
	p := &pendingDeletion{Version: pendingVersion, Marked: now, GCLock: gcLock.Key, Complete: true, Waits: []string{},
		Loose: []pendingObject{{Name: s.seal.looseName(id), Size: 1}}, Key: pendingKey(now, "t")}
	if err := s.writePending(ctx, p); err != nil {
		t.Fatal(err)
	}
	if err := s.writeGCMarker(ctx, gcLock.Key, []string{p.Key}); err != nil {
		t.Fatal(err)
	}

	lk, err := s.Lock(ctx, LockShared, LockOptions{Purpose: "backup"})
	if err != nil {
		t.Fatal(err)
	}
	defer lk.Unlock()
	if has, err := s.Has(ctx, id); err != nil || has {
		t.Fatalf("a writer found a doomed object: %v %v", has, err)
	}
	if has, err := s.LookupAll(ctx, []digest.Digest{id}); err != nil || !has[0].Found {
		t.Fatalf("a reader did not find a doomed object that is still stored: %v %v", has, err)
	}
	lockKey := lk.info.Key
	written := make(chan error, 1)
	go func() {
		_, err := s.PutBytes(ctx, id, content)
		written <- err
	}()
	// The lock says so before anything is written.
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(5 * time.Millisecond) {
		l, err := s.readLock(ctx, lockKey)
		if err == nil && l.Resurrects {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the lock never said its holder writes doomed objects again")
		}
	}
	select {
	case err := <-written:
		t.Fatalf("the doomed object was written during the sweep (%v)", err)
	case <-time.After(1500 * time.Millisecond):
	}
	// The sweep ends (its gc drops its lock): the write goes on.
	if err := mem.Delete(ctx, gcLock.Key); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-written:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(time.Minute):
		t.Fatal("the write did not go on after the sweep ended")
	}
}

func TestDecodePendingRefusesHostileInput(t *testing.T) {
	good := pendingDeletion{Version: 1, GCLock: "locks/exclusive/20260101T000000Z-ab.json", Complete: true, Waits: []string{}}
	for name, edit := range map[string]func(p map[string]any){
		"gc lock outside locks/": func(p map[string]any) { p["gc_lock"] = "objects/aa/bb" },
		"wait for a path":        func(p map[string]any) { p["waits"] = []string{"locks/shared/../../config.json"} },
		"version":                func(p map[string]any) { p["version"] = 2 },
		"freed beyond size": func(p map[string]any) {
			p["packs"] = []map[string]any{{"id": digest.Of(nil).String(), "size": 1, "freed": 2}}
		},
		"unknown field": func(p map[string]any) { p["delete"] = "everything" },
	} {
		data, _ := json.Marshal(good)
		var m map[string]any
		json.Unmarshal(data, &m)
		edit(m)
		data, _ = json.Marshal(m)
		if _, err := decodePending(data); err == nil || !strings.Contains(err.Error(), "pending deletion") {
			t.Errorf("%s: %v", name, err)
		}
	}
	data, _ := json.Marshal(good)
	if _, err := decodePending(data); err != nil {
		t.Fatalf("a good pending deletion: %v", err)
	}
}
