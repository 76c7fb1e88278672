// Package sftpstore is a hashstore.Backend on an SFTP server, through
// github.com/pkg/sftp over golang.org/x/crypto/ssh: sftp://user@host[:port]/path.
//
// The server's host key must be in a known_hosts file (an unknown or
// changed key is refused, and the error shows the key's fingerprint);
// keys come from ssh-agent and identity files, never passwords. A key is
// written to a temporary name in its directory and renamed into place
// (posix-rename@openssh.com, which replaces atomically), so a reader never
// sees part of it; backup records are created only if absent, by a hard
// link (hardlink@openssh.com). Operations share one SSH connection with a
// bounded number of requests in flight; a lost connection is dialled again
// by the next operation, and keepalives notice a server that stopped
// answering. Every request is counted by operation (Requests).
package sftpstore
