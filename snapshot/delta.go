package snapshot

import (
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"

	"github.com/deltabackup/deltabackup/snapshot/digest"
)

// Incremental manifests let a backup of a million files whose watcher saw
// a hundred change store a manifest of a hundred entries: the whole
// manifest is its base plus what changed (Apply). Each list is merged in
// one pass over sorted paths, so applying costs a copy of the base, never
// a sort.

// validateIncremental checks the fields only an incremental manifest has.
func (m *Manifest) validateIncremental() error {
	if m.BaseManifest.IsZero() {
		return nil
	}
	if m.ChainDepth < 1 || m.ChainDepth > MaxChainDepth {
		return fmt.Errorf("manifest chain_depth %d: want 1 to %d", m.ChainDepth, MaxChainDepth)
	}
	sorted := func(kind string, paths []string) error {
		for i, p := range paths {
			if err := ValidatePath(p); err != nil {
				return fmt.Errorf("manifest removed %s entry: %w", kind, err)
			}
			if i > 0 && paths[i-1] >= p {
				return fmt.Errorf("manifest removed %s are not sorted at %q", kind, p)
			}
		}
		return nil
	}
	if !slices.IsSortedFunc(m.Dirs, func(a, b Dir) int { return strings.Compare(a.RelativePath, b.RelativePath) }) ||
		!slices.IsSorted(m.EmptyDirs) ||
		!slices.IsSortedFunc(m.Symlinks, func(a, b Symlink) int { return strings.Compare(a.RelativePath, b.RelativePath) }) {
		return errors.New("incremental manifest: dirs, empty_dirs and symlinks must be sorted")
	}
	if r := m.Removed; r != nil {
		for _, l := range []struct {
			kind  string
			paths []string
		}{{"files", r.Files}, {"dirs", r.Dirs}, {"empty_dirs", r.EmptyDirs}, {"symlinks", r.Symlinks}} {
			if err := sorted(l.kind, l.paths); err != nil {
				return err
			}
		}
	}
	return nil
}

// Apply returns the whole manifest that the incremental manifest delta
// describes on top of base (a whole manifest, as Apply returns it). The
// header (times, globs, root, node) is delta's. The result is not
// validated; readers validate it once at the end of a chain.
func Apply(base, delta *Manifest) (*Manifest, error) {
	if delta.BaseManifest.IsZero() {
		return nil, errors.New("apply: manifest is not incremental")
	}
	if base.ChainDepth != delta.ChainDepth-1 {
		return nil, fmt.Errorf("incremental manifest of chain depth %d on a base of depth %d", delta.ChainDepth, base.ChainDepth)
	}
	out := *delta
	out.BaseManifest, out.Removed = digest.Digest{}, nil
	r := delta.Removed
	if r == nil {
		r = &Removed{}
	}
	var dropped []File
	var err error
	if out.Files, dropped, err = applyList(base.Files, delta.Files, r.Files, filePath, "file"); err != nil {
		return nil, err
	}
	if out.Dirs, _, err = applyList(base.Dirs, delta.Dirs, r.Dirs, dirPath, "dir"); err != nil {
		return nil, err
	}
	if out.EmptyDirs, _, err = applyList(base.EmptyDirs, delta.EmptyDirs, r.EmptyDirs, func(s *string) string { return *s }, "empty dir"); err != nil {
		return nil, err
	}
	if out.Symlinks, _, err = applyList(base.Symlinks, delta.Symlinks, r.Symlinks, symlinkPath, "symlink"); err != nil {
		return nil, err
	}
	out.Hashes = nextHashes(base.Hashes, dropped, delta.Files, out.Files)
	return &out, nil
}

func filePath(f *File) string       { return f.RelativePath }
func dirPath(d *Dir) string         { return d.RelativePath }
func symlinkPath(s *Symlink) string { return s.RelativePath }

