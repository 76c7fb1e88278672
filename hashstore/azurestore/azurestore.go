package azurestore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/to"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/blob"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/bloberror"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/container"

	"github.com/deltabackup/deltabackup/hashstore"
)

// Errors a caller can act on.
var (
	// ErrContainerMissing: the container does not exist.
	ErrContainerMissing = errors.New("container does not exist")
	// ErrAccessDenied: the credentials were refused or lack a permission.
	ErrAccessDenied = errors.New("access denied")
	// ErrNoAccount: no connection string and no account name to use.
	ErrNoAccount = errors.New("no Azure storage account given")
)

// Config says where the repository is and how to log in.
type Config struct {
	Container string
	// Prefix is prepended to every key.
	Prefix string
	// ConnectionString, Account, Key and SASToken default to
	// AZURE_STORAGE_CONNECTION_STRING, AZURE_STORAGE_ACCOUNT,
	// AZURE_STORAGE_KEY and AZURE_STORAGE_SAS_TOKEN.
	ConnectionString string
	Account          string
	Key              string
	SASToken         string
	// Endpoint is the blob service URL (default
	// https://ACCOUNT.blob.core.windows.net/).
	Endpoint string
	// CreateContainer creates a missing container (for init).
	CreateContainer bool
}

// ParseURL reads azure://container[/prefix].
func ParseURL(s string) (Config, error) {
	u, err := url.Parse(s)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return Config{}, fmt.Errorf("not a valid URL: %w", err)
	}
	shown := u.Scheme + "://" + u.Host + u.Path // no user, password or query: they may hold secrets
	if u.Scheme != "azure" {
		return Config{}, fmt.Errorf("%s: not an azure:// URL", shown)
	}
	if u.User != nil || u.RawQuery != "" || u.Fragment != "" || u.Port() != "" {
		return Config{}, fmt.Errorf("%s: azure:// URLs are azure://container/prefix, with no user, port or query (credentials come from the environment)", shown)
	}
	if u.Host == "" {
		return Config{}, fmt.Errorf("%s: no container", shown)
	}
	return Config{Container: u.Host, Prefix: strings.Trim(u.Path, "/")}, nil
}

func (c Config) withEnvironment() Config {
	env := func(v *string, name string) {
		if *v == "" {
			*v = os.Getenv(name)
		}
	}
	env(&c.ConnectionString, "AZURE_STORAGE_CONNECTION_STRING")
	env(&c.Account, "AZURE_STORAGE_ACCOUNT")
	env(&c.Key, "AZURE_STORAGE_KEY")
	env(&c.SASToken, "AZURE_STORAGE_SAS_TOKEN")
	if c.Endpoint == "" && c.Account != "" {
		c.Endpoint = "https://" + c.Account + ".blob.core.windows.net/"
	}
	return c
}

// Backend is a container (and prefix) of Azure Blob Storage.
type Backend struct {
	cfg       Config
	client    *azblob.Client
	container *container.Client
	counts    hashstore.RequestCounts
}

var (
	_ hashstore.Backend = (*Backend)(nil)
	_ hashstore.Creator = (*Backend)(nil)
)

func newClient(cfg Config) (*azblob.Client, error) {
	// The SDK retries each request a few times itself, so that one block
	// of a large upload that fails is sent again, not the whole blob;
	// hashstore's retry wrapper retries whole operations beyond that.
	opts := &azblob.ClientOptions{}
	opts.Retry.MaxRetries = 4
	opts.Retry.RetryDelay = 200 * time.Millisecond
	opts.Retry.MaxRetryDelay = 5 * time.Second
	switch {
	case cfg.ConnectionString != "":
		return azblob.NewClientFromConnectionString(cfg.ConnectionString, opts)
	case cfg.Endpoint == "":
		return nil, fmt.Errorf("%w: set AZURE_STORAGE_CONNECTION_STRING, or AZURE_STORAGE_ACCOUNT with a key, a SAS token or an Azure identity", ErrNoAccount)
	case cfg.Key != "":
		cred, err := azblob.NewSharedKeyCredential(cfg.Account, cfg.Key)
		if err != nil {
			return nil, fmt.Errorf("AZURE_STORAGE_KEY is not a valid account key: %w", errors.Unwrap(err))
		}
		return azblob.NewClientWithSharedKeyCredential(cfg.Endpoint, cred, opts)
	case cfg.SASToken != "":
		return azblob.NewClientWithNoCredential(strings.TrimSuffix(cfg.Endpoint, "?")+"?"+strings.TrimPrefix(cfg.SASToken, "?"), opts)
	}
	cred, err := azidentity.NewDefaultAzureCredential(nil)
	if err != nil {
		return nil, err
	}
	return azblob.NewClient(cfg.Endpoint, cred, opts)
}

