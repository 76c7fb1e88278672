package hashstore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"

	"golang.org/x/sync/errgroup"

	"github.com/deltabackup/deltabackup/snapshot/digest"
)

// Kinds of problems Verify reports.
const (
	ProblemRecord  = "damaged record" // a backup record cannot be read or decoded
	ProblemTree    = "damaged tree"   // a tree of a backup is missing, corrupt or invalid
	ProblemMissing = "missing object" // an object a backup references is not stored
	ProblemCorrupt = "corrupt object" // an object does not decode or hash to its key
	ProblemKey     = "damaged key"    // a key file does not hash to its name, or does not parse
)

// maxUsersListed bounds the files named per problem object, so one
// damaged object shared by a million files does not flood the report.
const maxUsersListed = 100

// VerifyOptions selects what Verify checks.
type VerifyOptions struct {
	// Referrer says what each backup references (required).
	Referrer Referrer
	// Backups to check (names or "latest"); all when empty.
	Backups []string
	// Filter limits "all" to the backups of a node or source, and says
	// which "latest" is meant.
	Filter BackupFilter
	// ReadData reads every referenced object and checks that it decodes
	// and hashes to its key; otherwise only presence is checked.
	ReadData bool
	// Subset, with ReadData, reads only part of the objects (whole packs
	// and loose objects): see Subset. Presence is checked for all.
	Subset Subset
	// Parallel is how many objects are read at once with ReadData.
	Parallel int
	// Reading, when set, is called with the number of objects before
	// ReadData reads them; Progress with the bytes of each object read.
	Reading  func(objects int)
	Progress func(bytes int64)
}

// Problem is one thing Verify found wrong.
type Problem struct {
	Kind   string        `json:"kind"`
	Backup string        `json:"backup,omitempty"` // for damaged records and trees
	Key    string        `json:"key,omitempty"`    // for damaged key files: keys/<id>
	ID     digest.Digest `json:"hexdigest,omitzero"`
	Files  []string      `json:"files,omitempty"` // "backup:path" of files that use the object
	// MoreFiles counts the files beyond those listed.
	MoreFiles int    `json:"more_files,omitempty"`
	Err       string `json:"error"`
}

