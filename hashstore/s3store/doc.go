// Package s3store is a hashstore.Backend on Amazon S3 or any S3-compatible
// server (MinIO, Ceph RGW, Cloudflare R2, versitygw, GCS's interoperability
// API), through aws-sdk-go-v2. Credentials come from the SDK's standard
// chain (environment, shared config and credentials files, profiles, web
// identity, IMDS) and never appear in logs or errors.
//
// Objects up to the part size are stored with one PUT; larger or unsized
// ones with a multipart upload whose parts go up in parallel, and which is
// aborted when anything fails, so an incomplete upload is never left
// behind. Every S3 request is counted by operation (Requests).
package s3store
