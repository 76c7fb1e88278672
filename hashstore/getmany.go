package hashstore

import (
	"context"
	"fmt"
	"io"
	"sort"

	"github.com/deltabackup/deltabackup/snapshot/digest"
)

// Reads of packed objects are coalesced: neighbours in one pack closer than
// coalesceGap are fetched with one ranged read of at most coalesceSpan.
const (
	coalesceGap  = 256 << 10
	coalesceSpan = 32 << 20
)

// GetMany fetches many objects with as few reads as possible: packed
// objects that lie near each other in a pack come from one ranged read.
// fn is called once per distinct id, in the calling goroutine, with
// a reader of the verified content (valid only during the call) or with
// the error that kept the object from being read. A read error reaches fn
// when fn reads; if fn returns an error, GetMany stops and returns it.
func (s *Store) GetMany(ctx context.Context, ids []digest.Digest, fn func(id digest.Digest, r io.Reader, err error) error) error {
	ix, err := s.loadIndex(ctx)
	if err != nil {
		return err
	}
	type located struct {
		id  digest.Digest
		loc packLocation
	}
	byPack := map[uint32][]located{}
	var loose []digest.Digest
	seen := make(map[digest.Digest]bool, len(ids))
	ix.mu.RLock()
	for _, h := range ids {
		if seen[h] {
			continue
		}
		seen[h] = true
		loc, ok, err := ix.get(h, false)
		if err != nil {
			ix.mu.RUnlock()
			return err
		}
		if ok {
			byPack[loc.pack] = append(byPack[loc.pack], located{h, loc})
		} else {
			loose = append(loose, h)
		}
	}
	packs := make([]uint32, 0, len(byPack))
	keys := make(map[uint32]string, len(byPack))
	for n := range byPack {
		packs = append(packs, n)
		keys[n] = packKey(ix.packs[n])
	}
	ix.mu.RUnlock()
	sort.Slice(packs, func(i, j int) bool { return keys[packs[i]] < keys[packs[j]] })

	single := func(h digest.Digest) error {
		o, err := s.Get(ctx, h)
		if err != nil {
			return fn(h, nil, err)
		}
		defer o.Close()
		return fn(h, o, nil)
	}
	for _, n := range packs {
		objs := byPack[n]
		sort.Slice(objs, func(i, j int) bool { return objs[i].loc.offset < objs[j].loc.offset })
		for start := 0; start < len(objs); {
			end := start + 1
			runStart := int64(objs[start].loc.offset)
			runEnd := runStart + int64(objs[start].loc.length)
			for end < len(objs) {
				next := objs[end].loc
				if int64(next.offset)-runEnd > coalesceGap || int64(next.offset+next.length)-runStart > coalesceSpan {
					break
				}
				runEnd = int64(next.offset + next.length)
				end++
			}
			run := objs[start:end]
			start = end
			if err := ctx.Err(); err != nil {
				return err
			}
			rc, err := s.backend.GetRange(ctx, keys[n], runStart, runEnd-runStart)
			if err != nil {
				for _, o := range run {
					if err := single(o.id); err != nil {
						return err
					}
				}
				continue
			}
			pos := runStart
			for i, o := range run {
				err := s.readRunEntry(rc, &pos, o.loc, o.id, fn)
				if err == errRunBroken {
					// The shared read failed: fetch the rest one by one.
					for _, rest := range run[i+1:] {
						if err := single(rest.id); err != nil {
							rc.Close()
							return err
						}
					}
					break
				}
				if err != nil {
					rc.Close()
					return err
				}
			}
			rc.Close()
		}
	}
	for _, h := range loose {
		if err := single(h); err != nil {
			return err
		}
	}
	return nil
}

var errRunBroken = fmt.Errorf("coalesced read broke off")

// readRunEntry hands the object at loc, read from the shared run reader rc
// positioned at *pos, to fn and leaves rc at the end of the object.
func (s *Store) readRunEntry(rc io.Reader, pos *int64, loc packLocation, id digest.Digest, fn func(digest.Digest, io.Reader, error) error) error {
	if gap := int64(loc.offset) - *pos; gap > 0 {
		if _, err := io.CopyN(io.Discard, rc, gap); err != nil {
			if ferr := fn(id, nil, fmt.Errorf("object %s: %w", id, err)); ferr != nil {
				return ferr
			}
			return errRunBroken
		}
	}
	entry := &io.LimitedReader{R: rc, N: int64(loc.length)}
	*pos = int64(loc.offset + loc.length)
	o, err := s.decodeObject(io.NopCloser(entry), int64(loc.length), id)
	var ferr error
	if err != nil {
		ferr = fn(id, nil, err)
	} else {
		ferr = fn(id, o, nil)
		o.Close()
	}
	if ferr != nil {
		return ferr
	}
	if _, err := io.Copy(io.Discard, entry); err != nil || entry.N > 0 {
		return errRunBroken
	}
	return nil
}
