package hashstore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"sync"

	"golang.org/x/sync/errgroup"

	"github.com/deltabackup/deltabackup/snapshot"
)

// Kinds of problems Verify reports.
const (
	ProblemRecord   = "damaged record"   // a backup record cannot be read or decoded
	ProblemManifest = "damaged manifest" // a record's manifest is missing, corrupt or invalid
	ProblemMissing  = "missing object"   // an object a manifest references is not stored
	ProblemCorrupt  = "corrupt object"   // an object does not decode or hash to its key
)

// maxUsersListed bounds the files named per problem object, so one
// damaged object shared by a million files does not flood the report.
const maxUsersListed = 100

// VerifyOptions selects what Verify checks.
type VerifyOptions struct {
	// Backups to check (names or "latest"); all when empty.
	Backups []string
	// Filter limits "all" to the backups of a node or source, and says
	// which "latest" is meant.
	Filter BackupFilter
	// ReadData reads every referenced object and checks that it decodes
	// and hashes to its key; otherwise only presence is checked.
	ReadData bool
	// Parallel is how many objects are read at once with ReadData.
	Parallel int
	// Reading, when set, is called with the number of objects before
	// ReadData reads them; Progress with the bytes of each object read.
	Reading  func(objects int)
	Progress func(bytes int64)
}

// Problem is one thing Verify found wrong.
type Problem struct {
	Kind      string   `json:"kind"`
	Backup    string   `json:"backup,omitempty"`    // for damaged records and manifests
	Hexdigest string   `json:"hexdigest,omitempty"` // the object concerned
	Files     []string `json:"files,omitempty"`     // "backup:path" of files that use the object
	MoreFiles int      `json:"more_files,omitempty"`
	Err       string   `json:"error"`
}

func (p Problem) String() string {
	var b strings.Builder
	b.WriteString(p.Kind)
	if p.Backup != "" {
		fmt.Fprintf(&b, " in backup %s", p.Backup)
	}
	if p.Hexdigest != "" {
		fmt.Fprintf(&b, " %s", p.Hexdigest)
	}
	fmt.Fprintf(&b, ": %s", p.Err)
	if len(p.Files) > 0 {
		fmt.Fprintf(&b, "; used by %s", strings.Join(p.Files, ", "))
		if p.MoreFiles > 0 {
			fmt.Fprintf(&b, " and %d more", p.MoreFiles)
		}
	}
	return b.String()
}

// VerifyReport is what Verify checked and found.
type VerifyReport struct {
	Backups   int       `json:"backups"`
	Objects   int       `json:"objects"` // distinct objects referenced, manifests included
	Packs     int       `json:"packs"`
	ReadBytes int64     `json:"read_bytes"`
	Problems  []Problem `json:"problems"`
}

// OK reports whether Verify found nothing wrong.
func (r *VerifyReport) OK() bool { return len(r.Problems) == 0 }

// objectUse is who references an object: its manifest's backup, or files.
type objectUse struct {
	manifestOf []string
	files      []string
	more       int
}

// Verify checks that the backups' records decode, that their manifests
// and every object they reference are stored (in batches: one listing or
// a HEAD per object, by cost, and one listing of the packs), and with
// ReadData that each object decodes and hashes to its key. Problems are
// collected, not returned as errors: the error is for a repository that
// cannot be checked at all (unreachable storage, say).
//
// It asks the storage, not the local cache of known objects, so call it
// on a Store without a cache directory.
func (s *Store) Verify(ctx context.Context, opts VerifyOptions) (*VerifyReport, error) {
	// Checked against the repository as it is now: a Store used before
	// may hold a pack index from before other writers added packs or a
	// gc removed some.
	s.forgetObjects()
	rep := &VerifyReport{Problems: []Problem{}}
	names, err := s.verifyNames(ctx, opts.Backups, opts.Filter)
	if err != nil {
		return nil, err
	}
	uses := map[string]*objectUse{}
	bad := map[string]string{} // hexdigest → problem kind
	errs := map[string]string{}
	use := func(h string) *objectUse {
		u := uses[h]
		if u == nil {
			u = &objectUse{}
			uses[h] = u
		}
		return u
	}
	for _, name := range names {
		rec, err := s.Backup(ctx, name, BackupFilter{})
		if err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			rep.Problems = append(rep.Problems, Problem{Kind: ProblemRecord, Backup: name, Err: err.Error()})
			continue
		}
		rep.Backups++
		m, chain, err := s.ManifestChain(ctx, rec)
		for _, h := range chain {
			u := use(h)
			u.manifestOf = append(u.manifestOf, rec.Name)
		}
		if err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			// A missing or corrupt manifest object (the record's or a base
			// of it, the last one read) is reported with the objects, once
			// for every backup that shares it.
			last := chain[len(chain)-1]
			switch {
			case errors.Is(err, ErrNotFound):
				bad[last], errs[last] = ProblemMissing, err.Error()
			case errors.Is(err, ErrCorrupt):
				bad[last], errs[last] = ProblemCorrupt, err.Error()
			default:
				rep.Problems = append(rep.Problems, Problem{Kind: ProblemManifest, Backup: rec.Name, Hexdigest: rec.RootHexdigest, Err: err.Error()})
			}
			continue
		}
		for _, f := range m.Files {
			if f.Embedded() {
				continue
			}
			u := use(f.Hexdigest)
			if len(u.files) < maxUsersListed {
				u.files = append(u.files, rec.Name+":"+f.RelativePath)
			} else {
				u.more++
			}
		}
	}
	hexdigests := make([]string, 0, len(uses))
	for h := range uses {
		hexdigests = append(hexdigests, h)
	}
	sort.Strings(hexdigests)
	rep.Objects = len(hexdigests)

	found, packs, err := s.verifyPresence(ctx, hexdigests, bad, errs)
	if err != nil {
		return nil, err
	}
	rep.Packs = packs
	if opts.ReadData {
		n, err := s.verifyData(ctx, found, opts, bad, errs)
		rep.ReadBytes = n
		if err != nil {
			return nil, err
		}
	}
	for _, h := range hexdigests {
		kind, ok := bad[h]
		if !ok {
			continue
		}
		u := uses[h]
		for _, b := range u.manifestOf {
			rep.Problems = append(rep.Problems, Problem{Kind: ProblemManifest, Backup: b, Hexdigest: h, Err: kind + ": " + errs[h]})
		}
		if len(u.files) > 0 {
			rep.Problems = append(rep.Problems, Problem{Kind: kind, Hexdigest: h, Files: u.files, MoreFiles: u.more, Err: errs[h]})
		}
	}
	return rep, nil
}

