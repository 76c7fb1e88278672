package upload

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/deltabackup/deltabackup/hashstore"
	"github.com/deltabackup/deltabackup/snapshot"
)

// StreamSource names the source of a backup of a stream in its record:
// "stdin:" and the file name the stream is stored under.
func StreamSource(name string) string { return "stdin:" + name }

// BackupStream backs up what r yields as one file called name (a database
// dump piped in, say): the stream is first written to a private
// temporary directory under spoolDir ("" for the system's), so that its
// content can be hashed and stored like any file's, then backed up with
// the record's source StreamSource(name). ready, when not nil, is called
// once the stream has ended and before anything is written to the
// repository: an error from it (the dumping command failed, say) stops
// the backup, and no record is written.
func BackupStream(ctx context.Context, store *hashstore.Store, r io.Reader, name, spoolDir string, ready func() error, snapOpts snapshot.Options, opts Options) (*Summary, error) {
	if err := snapshot.ValidateName(name); err != nil {
		return nil, fmt.Errorf("stream file name %q: %w", name, err)
	}
	dir, err := os.MkdirTemp(spoolDir, "deltabackup-stream-*")
	if err != nil {
		return nil, fmt.Errorf("spool directory: %w", err)
	}
	defer os.RemoveAll(dir)
	f, err := os.OpenFile(filepath.Join(dir, name), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, fmt.Errorf("spool file: %w", err)
	}
	_, err = io.Copy(f, hashstore.ContextReader(ctx, r))
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, fmt.Errorf("read the stream into %s: %w", dir, err)
	}
	if ready != nil {
		if err := ready(); err != nil {
			return nil, err
		}
	}
	if opts.Source == "" {
		opts.Source = StreamSource(name)
	}
	// The spool directory is new every time: a directory cache would
	// never match it.
	opts.CacheDir = ""
	return Backup(ctx, store, dir, snapOpts, opts)
}
