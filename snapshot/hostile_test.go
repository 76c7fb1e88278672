package snapshot

import (
	"fmt"
	"strings"
	"testing"
)

// deepManifest is the audit's M6 manifest: n embedded files below a chain
// of depth directories "a/a/.../a".
func deepManifest(n, depth int) *Manifest {
	prefix := strings.Repeat("a/", depth)
	m := &Manifest{Version: ManifestVersion, HashAlgorithm: HashAlgorithm}
	for i := range n {
		m.Files = append(m.Files, File{RelativePath: fmt.Sprintf("%sf%05d", prefix, i), FileSize: 1, ContentB64: "eA=="})
	}
	return m
}

// TestValidationIsLinearInPathLength: checking that no entry lies below a
// file looks each directory up once, not once per entry below it (3,000
// entries at depth 2,030 took 54 s of CPU in the audit).
func TestValidationIsLinearInPathLength(t *testing.T) {
	m := deepManifest(3000, 2030)
	steps, err := m.validate()
	if err != nil {
		t.Fatal(err)
	}
	if steps > 2*2030+3000 {
		t.Fatalf("validation looked up %d directories for 3,000 entries below one chain of 2,030", steps)
	}
}

func BenchmarkValidateDeepPaths(b *testing.B) {
	m := deepManifest(3000, 2030)
	for b.Loop() {
		if err := m.Validate(); err != nil {
			b.Fatal(err)
		}
	}
}
