// Package beneath opens and changes files below a directory handle without
// ever following a symbolic link, in any component of the path.
//
// A backup reads, and a restore writes, trees that other users may change
// while the program runs as root. os.Root keeps every access inside its
// directory, but follows symbolic links that stay inside it, so a user who
// swaps one of their own directories for a link can redirect a root restore
// into another user's directory, or make a backup read another user's file
// under their own path. Here every directory of a path is opened with
// openat2(RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS), or, on kernels without
// openat2, one component at a time with O_NOFOLLOW|O_DIRECTORY; and every
// operation on the last component is an *at call on the handle of its
// directory that does not follow a link there either. Safety never depends
// on a cache of open directories: a cache only saves path walks.
package beneath
