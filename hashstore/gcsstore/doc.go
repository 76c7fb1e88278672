// Package gcsstore is a hashstore.Backend on Google Cloud Storage,
// through cloud.google.com/go/storage: gs://bucket/prefix. Credentials come
// from Google's standard chain (GOOGLE_APPLICATION_CREDENTIALS, gcloud's
// application-default credentials, the metadata server) and never appear
// in logs or errors; STORAGE_EMULATOR_HOST points the client at an
// emulator such as fake-gcs-server.
//
// Small objects go up in one request, large or unsized ones as resumable
// uploads in 8 MiB chunks; an object appears whole when its upload
// completes, and an upload that fails or is cancelled leaves nothing.
// Backup records are created only if absent (a DoesNotExist
// precondition). Operations are counted (Requests).
package gcsstore
