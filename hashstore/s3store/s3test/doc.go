// Package s3test holds helpers for tests against a real S3-compatible
// server: the endpoint .ci/run starts (DELTABACKUP_S3_ENDPOINT, with
// credentials in the standard AWS variables), a fresh bucket per test, and
// a TCP proxy that injects connection resets.
package s3test
