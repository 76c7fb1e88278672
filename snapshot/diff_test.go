package snapshot

import (
	"strings"
	"testing"
)

func TestCompare(t *testing.T) {
	h1, h2 := sum(strings.Repeat("1", 500)), sum(strings.Repeat("2", 700))
	old := &Manifest{
		Files: []File{
			{RelativePath: "a", FileSize: 500, Hexdigest: h1, Mode: 0o644},
			{RelativePath: "b", FileSize: 500, Hexdigest: h1, Mode: 0o644},
			{RelativePath: "gone", FileSize: 2, ContentB64: "aGk=", Mode: 0o644},
			{RelativePath: "m", FileSize: 500, Hexdigest: h1, Mode: 0o644, MtimeNs: 1},
			{RelativePath: "x", FileSize: 500, Hexdigest: h1, Mode: 0o644},
		},
		Symlinks:  []Symlink{{"l", "a"}},
		EmptyDirs: []string{"e"},
		Hashes:    []Hash{{h1, 500}},
	}
	new := &Manifest{
		Files: []File{
			{RelativePath: "a", FileSize: 500, Hexdigest: h1, Mode: 0o755},
			{RelativePath: "b", FileSize: 700, Hexdigest: h2, Mode: 0o644},
			{RelativePath: "m", FileSize: 500, Hexdigest: h1, Mode: 0o644, MtimeNs: 2},
			{RelativePath: "new", FileSize: 700, Hexdigest: h2, Mode: 0o644},
		},
		Symlinks:  []Symlink{{"l", "b"}, {"x", "a"}},
		EmptyDirs: []string{"e", "e2"},
		Hashes:    []Hash{{h1, 500}, {h2, 700}},
	}
	d := Compare(old, new)
	got := func(cs []Change) string {
		var s []string
		for _, c := range cs {
			s = append(s, c.Path+strings.Join(append([]string{""}, c.What...), "/"))
		}
		return strings.Join(s, " ")
	}
	if g := got(d.Added); g != "e2 new" {
		t.Errorf("added %q", g)
	}
	if g := got(d.Removed); g != "gone" {
		t.Errorf("removed %q", g)
	}
	if g := got(d.Changed); g != "a/mode b/content l/target x/type" {
		t.Errorf("changed %q", g)
	}
	if d.AddedBytes != 700 || d.RemovedBytes != 2 || d.NewContentBytes != 700 {
		t.Errorf("bytes: %+v", d)
	}
}
