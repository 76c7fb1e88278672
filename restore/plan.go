package restore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sort"
	"sync"

	"github.com/deltabackup/deltabackup/hashstore"
	"github.com/deltabackup/deltabackup/snapshot"
	"github.com/deltabackup/deltabackup/snapshot/digest"
)

// Source is somewhere objects can be fetched from by id: a
// repository (StoreSource) or a live peer (hashstore/peer.Client).
type Source interface {
	// String names the source in plans and messages; it must not reveal
	// credentials.
	String() string
	// Missing returns which of ids the source does not hold.
	Missing(ctx context.Context, ids []digest.Digest) ([]digest.Digest, error)
	// Get opens the content of one object. Restore verifies what it reads
	// whatever the source promises.
	Get(ctx context.Context, id digest.Digest) (io.ReadCloser, error)
}

// BatchSource is a Source that fetches many objects in one call, with as
// few reads as it can (a repository reads neighbouring packed objects with
// one ranged get). Restore uses it for small objects. fn is called once per
// id with the content or the error that kept it from being read.
type BatchSource interface {
	Source
	GetMany(ctx context.Context, ids []digest.Digest, fn func(id digest.Digest, r io.Reader, err error) error) error
}

// StoreSource makes a repository a Source.
func StoreSource(s *hashstore.Store) Source { return storeSource{s} }

type storeSource struct{ s *hashstore.Store }

func (s storeSource) String() string { return s.s.String() }

func (s storeSource) Missing(ctx context.Context, ids []digest.Digest) ([]digest.Digest, error) {
	return s.s.Missing(ctx, ids)
}

func (s storeSource) Get(ctx context.Context, id digest.Digest) (io.ReadCloser, error) {
	return s.s.Get(ctx, id)
}

func (s storeSource) GetMany(ctx context.Context, ids []digest.Digest, fn func(digest.Digest, io.Reader, error) error) error {
	return s.s.GetMany(ctx, ids, fn)
}

// Plan assigns each needed content to a source.
type Plan struct {
	Sources []Source
	// Holders lists, per id, the indexes of the sources that hold
	// it, the assigned one first: the order in which to try them.
	Holders map[digest.Digest][]int
	// Bytes is the number of content bytes assigned to each source.
	Bytes []int64
	// Objects is the number of contents assigned to each source.
	Objects []int
	// Unavailable contents are held by no source.
	Unavailable []snapshot.Hash
	// SourceErrors holds, per source, why it could not be asked what it
	// holds (nil when it answered); such a source gets no work.
	SourceErrors []error
}

// MakePlan asks every source which of needed it holds and assigns each
// content, largest first, to the least-loaded source that holds it.
func MakePlan(ctx context.Context, sources []Source, needed []snapshot.Hash) (*Plan, error) {
	if len(sources) == 0 {
		return nil, fmt.Errorf("restore needs at least one source")
	}
	ids := make([]digest.Digest, len(needed))
	for i, h := range needed {
		ids[i] = h.Hexdigest
	}
	// Sources are asked at once: a slow or dead peer costs its timeout
	// once, not once per source after it.
	sourceErrors := make([]error, len(sources))
	lacking := make([]map[digest.Digest]bool, len(sources))
	var wg sync.WaitGroup
	for i, src := range sources {
		wg.Go(func() {
			missing, err := src.Missing(ctx, ids)
			if err != nil {
				// A dead peer must not stop the restore: the others may
				// hold everything.
				sourceErrors[i] = fmt.Errorf("ask %s which contents it holds: %w", src, err)
				return
			}
			lacks := make(map[digest.Digest]bool, len(missing))
			for _, h := range missing {
				lacks[h] = true
			}
			lacking[i] = lacks
		})
	}
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	holders := make(map[digest.Digest][]int, len(needed))
	answered := 0
	for i := range sources {
		if sourceErrors[i] != nil {
			continue
		}
		answered++
		for _, h := range ids {
			if !lacking[i][h] {
				holders[h] = append(holders[h], i)
			}
		}
	}
	if answered == 0 {
		return nil, errors.Join(sourceErrors...)
	}
	order := append([]snapshot.Hash(nil), needed...)
	sort.SliceStable(order, func(i, j int) bool { return order[i].Size > order[j].Size })
	plan := &Plan{Sources: sources, Holders: make(map[digest.Digest][]int, len(needed)), Bytes: make([]int64, len(sources)),
		Objects: make([]int, len(sources)), SourceErrors: sourceErrors}
	for _, h := range order {
		hs := holders[h.Hexdigest]
		if len(hs) == 0 {
			plan.Unavailable = append(plan.Unavailable, h)
			continue
		}
		best := 0
		for k := 1; k < len(hs); k++ {
			if plan.Bytes[hs[k]] < plan.Bytes[hs[best]] {
				best = k
			}
		}
		hs[0], hs[best] = hs[best], hs[0]
		plan.Holders[h.Hexdigest] = hs
		plan.Bytes[hs[0]] += h.Size
		plan.Objects[hs[0]]++
	}
	return plan, nil
}
