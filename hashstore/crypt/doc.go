// Package crypt holds the cryptography of encrypted repositories
// (repository format 2, principle 3): the envelope every stored byte is
// sealed in, the key files that wrap a repository's master key under a
// password, and the keys derived from the master key.
//
// The envelope is XChaCha20-Poly1305 (golang.org/x/crypto) in the STREAM
// construction: a random 128-bit nonce prefix per sealed blob, then
// segments of up to 64 KiB, each sealed with the prefix, its number and a
// flag on the last segment as nonce, so a blob can be sealed and opened as
// a stream, and reordered, dropped, repeated or truncated segments are
// refused. Key files wrap the master key with a key from argon2id, whose
// parameters each key file carries; a key file claiming parameters beyond
// what this package would ever choose is refused before anything is
// allocated. The master key is 32 random bytes; the keys it is used
// through are derived from it with BLAKE3's key derivation, one per
// purpose, so that sealing and object ids never share a key.
package crypt
