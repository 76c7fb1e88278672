package hashstore

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// Retainer is a backend that can hold keys under a retention period (S3
// Object Lock): until then a key can be neither deleted nor overwritten,
// by anyone, whatever their credentials. gc leaves such keys alone, and
// forget and key remove refuse them with ErrRetained.
type Retainer interface {
	// Retains reports whether the repository uses retention (its config
	// or this command's flags set one); when it does not, keys are not
	// asked about, which would cost a request each.
	Retains() bool
	// RetainedUntil returns when the retention of key ends (zero: none).
	RetainedUntil(ctx context.Context, key string) (time.Time, error)
}

// RetentionSetter is a backend that can put what it writes under a
// retention period (S3 Object Lock). Mode is "compliance" or "governance".
type RetentionSetter interface {
	SetRetention(d time.Duration, mode string) error
}

// applyObjectLock sets the retention a repository's config asks for on
// its backend (raising, never lowering, one its flags set).
func applyObjectLock(b Backend, cfg Config) error {
	if cfg.ObjectLock == "" {
		return nil
	}
	d, err := time.ParseDuration(cfg.ObjectLock)
	if err != nil || d <= 0 {
		return fmt.Errorf("config object_lock %q is not a duration: %w", cfg.ObjectLock, ErrConfigAltered)
	}
	rs, ok := As[RetentionSetter](b)
	if !ok {
		return fmt.Errorf("the repository keeps what it stores under object lock for %s, which this storage cannot do (only s3://)", d)
	}
	return rs.SetRetention(d, cfg.ObjectLockMode)
}

// ErrRetained: a key is under a retention period (Object Lock) and
// cannot be deleted yet.
var ErrRetained = errors.New("under object lock")

// retainedUntil reports whether key is retained now, and until when.
func (s *Store) retainedUntil(ctx context.Context, key string) (time.Time, bool, error) {
	r, ok := As[Retainer](s.backend)
	if !ok || !r.Retains() {
		return time.Time{}, false, nil
	}
	until, err := r.RetainedUntil(ctx, key)
	if err != nil {
		if errors.Is(err, ErrNotFound) {
			return time.Time{}, false, nil
		}
		return time.Time{}, false, fmt.Errorf("retention of %s: %w", key, err)
	}
	return until, until.After(time.Now()), nil
}

// checkDeletable refuses a key that is retained, saying until when.
func (s *Store) checkDeletable(ctx context.Context, what, key string) error {
	until, retained, err := s.retainedUntil(ctx, key)
	if err != nil {
		return err
	}
	if retained {
		return fmt.Errorf("%s is %w until %s", what, ErrRetained, until.UTC().Format(time.RFC3339))
	}
	return nil
}

// keepRetained changes a gc plan so that it deletes and rewrites nothing
// that is retained: packs keep their fate "kept", index files naming a
// retained index's packs stay, loose objects stay. It returns how many
// keys it kept and the latest retention among them.
func (s *Store) keepRetained(ctx context.Context, plan *gcPlan) (int, time.Time, error) {
	if r, ok := As[Retainer](s.backend); !ok || !r.Retains() {
		return 0, time.Time{}, nil
	}
	kept := 0
	var latest time.Time
	check := func(key string) (bool, error) {
		until, retained, err := s.retainedUntil(ctx, key)
		if retained {
			kept++
			if until.After(latest) {
				latest = until
			}
		}
		return retained, err
	}
	for _, p := range plan.packs {
		if p.fate == keepPack {
			continue
		}
		retained, err := check(p.key)
		if err != nil {
			return 0, time.Time{}, err
		}
		if retained {
			p.fate = keepPack
		}
	}
	// An index file that cannot be rewritten keeps naming its packs: they
	// must stay too, or readers would take objects of a deleted pack as
	// stored.
	for key, entries := range plan.indexFiles {
		touched := false
		for _, pe := range entries {
			if p := plan.packs[pe.id]; p == nil || p.fate != keepPack {
				touched = true
			}
		}
		if !touched {
			continue
		}
		retained, err := check(key)
		if err != nil {
			return 0, time.Time{}, err
		}
		if !retained {
			continue
		}
		for _, pe := range entries {
			if p := plan.packs[pe.id]; p != nil {
				p.fate = keepPack
			}
		}
		plan.keptIndex[key] = true
	}
	var dead []string
	for _, key := range plan.deadLoose {
		retained, err := check(key)
		if err != nil {
			return 0, time.Time{}, err
		}
		if !retained {
			dead = append(dead, key)
		} else {
			plan.deadBytes -= plan.deadSizes[key]
		}
	}
	plan.deadLoose = dead
	return kept, latest, nil
}