// verifyNames resolves the backups to check: the given ones ("latest" as
// the filter says), or every record key in the repository that the filter
// matches; records that cannot be read are included, since no one can
// tell whose they are.
func (s *Store) verifyNames(ctx context.Context, given []string, f BackupFilter) ([]string, error) {
	if len(given) > 0 {
		names := make([]string, 0, len(given))
		for _, name := range given {
			if name == LatestBackup {
				rec, err := s.Backup(ctx, name, f)
				if err != nil {
					return nil, err
				}
				name = rec.Name
			} else if err := ValidateBackupName(name); err != nil {
				return nil, err
			}
			names = append(names, name)
		}
		return names, nil
	}
	all, err := s.backupNames(ctx)
	if err != nil || f == (BackupFilter{}) {
		return all, err
	}
	var names []string
	for _, name := range all {
		rec, err := s.readBackup(ctx, name)
		var damaged *damagedRecordError
		if err != nil && !errors.As(err, &damaged) && !errors.Is(err, ErrNotFound) {
			return nil, err
		}
		if err != nil || f.Match(rec) {
			names = append(names, name)
		}
	}
	return names, nil
}

// verifyPresence marks the objects that are not stored, or whose pack is
// missing or too short, and returns those that are there.
func (s *Store) verifyPresence(ctx context.Context, hexdigests []string, bad, errs map[string]string) (found []string, packs int, err error) {
	infos, err := s.LookupAll(ctx, hexdigests)
	if err != nil {
		return nil, 0, fmt.Errorf("look up objects: %w", err)
	}
	packSizes := map[string]int64{}
	err = s.backend.List(ctx, "packs/", func(info Info) error {
		packSizes[info.Key] = info.Size
		return nil
	})
	if err != nil {
		return nil, 0, fmt.Errorf("list packs: %w", err)
	}
	usedPacks := map[string]bool{}
	for i, h := range hexdigests {
		if _, known := bad[h]; known {
			continue
		}
		if !infos[i].Found {
			bad[h], errs[h] = ProblemMissing, "not in the repository"
			continue
		}
		if infos[i].Packed {
			loc, err := s.Locate(ctx, h)
			if err != nil {
				return nil, 0, err
			}
			usedPacks[loc.Key] = true
			size, ok := packSizes[loc.Key]
			switch {
			case !ok:
				bad[h], errs[h] = ProblemMissing, fmt.Sprintf("its pack %s is missing", loc.Key)
				continue
			case loc.Offset+loc.Length > size:
				bad[h], errs[h] = ProblemCorrupt, fmt.Sprintf("its pack %s is %d bytes, too short to hold it at %d+%d", loc.Key, size, loc.Offset, loc.Length)
				continue
			}
		}
		found = append(found, h)
	}
	return found, len(usedPacks), nil
}