// Open makes the client and checks the container (creating it when
// cfg.CreateContainer).
func Open(ctx context.Context, cfg Config) (*Backend, error) {
	cfg = cfg.withEnvironment()
	client, err := newClient(cfg)
	if err != nil {
		return nil, hashstore.Permanent(fmt.Errorf("azure://%s: %w", cfg.Container, err))
	}
	b := &Backend{cfg: cfg, client: client, container: client.ServiceClient().NewContainerClient(cfg.Container)}
	b.count("GetContainerProperties")
	_, err = b.container.GetProperties(ctx, nil)
	if bloberror.HasCode(err, bloberror.ContainerNotFound) && cfg.CreateContainer {
		b.count("CreateContainer")
		_, err = b.container.Create(ctx, nil)
		if bloberror.HasCode(err, bloberror.ContainerAlreadyExists) {
			err = nil
		}
	}
	if err != nil {
		return nil, b.fail("open", "", err)
	}
	return b, nil
}

// String names the repository (no credentials).
func (b *Backend) String() string {
	if b.cfg.Prefix == "" {
		return "azure://" + b.cfg.Container
	}
	return "azure://" + b.cfg.Container + "/" + b.cfg.Prefix
}

// Requests returns the operations sent so far, by REST operation.
func (b *Backend) Requests() map[string]int64 { return b.counts.Snapshot() }

func (b *Backend) count(op string) { b.counts.Add(op) }

func (b *Backend) name(key string) string {
	if b.cfg.Prefix == "" {
		return key
	}
	return b.cfg.Prefix + "/" + key
}

// fail states what failed as a fact callers can test.
func (b *Backend) fail(op, key string, err error) error {
	what := b.String()
	if key != "" {
		what = key
	}
	var re *azcore.ResponseError
	switch {
	case bloberror.HasCode(err, bloberror.BlobNotFound):
		return fmt.Errorf("%s: %w", key, hashstore.ErrNotFound)
	case bloberror.HasCode(err, bloberror.ContainerNotFound):
		return hashstore.Permanent(fmt.Errorf("%s: %w", b, ErrContainerMissing))
	case bloberror.HasCode(err, bloberror.BlobAlreadyExists, bloberror.ConditionNotMet):
		return fmt.Errorf("%s: %w", key, hashstore.ErrExists)
	case bloberror.HasCode(err, bloberror.InvalidRange):
		return fmt.Errorf("%s: %w", key, hashstore.ErrInvalidRange)
	case errors.As(err, &re) && (re.StatusCode == http.StatusUnauthorized || re.StatusCode == http.StatusForbidden):
		return hashstore.Permanent(fmt.Errorf("%s %s on %s: %w (%s)", op, what, b, ErrAccessDenied, re.ErrorCode))
	case errors.As(err, &re) && re.StatusCode == http.StatusNotFound && key != "":
		return fmt.Errorf("%s: %w", key, hashstore.ErrNotFound)
	case errors.As(err, &re):
		return fmt.Errorf("%s %s on %s: %d %s", op, what, b, re.StatusCode, re.ErrorCode)
	}
	return fmt.Errorf("%s %s on %s: %w", op, what, b, err)
}

// Put stores r under key.
func (b *Backend) Put(ctx context.Context, key string, r io.Reader, size int64) error {
	return b.put(ctx, key, r, size, false)
}

