package hashstore

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"regexp"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/deltabackup/deltabackup/snapshot/digest"
)

// ErrBackupExists is returned by PutBackup when the name is taken.
var ErrBackupExists = errors.New("backup already exists")

// LatestBackup is the name that Backup resolves to the newest record.
const LatestBackup = "latest"

// BackupRecord names one finished backup. It is written only after every
// object it references, its trees included, is stored.
type BackupRecord struct {
	Version int    `json:"version"`
	Name    string `json:"name"`
	// Root is the id of the backup's root tree (its root hash).
	Root   digest.Digest `json:"root"`
	Node   string        `json:"node,omitempty"`
	Source string        `json:"source,omitempty"`
	Start  time.Time     `json:"start"`
	End    time.Time     `json:"end"`
	// Parent is the backup this one was compared with to find what
	// changed ("" for none).
	Parent string   `json:"parent,omitempty"`
	Tags   []string `json:"tags,omitempty"`
	// Includes and Excludes are the globs the source was read with;
	// MinDeltaFileSize the bundling threshold of its contents.
	Includes         []string    `json:"include_globs,omitempty"`
	Excludes         []string    `json:"exclude_globs,omitempty"`
	MinDeltaFileSize int64       `json:"min_delta_file_size"`
	Stats            BackupStats `json:"stats"`
}

// BackupStats are the figures of one backup run.
type BackupStats struct {
	Files         int64 `json:"files"`
	Dirs          int64 `json:"dirs"`
	Symlinks      int64 `json:"symlinks,omitempty"`
	Specials      int64 `json:"specials,omitempty"`
	TotalBytes    int64 `json:"total_bytes"`
	DataBytes     int64 `json:"data_bytes"`
	EmbeddedFiles int64 `json:"embedded_files"`
	// HashedFiles and HashedBytes were read this run; the rest was known
	// unchanged.
	HashedFiles     int64 `json:"hashed_files"`
	HashedBytes     int64 `json:"hashed_bytes"`
	TreesWritten    int64 `json:"trees_written"`
	UploadedObjects int64 `json:"uploaded_objects"`
	UploadedBytes   int64 `json:"uploaded_bytes"`
	Unreadable      int64 `json:"unreadable"`
	Changed         int64 `json:"changed,omitempty"`
	Skipped         int64 `json:"skipped,omitempty"`
}

const recordVersion = 2

var tagPattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._:=@+-]{0,127}$`)

// ValidateTag checks a backup tag.
func ValidateTag(tag string) error {
	if !tagPattern.MatchString(tag) {
		return fmt.Errorf("invalid tag %q: use 1-128 letters, digits and '._:=@+-', starting with a letter or digit", tag)
	}
	return nil
}

var backupNamePattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)

// ValidateBackupName checks a name given by a user or found in storage.
func ValidateBackupName(name string) error {
	if name == LatestBackup || !backupNamePattern.MatchString(name) {
		return fmt.Errorf("invalid backup name %q: use 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit, and not %q",
			name, LatestBackup)
	}
	return nil
}

// PutBackup writes rec. It refuses a name that is already taken with
// ErrBackupExists. On a backend that can create keys only if absent
// (Creator: a local directory, S3), two writers racing for one name never
// both succeed; elsewhere the name is checked first, which a concurrent
// writer can race (ExclusiveRecords says which applies).
func (s *Store) PutBackup(ctx context.Context, rec BackupRecord) error {
	if err := ValidateBackupName(rec.Name); err != nil {
		return err
	}
	if rec.Root.IsZero() {
		return fmt.Errorf("backup %s: no root", rec.Name)
	}
	rec.Version = recordVersion
	plain, err := json.MarshalIndent(rec, "", "  ")
	if err != nil {
		return err
	}
	data := s.seal.seal(plain, recordAD(rec.Name))
	key := backupKey(rec.Name)
	if c, ok := creatorOf(s.backend); ok {
		err := c.PutIfAbsent(ctx, key, bytes.NewReader(data), int64(len(data)))
		if errors.Is(err, ErrExists) {
			// A retried write may find its own first attempt stored.
			if stored, rerr := s.readRaw(ctx, key); rerr == nil {
				if opened, oerr := s.seal.open(stored, recordAD(rec.Name)); oerr == nil && bytes.Equal(opened, plain) {
					return nil
				}
			}
			return fmt.Errorf("backup %q: %w", rec.Name, ErrBackupExists)
		}
		if err != nil {
			return fmt.Errorf("write backup %s: %w", rec.Name, err)
		}
		return nil
	}
	if _, err := s.backend.Stat(ctx, key); err == nil {
		return fmt.Errorf("backup %q: %w", rec.Name, ErrBackupExists)
	} else if !errors.Is(err, ErrNotFound) {
		return fmt.Errorf("write backup %s: %w", rec.Name, err)
	}
	if err := s.backend.Put(ctx, key, bytes.NewReader(data), int64(len(data))); err != nil {
		return fmt.Errorf("write backup %s: %w", rec.Name, err)
	}
	return nil
}

// ExclusiveRecords reports whether PutBackup creates records only if
// absent. When it does not, callers should pick names that cannot
// collide (upload adds a random suffix to the names it derives).
func (s *Store) ExclusiveRecords() bool { return CanCreate(s.backend) }

// readRaw reads a small key whole: at most maxRecordSize+1 bytes, so a
// caller tells a key that is too large by its length.
func (s *Store) readRaw(ctx context.Context, key string) ([]byte, error) {
	rc, err := s.backend.Get(ctx, key)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	return io.ReadAll(io.LimitReader(rc, maxRecordSize+1))
}

// maxRecordSize bounds how much of a record file is read.
const maxRecordSize = 1 << 20

// DecodeBackupRecord parses and checks a stored record.
func DecodeBackupRecord(data []byte) (BackupRecord, error) {
	var rec BackupRecord
	dec := json.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&rec); err != nil {
		return BackupRecord{}, fmt.Errorf("backup record is not valid JSON: %w", err)
	}
	if rec.Version != recordVersion {
		return BackupRecord{}, fmt.Errorf("backup record %q has unsupported version %d", rec.Name, rec.Version)
	}
	if err := ValidateBackupName(rec.Name); err != nil {
		return BackupRecord{}, err
	}
	if rec.Root.IsZero() {
		return BackupRecord{}, fmt.Errorf("backup record %q: no root", rec.Name)
	}
	if rec.Parent != "" {
		if err := ValidateBackupName(rec.Parent); err != nil {
			return BackupRecord{}, fmt.Errorf("backup record %q: parent: %w", rec.Name, err)
		}
	}
	if len(rec.Tags) > 64 {
		return BackupRecord{}, fmt.Errorf("backup record %q: %d tags, at most 64", rec.Name, len(rec.Tags))
	}
	for _, t := range rec.Tags {
		if err := ValidateTag(t); err != nil {
			return BackupRecord{}, fmt.Errorf("backup record %q: %w", rec.Name, err)
		}
	}
	return rec, nil
}

func (s *Store) readBackup(ctx context.Context, name string) (BackupRecord, error) {
	data, err := s.readRaw(ctx, backupKey(name))
	if errors.Is(err, ErrNotFound) {
		return BackupRecord{}, &noSuchBackupError{name: name}
	}
	if err != nil {
		return BackupRecord{}, fmt.Errorf("read backup %s: %w", name, err)
	}
	if len(data) > maxRecordSize {
		return BackupRecord{}, &damagedRecordError{fmt.Errorf("backup record %s is larger than %d bytes", name, maxRecordSize)}
	}
	data, err = s.seal.open(data, recordAD(name))
	if err != nil {
		return BackupRecord{}, &damagedRecordError{sealError("backup record "+name, err)}
	}
	rec, err := DecodeBackupRecord(data)
	if err != nil {
		return BackupRecord{}, &damagedRecordError{fmt.Errorf("backup %s: %w", name, err)}
	}
	if rec.Name != name {
		return BackupRecord{}, &damagedRecordError{fmt.Errorf("backup %s: record names itself %q", name, rec.Name)}
	}
	return rec, nil
}

// damagedRecordError is a record that was read but is not a valid record.
type damagedRecordError struct{ err error }

func (e *damagedRecordError) Error() string { return e.err.Error() }
func (e *damagedRecordError) Unwrap() error { return e.err }

// Backups returns every backup record, oldest first (by end time, then
// name). A record that cannot be read or decoded is left out with a
// warning naming it, so one damaged record does not hide the others;
// Verify reports it. Storage errors are errors.
func (s *Store) Backups(ctx context.Context) ([]BackupRecord, error) {
	names, err := s.backupNames(ctx)
	if err != nil {
		return nil, err
	}
	records := make([]BackupRecord, 0, len(names))
	for _, name := range names {
		if ValidateBackupName(name) != nil {
			continue
		}
		rec, err := s.readBackup(ctx, name)
		var damaged *damagedRecordError
		if errors.As(err, &damaged) {
			s.logger.Warn("backup record is damaged and left out (verify names it)", "backup", name, "err", err)
			continue
		}
		if err != nil {
			return nil, err
		}
		records = append(records, rec)
	}
	sort.Slice(records, func(i, j int) bool {
		if !records[i].End.Equal(records[j].End) {
			return records[i].End.Before(records[j].End)
		}
		return records[i].Name < records[j].Name
	})
	return records, nil
}

// backupNames lists the names of every record file, sorted, valid names
// or not.
func (s *Store) backupNames(ctx context.Context) ([]string, error) {
	var names []string
	err := s.backend.List(ctx, backupsPrefix, func(info Info) error {
		if name, ok := parseBackupKey(info.Key); ok {
			names = append(names, name)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list backups: %w", err)
	}
	sort.Strings(names)
	return names, nil
}

// BackupFilter selects backups by the node that took them and the
// source directory; an empty field matches any.
type BackupFilter struct {
	Node   string
	Source string
	// Tags a record must all carry.
	Tags []string
}

// IsZero reports whether the filter passes every record.
func (f BackupFilter) IsZero() bool { return f.Node == "" && f.Source == "" && len(f.Tags) == 0 }

// Match reports whether r passes the filter.
func (f BackupFilter) Match(r BackupRecord) bool {
	for _, t := range f.Tags {
		if !slices.Contains(r.Tags, t) {
			return false
		}
	}
	return (f.Node == "" || r.Node == f.Node) && (f.Source == "" || r.Source == f.Source)
}

func (f BackupFilter) String() string {
	var parts []string
	if f.Node != "" {
		parts = append(parts, "node "+f.Node)
	}
	if f.Source != "" {
		parts = append(parts, "source "+f.Source)
	}
	for _, t := range f.Tags {
		parts = append(parts, "tag "+t)
	}
	if len(parts) == 0 {
		return "any node and source"
	}
	return strings.Join(parts, ", ")
}

// AmbiguousLatestError is "latest" matching the newest backups of more
// than one node or source: Candidates holds the newest of each.
type AmbiguousLatestError struct {
	Filter     BackupFilter
	Candidates []BackupRecord
}

func (e *AmbiguousLatestError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "\"latest\" is ambiguous for %s: %d node/source pairs have backups:", e.Filter, len(e.Candidates))
	for _, c := range e.Candidates {
		fmt.Fprintf(&b, " %s (node %s, source %s)", c.Name, c.Node, c.Source)
	}
	return b.String()
}

// ErrNoSuchBackup is a backup name with no record; it is also ErrNotFound.
var ErrNoSuchBackup = errors.New("no such backup")

type noSuchBackupError struct{ name string }

func (e *noSuchBackupError) Error() string { return fmt.Sprintf("backup %q: not found", e.name) }
func (e *noSuchBackupError) Is(target error) bool {
	return target == ErrNoSuchBackup || target == ErrNotFound
}

// ErrNoBackups is "latest" matching no backup; it is also ErrNotFound.
var ErrNoBackups = errors.New("no backups")

type noBackupsError struct{ msg string }

func (e *noBackupsError) Error() string { return e.msg }
func (e *noBackupsError) Is(target error) bool {
	return target == ErrNoBackups || target == ErrNotFound
}

// Backup returns the record called name, or for "latest" the newest backup
// that matches the filter, which must belong to one node and source: a
// repository shared by several nodes has one "latest" per node and
// source, and restoring another node's data by accident must not happen.
func (s *Store) Backup(ctx context.Context, name string, f BackupFilter) (BackupRecord, error) {
	if name != LatestBackup {
		if err := ValidateBackupName(name); err != nil {
			return BackupRecord{}, err
		}
		return s.readBackup(ctx, name)
	}
	records, err := s.Backups(ctx)
	if err != nil {
		return BackupRecord{}, err
	}
	newest := map[string]BackupRecord{} // per node and source; records are oldest first
	var groups []string
	for _, r := range records {
		if !f.Match(r) {
			continue
		}
		k := RetentionGroup(r)
		if _, seen := newest[k]; !seen {
			groups = append(groups, k)
		}
		newest[k] = r
	}
	switch len(groups) {
	case 0:
		var others []string
		seen := map[string]bool{}
		for _, r := range records {
			if !seen[r.Node] {
				seen[r.Node] = true
				others = append(others, r.Node)
			}
		}
		if len(others) == 0 {
			return BackupRecord{}, &noBackupsError{fmt.Sprintf("repository %s has no backups yet", s)}
		}
		return BackupRecord{}, &noBackupsError{fmt.Sprintf("repository %s has no backups of %s (it has backups of node %s)", s, f, strings.Join(others, ", "))}
	case 1:
		return newest[groups[0]], nil
	}
	amb := &AmbiguousLatestError{Filter: f}
	for _, k := range groups {
		amb.Candidates = append(amb.Candidates, newest[k])
	}
	sort.Slice(amb.Candidates, func(i, j int) bool { return RetentionGroup(amb.Candidates[i]) < RetentionGroup(amb.Candidates[j]) })
	return BackupRecord{}, amb
}

// TagBackup adds tags to the backup name, then removes tags, and rewrites
// its record (the only change ever made to a record: its root, times and
// statistics stay as written). Two taggers racing on one record may lose
// one's change, never the record.
func (s *Store) TagBackup(ctx context.Context, name string, add, remove []string) (BackupRecord, error) {
	for _, t := range slices.Concat(add, remove) {
		if err := ValidateTag(t); err != nil {
			return BackupRecord{}, err
		}
	}
	rec, err := s.Backup(ctx, name, BackupFilter{})
	if err != nil {
		return rec, err
	}
	// Adds first, then removes: a tag named in both is removed.
	tags := slices.Clone(rec.Tags)
	for _, t := range add {
		if !slices.Contains(tags, t) {
			tags = append(tags, t)
		}
	}
	tags = slices.DeleteFunc(tags, func(t string) bool { return slices.Contains(remove, t) })
	if slices.Equal(tags, rec.Tags) {
		return rec, nil
	}
	rec.Tags = tags
	plain, err := json.MarshalIndent(rec, "", "  ")
	if err != nil {
		return rec, err
	}
	data := s.seal.seal(plain, recordAD(rec.Name))
	if err := s.backend.Put(ctx, backupKey(rec.Name), bytes.NewReader(data), int64(len(data))); err != nil {
		return rec, fmt.Errorf("rewrite backup %s: %w", rec.Name, err)
	}
	return rec, nil
}