// applyList merges base, the entries that replace or join it (changed)
// and the paths it loses (removed); all three are sorted. It also returns
// the base entries that were replaced or removed.
func applyList[T any](base, changed []T, removed []string, key func(*T) string, kind string) (out, dropped []T, err error) {
	out = make([]T, 0, len(base)+len(changed)-len(removed))
	i, j, k := 0, 0, 0
	for i < len(base) || j < len(changed) {
		switch {
		case j == len(changed) || (i < len(base) && key(&base[i]) < key(&changed[j])):
			p := key(&base[i])
			for k < len(removed) && removed[k] < p {
				return nil, nil, fmt.Errorf("incremental manifest removes %s %q, which its base does not have", kind, removed[k])
			}
			if k < len(removed) && removed[k] == p {
				dropped = append(dropped, base[i])
				k++
			} else {
				out = append(out, base[i])
			}
			i++
		default:
			p := key(&changed[j])
			if k < len(removed) && removed[k] <= p {
				return nil, nil, fmt.Errorf("incremental manifest both removes and lists %s %q, or removes one its base does not have", kind, removed[k])
			}
			if i < len(base) && key(&base[i]) == p {
				dropped = append(dropped, base[i])
				i++
			}
			out = append(out, changed[j])
			j++
		}
	}
	if k < len(removed) {
		return nil, nil, fmt.Errorf("incremental manifest removes %s %q, which its base does not have", kind, removed[k])
	}
	return out, dropped, nil
}

// nextHashes is the Hashes of files, a manifest made from one whose hashes
// were base by dropping the files dropped and adding the files added,
// without sorting or hashing every file again: only contents that may
// have lost their last file are looked for among the files.
func nextHashes(base []Hash, dropped, added, files []File) []Hash {
	inBase := func(h digest.Digest) bool {
		i := sort.Search(len(base), func(i int) bool { return digest.Compare(base[i].Hexdigest, h) >= 0 })
		return i < len(base) && base[i].Hexdigest == h
	}
	addedSet := map[digest.Digest]bool{}
	var fresh []Hash
	for _, f := range added {
		if f.Embedded() || addedSet[f.Hexdigest] {
			continue
		}
		addedSet[f.Hexdigest] = true
		if !inBase(f.Hexdigest) {
			fresh = append(fresh, Hash{Hexdigest: f.Hexdigest, Size: f.FileSize})
		}
	}
	slices.SortFunc(fresh, func(a, b Hash) int { return digest.Compare(a.Hexdigest, b.Hexdigest) })
	// Contents of dropped files that no added file has may be unreferenced
	// now; a 16-bit filter on the first bytes keeps the scan over every
	// file to a compare for almost all of them.
	maybeGone := map[digest.Digest]bool{}
	var filter [1 << 16 / 64]uint64
	for _, f := range dropped {
		if f.Embedded() || addedSet[f.Hexdigest] {
			continue
		}
		if inBase(f.Hexdigest) && !maybeGone[f.Hexdigest] {
			maybeGone[f.Hexdigest] = true
			b := f.Hexdigest.Prefix16()
			filter[b/64] |= 1 << (b % 64)
		}
	}
	if len(maybeGone) > 0 {
		for i := range files {
			h := files[i].Hexdigest
			if h.IsZero() {
				continue
			}
			if b := h.Prefix16(); filter[b/64]&(1<<(b%64)) != 0 && maybeGone[h] {
				delete(maybeGone, h)
				if len(maybeGone) == 0 {
					break
				}
			}
		}
	}
	out := make([]Hash, 0, len(base)+len(fresh)-len(maybeGone))
	j := 0
	for _, h := range base {
		for j < len(fresh) && digest.Compare(fresh[j].Hexdigest, h.Hexdigest) < 0 {
			out = append(out, fresh[j])
			j++
		}
		if !maybeGone[h.Hexdigest] {
			out = append(out, h)
		}
	}
	return append(out, fresh[j:]...)
}

func nilIfEmpty[T any](l []T) []T {
	if len(l) == 0 {
		return nil
	}
	return l
}

// keepSet answers, for paths asked in sorted order, whether a path lies at
// or below one of the kept paths: the entries an incremental snapshot
// carries over from its base.
type keepSet struct {
	iv []keepInterval
	at int
}

// keepInterval is the path lo itself (point) or the paths in [lo, hi):
// everything below a kept path p lies in [p+"/", p+"0"), '0' being the
// byte after '/'.
type keepInterval struct {
	lo, hi string
	point  bool
}

