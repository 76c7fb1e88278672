package storetest

import (
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

var bucketSeq atomic.Int64

// BucketName returns a bucket (or container) name that no other test
// uses: the test's name in lower case letters, digits and dashes, with a
// unique suffix, at most 63 characters.
func BucketName(t testing.TB) string {
	var b strings.Builder
	for _, r := range strings.ToLower(t.Name()) {
		if r >= 'a' && r <= 'z' || r >= '0' && r <= '9' {
			b.WriteRune(r)
		} else {
			b.WriteByte('-')
		}
	}
	name := strings.Trim(b.String(), "-")
	suffix := fmt.Sprintf("-%d-%d", time.Now().UnixNano()%1e9, bucketSeq.Add(1))
	if len(name)+len(suffix) > 63 {
		name = name[:63-len(suffix)]
	}
	// Azure container names allow no double dashes.
	for strings.Contains(name, "--") {
		name = strings.ReplaceAll(name, "--", "-")
	}
	return strings.Trim(name, "-") + suffix
}