// verifyData reads every object in found through the verifying readers.
func (s *Store) verifyData(ctx context.Context, found []string, opts VerifyOptions, bad, errs map[string]string) (int64, error) {
	parallel := max(opts.Parallel, 1)
	if opts.Reading != nil {
		opts.Reading(len(found))
	}
	var mu sync.Mutex
	var total int64
	g, gctx := errgroup.WithContext(ctx)
	// Contiguous slices of the sorted list keep each worker's packed
	// objects together, so GetMany coalesces their reads.
	per := max((len(found)+parallel-1)/parallel, 1)
	for start := 0; start < len(found); start += per {
		part := found[start:min(start+per, len(found))]
		g.Go(func() error {
			return s.GetMany(gctx, part, func(h string, r io.Reader, err error) error {
				var n int64
				if err == nil {
					n, err = io.Copy(io.Discard, r)
				}
				if opts.Progress != nil {
					opts.Progress(n)
				}
				mu.Lock()
				defer mu.Unlock()
				total += n
				if err != nil {
					if gctx.Err() != nil {
						return gctx.Err()
					}
					kind := ProblemCorrupt
					if errors.Is(err, ErrNotFound) {
						kind = ProblemMissing
					}
					bad[h], errs[h] = kind, err.Error()
					s.logger.Debug("object failed verification", "object", h, "err", err)
				}
				return nil
			})
		})
	}
	err := g.Wait()
	return total, err
}

// Manifest reads and validates the manifest of rec, applying incremental
// manifests to their bases.
func (s *Store) Manifest(ctx context.Context, rec BackupRecord) (*snapshot.Manifest, error) {
	m, _, err := s.ManifestChain(ctx, rec)
	return m, err
}

// ManifestChain is Manifest that also returns the hexdigests of every
// manifest object it read: the record's, then each base down to the
// whole manifest. All of them must stay stored for rec to restore.
func (s *Store) ManifestChain(ctx context.Context, rec BackupRecord) (*snapshot.Manifest, []string, error) {
	var chain []*snapshot.Manifest
	keys := []string{rec.RootHexdigest}
	for {
		key := keys[len(keys)-1]
		m, err := s.readManifest(ctx, key)
		if err != nil {
			var decode *manifestDecodeError
			switch {
			case errors.As(err, &decode):
				return nil, keys, fmt.Errorf("backup %s: manifest %s: %w", rec.Name, key, decode.err)
			case len(keys) > 1:
				return nil, keys, fmt.Errorf("backup %s: read base manifest %s (%d down the chain): %w", rec.Name, key, len(keys)-1, err)
			}
			return nil, keys, fmt.Errorf("backup %s: read manifest: %w", rec.Name, err)
		}
		// Each link is one shallower than the one above it; since an
		// incremental manifest is at most MaxChainDepth deep, this also
		// bounds how many objects are read.
		if n := len(chain); n > 0 && m.ChainDepth != chain[n-1].ChainDepth-1 {
			return nil, keys, fmt.Errorf("backup %s: manifest %s: chain depth %d below a manifest of depth %d; the chain of incremental manifests is broken", rec.Name, key, m.ChainDepth, chain[n-1].ChainDepth)
		}
		chain = append(chain, m)
		if m.BaseManifest == "" {
			break
		}
		keys = append(keys, m.BaseManifest)
	}
	m := chain[len(chain)-1]
	for i := len(chain) - 2; i >= 0; i-- {
		next, err := snapshot.Apply(m, chain[i])
		if err != nil {
			return nil, keys, fmt.Errorf("backup %s: manifest %s: %w", rec.Name, keys[i], err)
		}
		m = next
	}
	if len(chain) > 1 {
		if err := m.Validate(); err != nil {
			return nil, keys, fmt.Errorf("backup %s: manifest %s applied to its bases: %w", rec.Name, rec.RootHexdigest, err)
		}
	}
	return m, keys, nil
}

// manifestDecodeError is a manifest object that was read whole and
// verified but is not a valid manifest.
type manifestDecodeError struct{ err error }

func (e *manifestDecodeError) Error() string { return e.err.Error() }
func (e *manifestDecodeError) Unwrap() error { return e.err }

// readManifest reads and decodes one manifest object as it streams in.
// Its header may not claim more than snapshot.MaxManifestSize, and it may
// not decode to more than snapshot.MaxManifestExpansion times its stored
// bytes: a small object claiming gigabytes costs a little decoding, not
// gigabytes of memory. The object's hash is checked at its end, so a
// manifest is returned only if its every byte was the stored one.
func (s *Store) readManifest(ctx context.Context, hexdigest string) (*snapshot.Manifest, error) {
	o, err := s.Get(ctx, hexdigest)
	if err != nil {
		return nil, err
	}
	defer o.Close()
	if o.Size() > snapshot.MaxManifestSize {
		return nil, &CorruptObjectError{hexdigest, fmt.Sprintf("declares %d bytes, more than a manifest may hold (%d)", o.Size(), int64(snapshot.MaxManifestSize))}
	}
	o.LimitExpansion(snapshot.MaxManifestExpansion, 1<<20)
	m, err := snapshot.ReadManifest(o)
	if err != nil {
		if errors.Is(err, ErrCorrupt) || errors.Is(err, ErrNotFound) || ctx.Err() != nil {
			return nil, err
		}
		// The JSON may be bad because the bytes are: the hash decides.
		if _, rerr := io.Copy(io.Discard, o); rerr != nil {
			return nil, rerr
		}
		return nil, &manifestDecodeError{err}
	}
	return m, nil
}