// PutIfAbsent stores r under key only if no blob is there.
func (b *Backend) PutIfAbsent(ctx context.Context, key string, r io.Reader, size int64) error {
	return b.put(ctx, key, r, size, true)
}

const (
	// minBlock is the block size of uploads (larger for blobs that would
	// need more than maxBlocks blocks of it).
	minBlock  = 8 << 20
	maxBlocks = 50_000
	// unknownSizeBlock is used when the size is not known: 400 GB fit.
	unknownSizeBlock = 8 << 20
)

// blockSize is the block size for a blob of size bytes (-1: unknown).
func blockSize(size int64) int64 {
	if size < 0 {
		return unknownSizeBlock
	}
	return max(minBlock, (size+maxBlocks-1)/maxBlocks)
}

func (b *Backend) put(ctx context.Context, key string, r io.Reader, size int64, ifAbsent bool) error {
	if err := hashstore.ValidateKey(key); err != nil {
		return err
	}
	opts := &azblob.UploadStreamOptions{BlockSize: blockSize(size), Concurrency: 4}
	if ifAbsent {
		opts.AccessConditions = &blob.AccessConditions{ModifiedAccessConditions: &blob.ModifiedAccessConditions{IfNoneMatch: to.Ptr(azcore.ETagAny)}}
	}
	if size >= 0 && size <= opts.BlockSize {
		b.count("PutBlob")
	} else {
		b.count("PutBlock+PutBlockList")
	}
	// The body fails before its end when it is not size bytes, so the
	// blocks are never committed.
	body := &exactReader{r: hashstore.ContextReader(ctx, r), want: size, key: key}
	if _, err := b.client.UploadStream(ctx, b.cfg.Container, b.name(key), body, opts); err != nil {
		if body.err != nil {
			return body.err
		}
		return b.fail("write", key, err)
	}
	return nil
}

// exactReader passes r through and fails instead of ending when r does
// not yield exactly want bytes (want < 0: any number).
type exactReader struct {
	r    io.Reader
	want int64
	n    int64
	key  string
	err  error
}

func (e *exactReader) Read(p []byte) (int, error) {
	n, err := e.r.Read(p)
	e.n += int64(n)
	switch {
	case e.want >= 0 && e.n > e.want:
		e.err = fmt.Errorf("write %s: more than %d bytes", e.key, e.want)
	case err == io.EOF && e.want >= 0 && e.n != e.want:
		e.err = fmt.Errorf("write %s: got %d bytes, want %d", e.key, e.n, e.want)
	case err != nil && err != io.EOF:
		e.err = fmt.Errorf("write %s: %w", e.key, err)
	}
	if e.err != nil {
		return 0, e.err
	}
	return n, err
}

// Get opens the bytes under key.
func (b *Backend) Get(ctx context.Context, key string) (io.ReadCloser, error) {
	return b.GetRange(ctx, key, 0, -1)
}

// GetRange opens length bytes of key from offset (to the end when length
// is negative).
func (b *Backend) GetRange(ctx context.Context, key string, offset, length int64) (io.ReadCloser, error) {
	if err := hashstore.ValidateKey(key); err != nil {
		return nil, err
	}
	return hashstore.ReadObjectRange(ctx, key, offset, length, b.Stat, func() (io.ReadCloser, error) {
		rng := blob.HTTPRange{Offset: offset}
		if length > 0 {
			rng.Count = length
		}
		b.count("GetBlob")
		resp, err := b.client.DownloadStream(ctx, b.cfg.Container, b.name(key), &azblob.DownloadStreamOptions{Range: rng})
		if err != nil {
			return nil, b.fail("read", key, err)
		}
		return hashstore.NameReadErrors(key, resp.Body, resp.Body), nil
	})
}

