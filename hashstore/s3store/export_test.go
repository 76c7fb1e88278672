package s3store

// SetPartLimitsForTest scales S3's limits down (parts per upload, parts
// per size tier) until the test ends, which calls the returned function.
func SetPartLimitsForTest(parts int64, tier int32) (restore func()) {
	oldParts, oldTier := maxParts, partTier
	maxParts, partTier = parts, tier
	return func() { maxParts, partTier = oldParts, oldTier }
}

// PartSize is partSize, for tests.
var PartSize = partSize
