// Package azurestore is a hashstore.Backend on Azure Blob Storage, through
// github.com/Azure/azure-sdk-for-go/sdk/storage/azblob:
// azure://container/prefix. Credentials come from the environment as
// Azure's tools read it (AZURE_STORAGE_CONNECTION_STRING; or
// AZURE_STORAGE_ACCOUNT with AZURE_STORAGE_KEY or AZURE_STORAGE_SAS_TOKEN),
// else DefaultAzureCredential (managed identity, workload identity, the
// Azure CLI), and never appear in logs or errors.
//
// Keys are block blobs: small ones go up in one request, large or unsized
// ones as blocks staged in parallel and committed at the end, sized so no
// blob needs more than the service's 50,000 blocks; a blob appears whole
// at the commit, and an upload that fails leaves only uncommitted blocks,
// which the service discards. Backup records are created only if absent
// (If-None-Match: *). Operations are counted (Requests).
package azurestore
