// Package keycache keeps repositories' unwrapped master keys in the Linux
// kernel's keyring of the user (keyctl(2)) for a while, so that commands
// run one after another derive the key from the password once: the
// entries live in kernel memory, never in a file, expire on their own,
// and are readable by processes of the same user only. See
// hashstore.KeyCache for what an entry holds and when it is used.
package keycache
