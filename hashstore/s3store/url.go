package s3store

import (
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// ParseURL reads s3://bucket/prefix with options as query parameters:
// endpoint, region, profile, path-style (true/false), insecure-skip-verify,
// ca-bundle, connect-timeout, read-timeout (Go durations), part-size
// (bytes), upload-concurrency, storage-class, create-bucket. Credentials
// are never taken from the URL: they come from the AWS environment and
// configuration, so they cannot end up in shell history or logs.
func ParseURL(raw string) (Config, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return Config{}, fmt.Errorf("invalid S3 URL: %v", redactErr(err))
	}
	if u.Scheme != "s3" {
		return Config{}, fmt.Errorf("not an s3:// URL: scheme %q", u.Scheme)
	}
	if u.User != nil {
		return Config{}, errors.New("s3:// URLs take no credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE")
	}
	cfg := Config{Bucket: u.Host, Prefix: strings.Trim(u.Path, "/")}
	if cfg.Bucket == "" {
		return Config{}, errors.New("s3:// URL names no bucket (s3://bucket/prefix)")
	}
	if cfg.Prefix != "" {
		cfg.Prefix += "/"
	}
	for name, values := range u.Query() {
		v := values[len(values)-1]
		if err := cfg.Set(name, v); err != nil {
			return Config{}, err
		}
	}
	return cfg, nil
}

// Set applies one option by its URL parameter name (also used for flags).
func (c *Config) Set(name, v string) error {
	var err error
	switch name {
	case "endpoint":
		c.Endpoint = v
	case "region":
		c.Region = v
	case "profile":
		c.Profile = v
	case "path-style":
		var b bool
		b, err = strconv.ParseBool(v)
		c.PathStyle = &b
	case "insecure-skip-verify":
		c.InsecureSkipVerify, err = strconv.ParseBool(v)
	case "ca-bundle":
		c.CABundle = v
	case "connect-timeout":
		c.ConnectTimeout, err = time.ParseDuration(v)
	case "read-timeout":
		c.ReadTimeout, err = time.ParseDuration(v)
	case "part-size":
		c.PartSize, err = strconv.ParseInt(v, 10, 64)
	case "upload-concurrency":
		c.UploadConcurrency, err = strconv.Atoi(v)
	case "storage-class":
		c.StorageClass = v
	case "create-bucket":
		c.CreateBucket, err = strconv.ParseBool(v)
	case "object-lock":
		c.ObjectLock, err = time.ParseDuration(v)
	case "object-lock-mode":
		c.ObjectLockMode = v
	default:
		return fmt.Errorf("unknown S3 option %q (endpoint, region, profile, path-style, insecure-skip-verify, ca-bundle, connect-timeout, read-timeout, part-size, upload-concurrency, storage-class, create-bucket, object-lock, object-lock-mode)", name)
	}
	if err != nil {
		return fmt.Errorf("S3 option %s=%q: %v", name, v, err)
	}
	return nil
}

// redactErr drops a URL with possible credentials from a parse error.
func redactErr(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}
