// Command deltabackup backs up data directories to a content-addressed
// repository and restores them. The logic lives in the library packages;
// this command owns flags, repository URLs, output and exit codes.
package main