func newKeepSet(paths []string) *keepSet {
	iv := make([]keepInterval, 0, 2*len(paths))
	for _, p := range paths {
		iv = append(iv, keepInterval{lo: p, point: true}, keepInterval{lo: p + "/", hi: p + "0"})
	}
	slices.SortFunc(iv, func(a, b keepInterval) int { return strings.Compare(a.lo, b.lo) })
	return &keepSet{iv: iv}
}

// restart begins a new ascending sequence of questions.
func (k *keepSet) restart() { k.at = 0 }

func (k *keepSet) has(p string) bool {
	for k.at < len(k.iv) {
		v := &k.iv[k.at]
		if (v.point && v.lo >= p) || (!v.point && v.hi > p) {
			break
		}
		k.at++
	}
	if k.at == len(k.iv) {
		return false
	}
	v := &k.iv[k.at]
	if v.point {
		return v.lo == p
	}
	return v.lo <= p
}

// carryList merges the base entries that keep has with the walked ones
// (sorted, and never at a kept path), and sorts what differs from the base
// into changed, removed and dropped (base entries not carried). same
// reports whether a walked entry equals the base's entry at its path, and
// may copy what the walk could not know from the base entry.
func carryList[T any](base, walked []T, keep *keepSet, key func(*T) string, same func(base, walked *T) bool) (out, changed []T, removed []string, dropped []T, carried int) {
	keep.restart()
	out = make([]T, 0, len(base)+len(walked))
	i, j := 0, 0
	for i < len(base) || j < len(walked) {
		if j == len(walked) || (i < len(base) && key(&base[i]) < key(&walked[j])) {
			p := key(&base[i])
			if keep.has(p) {
				out = append(out, base[i])
				carried++
			} else {
				dropped = append(dropped, base[i])
				removed = append(removed, p)
			}
			i++
			continue
		}
		w := walked[j]
		if i < len(base) && key(&base[i]) == key(&w) {
			dropped = append(dropped, base[i])
			if !same(&base[i], &w) {
				changed = append(changed, w)
			}
			i++
		} else {
			changed = append(changed, w)
		}
		out = append(out, w)
		j++
	}
	return out, changed, removed, dropped, carried
}

// sameFileEntry reports whether a walked file is the base's, copying the
// stored size the walk cannot know.
func sameFileEntry(b, w *File) bool {
	if b.FileSize != w.FileSize || b.MtimeNs != w.MtimeNs || b.Mode != w.Mode || b.Hexdigest != w.Hexdigest ||
		b.ContentB64 != w.ContentB64 || b.ShouldBeBundled != w.ShouldBeBundled || len(b.Chunks)+len(w.Chunks) > 0 {
		return false
	}
	w.StoredFileSize = b.StoredFileSize
	return true
}

// finishIncremental makes m (holding the entries walked in this run) the
// whole manifest of an incremental snapshot of base, and returns the
// incremental manifest of the difference and how many files were carried
// over unexamined.
func finishIncremental(m, base *Manifest, kept []string) (*Manifest, int) {
	keep := newKeepSet(kept)
	walked := m.Files
	d := *m
	d.Removed = &Removed{}
	var droppedFiles []File
	var carried int
	m.Files, d.Files, d.Removed.Files, droppedFiles, carried = carryList(base.Files, walked, keep, filePath, sameFileEntry)
	m.Dirs, d.Dirs, d.Removed.Dirs, _, _ = carryList(base.Dirs, m.Dirs, keep, dirPath, func(b, w *Dir) bool { return *b == *w })
	m.EmptyDirs, d.EmptyDirs, d.Removed.EmptyDirs, _, _ = carryList(base.EmptyDirs, m.EmptyDirs, keep, func(s *string) string { return *s }, func(b, w *string) bool { return true })
	m.Symlinks, d.Symlinks, d.Removed.Symlinks, _, _ = carryList(base.Symlinks, m.Symlinks, keep, symlinkPath, func(b, w *Symlink) bool { return *b == *w })
	// A full walk leaves the lists it found nothing for nil.
	m.Dirs, m.EmptyDirs, m.Symlinks = nilIfEmpty(m.Dirs), nilIfEmpty(m.EmptyDirs), nilIfEmpty(m.Symlinks)
	m.Hashes = nextHashes(base.Hashes, droppedFiles, walked, m.Files)
	d.SetHashes()
	return &d, carried
}