// Stat describes key.
func (b *Backend) Stat(ctx context.Context, key string) (hashstore.Info, error) {
	if err := hashstore.ValidateKey(key); err != nil {
		return hashstore.Info{}, err
	}
	b.count("GetBlobProperties")
	p, err := b.container.NewBlockBlobClient(b.name(key)).GetProperties(ctx, nil)
	if err != nil {
		return hashstore.Info{}, b.fail("stat", key, err)
	}
	info := hashstore.Info{Key: key}
	if p.ContentLength != nil {
		info.Size = *p.ContentLength
	}
	if p.LastModified != nil {
		info.ModTime = *p.LastModified
	}
	return info, nil
}

// List calls fn for every key starting with prefix, a page at a time.
func (b *Backend) List(ctx context.Context, prefix string, fn func(hashstore.Info) error) error {
	full := b.name(prefix)
	if b.cfg.Prefix != "" && prefix == "" {
		full = b.cfg.Prefix + "/"
	}
	pager := b.client.NewListBlobsFlatPager(b.cfg.Container, &azblob.ListBlobsFlatOptions{Prefix: &full})
	for pager.More() {
		b.count("ListBlobs")
		page, err := pager.NextPage(ctx)
		if err != nil {
			return b.fail("list", "", err)
		}
		for _, item := range page.Segment.BlobItems {
			if item.Name == nil {
				continue
			}
			key := *item.Name
			if b.cfg.Prefix != "" {
				key = strings.TrimPrefix(key, b.cfg.Prefix+"/")
			}
			info := hashstore.Info{Key: key}
			if p := item.Properties; p != nil {
				if p.ContentLength != nil {
					info.Size = *p.ContentLength
				}
				if p.LastModified != nil {
					info.ModTime = *p.LastModified
				}
			}
			if err := fn(info); err != nil {
				return err
			}
		}
	}
	return nil
}

// Delete removes key; a missing key is not an error.
func (b *Backend) Delete(ctx context.Context, key string) error {
	if err := hashstore.ValidateKey(key); err != nil {
		return err
	}
	b.count("DeleteBlob")
	_, err := b.container.NewBlockBlobClient(b.name(key)).Delete(ctx, nil)
	if err != nil && !bloberror.HasCode(err, bloberror.BlobNotFound) {
		return b.fail("delete", key, err)
	}
	return nil
}

// batchSize is the most sub-requests one blob batch may hold.
const batchSize = 256

// DeleteMany removes keys with blob batches of 256 deletes per request;
// a missing key is not an error. Where the account cannot submit batches
// (SAS tokens without the right, some emulators), it deletes one by one.
func (b *Backend) DeleteMany(ctx context.Context, keys []string) error {
	for start := 0; start < len(keys); start += batchSize {
		chunk := keys[start:min(start+batchSize, len(keys))]
		for _, k := range chunk {
			if err := hashstore.ValidateKey(k); err != nil {
				return err
			}
		}
		if err := b.deleteBatch(ctx, chunk); err != nil {
			return err
		}
	}
	return nil
}

func (b *Backend) deleteBatch(ctx context.Context, keys []string) error {
	oneByOne := func() error {
		for _, k := range keys {
			if err := b.Delete(ctx, k); err != nil {
				return err
			}
		}
		return nil
	}
	bb, err := b.container.NewBatchBuilder()
	if err != nil {
		return oneByOne()
	}
	for _, k := range keys {
		if err := bb.Delete(b.name(k), nil); err != nil {
			return oneByOne()
		}
	}
	b.count("SubmitBatch")
	resp, err := b.container.SubmitBatch(ctx, bb, nil)
	var re *azcore.ResponseError
	if errors.As(err, &re) && (re.StatusCode == http.StatusBadRequest || re.StatusCode == http.StatusNotImplemented || re.StatusCode == http.StatusMethodNotAllowed) {
		return oneByOne()
	}
	if err != nil {
		return b.fail("delete", fmt.Sprintf("%d keys", len(keys)), err)
	}
	for _, item := range resp.Responses {
		if item.Error != nil && !bloberror.HasCode(item.Error, bloberror.BlobNotFound) {
			name := ""
			if item.BlobName != nil {
				name = *item.BlobName
			}
			return b.fail("delete", name, item.Error)
		}
	}
	return nil
}