func (p Problem) String() string {
	var b strings.Builder
	b.WriteString(p.Kind)
	if p.Backup != "" {
		fmt.Fprintf(&b, " in backup %s", p.Backup)
	}
	if p.Key != "" {
		fmt.Fprintf(&b, " %s", p.Key)
	}
	if !p.ID.IsZero() {
		fmt.Fprintf(&b, " %s", p.ID)
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
	Backups int `json:"backups"`
	Objects int `json:"objects"` // distinct objects referenced, trees included
	Packs   int `json:"packs"`
	// Subset is what ReadData read ("all", "n/m" or "p%"), ReadObjects how
	// many objects that was.
	Subset      string    `json:"subset,omitempty"`
	ReadObjects int       `json:"read_objects"`
	ReadBytes   int64     `json:"read_bytes"`
	Problems    []Problem `json:"problems"`
}

// OK reports whether Verify found nothing wrong.
func (r *VerifyReport) OK() bool { return len(r.Problems) == 0 }

// objectUse is who references an object: the backups whose tree it is, or files.
type objectUse struct {
	treeOf []string
	files  []string
	more   int
}

// Verify checks that the backups' records decode, that their trees
// and every object they reference are stored (in batches: one listing or
// a HEAD per object, by cost, and one listing of the packs), and with
// ReadData that each object decodes and hashes to its key. Problems are
// collected, not returned as errors: the error is for a repository that
// cannot be checked at all (unreachable storage, say).
//
// It asks the storage, not the local cache of known objects, so call it
// on a Store without a cache directory.
func (s *Store) Verify(ctx context.Context, opts VerifyOptions) (*VerifyReport, error) {
	if opts.Referrer == nil {
		return nil, ErrNoReferrer
	}
	// Checked against the repository as it is now: a Store used before
	// may hold a pack index from before other writers added packs or a
	// gc removed some.
	s.forgetObjects()
	rep := &VerifyReport{Problems: []Problem{}}
	// Every key file, not only the one this store opened with (or the
	// key cache stood in for): a damaged one would fail its password.
	if s.Encrypted() {
		ids, err := s.keyIDs(ctx)
		if err != nil {
			return nil, err
		}
		for _, id := range ids {
			if _, err := s.readKeyFile(ctx, id); errors.Is(err, ErrCorrupt) {
				rep.Problems = append(rep.Problems, Problem{Kind: ProblemKey, Key: keysPrefix + id, Err: err.Error()})
			} else if err != nil {
				return nil, err
			}
		}
	}
	names, err := s.verifyNames(ctx, opts.Backups, opts.Filter)
	if err != nil {
		return nil, err
	}
	uses := map[digest.Digest]*objectUse{}
	bad := map[digest.Digest]string{} // id → problem kind
	errs := map[digest.Digest]string{}
	use := func(id digest.Digest) *objectUse {
		u := uses[id]
		if u == nil {
			u = &objectUse{}
			uses[id] = u
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
		var lastMetadata digest.Digest
		err = opts.Referrer.References(ctx, rec, func(r Ref) error {
			u := use(r.ID)
			switch {
			case r.Metadata:
				lastMetadata = r.ID
				u.treeOf = append(u.treeOf, rec.Name)
			case len(u.files) < maxUsersListed:
				u.files = append(u.files, rec.Name+":"+r.Path)
			default:
				u.more++
			}
			return nil
		})
		if err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			// A missing or corrupt metadata object (the last one read) is
			// reported with the objects, once for every backup that
			// shares it.
			switch {
			case errors.Is(err, ErrNotFound) && !lastMetadata.IsZero():
				bad[lastMetadata], errs[lastMetadata] = ProblemMissing, err.Error()
			case errors.Is(err, ErrCorrupt) && !lastMetadata.IsZero():
				bad[lastMetadata], errs[lastMetadata] = ProblemCorrupt, err.Error()
			default:
				rep.Problems = append(rep.Problems, Problem{Kind: ProblemTree, Backup: rec.Name, ID: rec.Root, Err: err.Error()})
			}
		}
	}
	ids := make([]digest.Digest, 0, len(uses))
	for id := range uses {
		ids = append(ids, id)
	}
	slices.SortFunc(ids, digest.Compare)
	rep.Objects = len(ids)

	found, units, packs, err := s.verifyPresence(ctx, ids, bad, errs)
	if err != nil {
		return nil, err
	}
	rep.Packs = packs
	if opts.ReadData {
		rep.Subset = opts.Subset.String()
		if !opts.Subset.IsZero() {
			// Many objects share a pack: each unit is decided once.
			in := map[string]bool{}
			chosen := found[:0:0]
			for i, h := range found {
				take, known := in[units[i]]
				if !known {
					take = opts.Subset.Contains(units[i])
					in[units[i]] = take
				}
				if take {
					chosen = append(chosen, h)
				}
			}
			found = chosen
		}
		rep.ReadObjects = len(found)
		n, err := s.verifyData(ctx, found, opts, bad, errs)
		rep.ReadBytes = n
		if err != nil {
			return nil, err
		}
	}
	for _, id := range ids {
		kind, ok := bad[id]
		if !ok {
			continue
		}
		u := uses[id]
		for _, b := range u.treeOf {
			rep.Problems = append(rep.Problems, Problem{Kind: ProblemTree, Backup: b, ID: id, Err: kind + ": " + errs[id]})
		}
		if len(u.files) > 0 {
			rep.Problems = append(rep.Problems, Problem{Kind: kind, ID: id, Files: u.files, MoreFiles: u.more, Err: errs[id]})
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
	if err != nil || f.IsZero() {
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
// missing or too short, and returns those that are there, each with the
// key of the unit it is read in (its pack's, or its own).
func (s *Store) verifyPresence(ctx context.Context, ids []digest.Digest, bad, errs map[digest.Digest]string) (found []digest.Digest, units []string, packs int, err error) {
	infos, err := s.LookupAll(ctx, ids)
	if err != nil {
		return nil, nil, 0, fmt.Errorf("look up objects: %w", err)
	}
	packSizes := map[string]int64{}
	err = s.backend.List(ctx, "packs/", func(info Info) error {
		packSizes[info.Key] = info.Size
		return nil
	})
	if err != nil {
		return nil, nil, 0, fmt.Errorf("list packs: %w", err)
	}
	usedPacks := map[string]bool{}
	for i, h := range ids {
		if _, known := bad[h]; known {
			continue
		}
		if !infos[i].Found {
			bad[h], errs[h] = ProblemMissing, "not in the repository"
			continue
		}
		unit := s.ObjectKey(h)
		if infos[i].Packed {
			loc, err := s.Locate(ctx, h)
			if err != nil {
				return nil, nil, 0, err
			}
			unit = loc.Key
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
		units = append(units, unit)
	}
	return found, units, len(usedPacks), nil
}

// verifyData reads every object in found through the verifying readers.
func (s *Store) verifyData(ctx context.Context, found []digest.Digest, opts VerifyOptions, bad, errs map[digest.Digest]string) (int64, error) {
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
			return s.GetMany(gctx, part, func(h digest.Digest, r io.Reader, err error) error {
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
