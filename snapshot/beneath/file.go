package beneath

import (
	"errors"
	"io"
	"os"

	"golang.org/x/sys/unix"
)

// File is a file opened for reading by its descriptor alone. An os.File
// costs two more system calls per open (the runtime asks for the
// descriptor's flags and, for the O_NONBLOCK that keeps a FIFO swapped in
// from hanging the open, tries to register it with the network poller),
// which is a tenth of a backup's system calls when it reads many small
// files. Reads of a regular file never return EAGAIN, so a File must be
// checked to be a regular file (Fstat) before it is read.
type File struct {
	fd   int
	name string
}

// OpenRead opens the file rel below d for reading, following no symbolic
// link, without blocking on a FIFO.
func (d *Dir) OpenRead(rel string) (*File, error) {
	fd, err := openat(d.fd, rel, unix.O_RDONLY|unix.O_NONBLOCK, 0)
	if err != nil {
		return nil, d.pathErr("open", rel, err)
	}
	return &File{fd: fd, name: join(d.name, rel)}, nil
}

// Fd is the descriptor, valid until Close.
func (f *File) Fd() uintptr { return uintptr(f.fd) }

// Name is the path the file was opened by, for messages.
func (f *File) Name() string { return f.name }

// Stat returns the status of the open file.
func (f *File) Stat() (unix.Stat_t, error) {
	var st unix.Stat_t
	err := unix.Fstat(f.fd, &st)
	if err != nil {
		return st, f.err("fstat", err)
	}
	return st, nil
}

func (f *File) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	for {
		n, err := unix.Read(f.fd, p)
		switch {
		case errors.Is(err, unix.EINTR):
			continue
		case err != nil:
			return 0, f.err("read", err)
		case n == 0:
			return 0, io.EOF
		}
		return n, nil
	}
}

// ReadAt reads len(p) bytes at off, or fewer with io.EOF at the end.
func (f *File) ReadAt(p []byte, off int64) (int, error) {
	done := 0
	for done < len(p) {
		n, err := unix.Pread(f.fd, p[done:], off+int64(done))
		switch {
		case errors.Is(err, unix.EINTR):
			continue
		case err != nil:
			return done, f.err("read", err)
		case n == 0:
			return done, io.EOF
		}
		done += n
	}
	return done, nil
}

// Close closes the descriptor; a second Close is an error.
func (f *File) Close() error {
	if f.fd < 0 {
		return f.err("close", unix.EBADF)
	}
	err := unix.Close(f.fd)
	f.fd = -1
	if err != nil {
		return f.err("close", err)
	}
	return nil
}

func (f *File) err(op string, err error) error { return &os.PathError{Op: op, Path: f.name, Err: err} }
