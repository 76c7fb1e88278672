package main

import (
	"bytes"
	"context"
	"encoding/json"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/deltabackup/deltabackup/hashstore"
	"github.com/deltabackup/deltabackup/restore/restoretest"
	"github.com/deltabackup/deltabackup/snapshot"
	"github.com/deltabackup/deltabackup/snapshot/digest"
	"github.com/deltabackup/deltabackup/upload"
)

// corruptionFixture is a repository with two backups: b1 of src1, and b2
// of src2 (src1 plus a new packed file and a new loose one).
type corruptionFixture struct {
	dir, repo  string
	src        map[string]string // backup → its source tree
	store      *hashstore.Store
	roots      map[string]string   // backup → root tree id
	hexdigests map[string]string   // file path → hexdigest (both backups agree)
	chunks     map[string][]string // file path → its chunks, when chunked
}

func newCorruptionFixture(t *testing.T, c *cli, chunked bool) *corruptionFixture {
	t.Helper()
	dir := t.TempDir()
	f := &corruptionFixture{dir: dir, repo: filepath.Join(dir, "repo"), src: map[string]string{}, roots: map[string]string{}, hexdigests: map[string]string{},
		chunks: map[string][]string{}}
	src1, src2 := filepath.Join(dir, "src1"), filepath.Join(dir, "src2")
	makeSource(t, src1)
	makeSource(t, src2)
	os.WriteFile(filepath.Join(src2, "pkg3/new.go"), []byte(strings.Repeat("package pkg3 // new in b2\n", 40)), 0o644)
	other := make([]byte, 2<<20)
	rand.NewChaCha8([32]byte{1}).Read(other)
	os.WriteFile(filepath.Join(src2, "data/other.bin"), other, 0o644)
	f.src["b1"], f.src["b2"] = src1, src2

	if chunked {
		c.ok("init", "--repo", f.repo)
	} else {
		c.ok("init", "--repo", f.repo, "--no-chunking") // whole objects, to damage one by one
	}
	c.ok("backup", "--repo", f.repo, "--name", "b1", src1)
	c.ok("backup", "--repo", f.repo, "--name", "b2", src2)
	store := openTestStore(t, f.repo)
	f.store = store
	for _, b := range []string{"b1", "b2"} {
		rec, err := store.Backup(context.Background(), b, hashstore.BackupFilter{})
		if err != nil {
			t.Fatal(err)
		}
		f.roots[b] = rec.Root.String()
		err = snapshot.Walk(context.Background(), &upload.Trees{Store: store}, rec.Root, func(rel string, n *snapshot.Node) error {
			if n.Type == snapshot.TypeFile && !n.IsEmbedded() {
				f.hexdigests[rel] = n.ID.String()
				for _, c := range n.Chunks {
					f.chunks[rel] = append(f.chunks[rel], c.ID.String())
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	return f
}

// usersOf returns "backup:path" of every file whose content is hexdigest.
func (f *corruptionFixture) usersOf(hexdigest string, backups ...string) []string {
	var out []string
	for _, b := range backups {
		filepath.WalkDir(f.src[b], func(p string, d os.DirEntry, err error) error {
			rel, _ := filepath.Rel(f.src[b], p)
			rel = filepath.ToSlash(rel)
			if d.Type().IsRegular() && (f.hexdigests[rel] == hexdigest || slices.Contains(f.chunks[rel], hexdigest)) {
				out = append(out, b+":"+rel)
			}
			return nil
		})
	}
	return out
}

// file is where the repository stores the object of path (whole, or as a
// range of a pack).
func (f *corruptionFixture) file(t *testing.T, hexdigest string) (string, hashstore.Location) {
	t.Helper()
	loc, err := f.store.Locate(context.Background(), digest.MustParse(hexdigest))
	if err != nil {
		t.Fatal(err)
	}
	return filepath.Join(f.repo, filepath.FromSlash(loc.Key)), loc
}

func flipByte(t *testing.T, name string, at int64) {
	t.Helper()
	data, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	data[at] ^= 0x10
	if err := os.WriteFile(name, data, 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestCorruptionIsDetectedAndNamed damages objects, packs, trees and
// records in every way storage can, and checks that verify names each
// damaged object with the files that use it, that restore writes every
// unaffected file, names the affected ones and never leaves wrong content
// under a final name.
func TestCorruptionIsDetectedAndNamed(t *testing.T) {
	c := newCLI(t)
	const (
		big   = "data/big.bin"   // loose, shared by both backups (and by big-copy.bin)
		other = "data/other.bin" // loose, only in b2
		small = "bin/run.sh"     // packed, in both
	)
	type damage struct {
		name string
		// do damages the repository and returns the hexdigests it broke.
		do func(t *testing.T, f *corruptionFixture) []string
		// presenceFinds: verify without --read-data sees it too.
		presenceFinds bool
	}
	cases := []damage{
		{"truncate loose object", func(t *testing.T, f *corruptionFixture) []string {
			name, loc := f.file(t, f.hexdigests[big])
			os.Truncate(name, loc.Length/2)
			return []string{f.hexdigests[big]}
		}, false},
		{"flip a bit in a loose object", func(t *testing.T, f *corruptionFixture) []string {
			name, loc := f.file(t, f.hexdigests[big])
			flipByte(t, name, loc.Length/2)
			return []string{f.hexdigests[big]}
		}, false},
		{"delete a loose object", func(t *testing.T, f *corruptionFixture) []string {
			name, _ := f.file(t, f.hexdigests[other])
			os.Remove(name)
			return []string{f.hexdigests[other]}
		}, true},
		{"swap two loose objects", func(t *testing.T, f *corruptionFixture) []string {
			a, _ := f.file(t, f.hexdigests[big])
			b, _ := f.file(t, f.hexdigests[other])
			os.Rename(a, a+".swap")
			os.Rename(b, a)
			os.Rename(a+".swap", b)
			return []string{f.hexdigests[big], f.hexdigests[other]}
		}, false},
		{"flip a bit of an object inside a pack", func(t *testing.T, f *corruptionFixture) []string {
			name, loc := f.file(t, f.hexdigests[small])
			flipByte(t, name, loc.Offset+loc.Length-3)
			return []string{f.hexdigests[small]}
		}, false},
		{"truncate a pack before an object", func(t *testing.T, f *corruptionFixture) []string {
			name, loc := f.file(t, f.hexdigests[small])
			os.Truncate(name, loc.Offset+loc.Length/2)
			var broken []string
			for _, h := range f.hexdigests {
				if l, err := f.store.Locate(context.Background(), digest.MustParse(h)); err == nil && l.Key == loc.Key && l.Offset+l.Length > loc.Offset+loc.Length/2 {
					broken = append(broken, h)
				}
			}
			return broken
		}, true},
		{"delete a pack", func(t *testing.T, f *corruptionFixture) []string {
			name, loc := f.file(t, f.hexdigests[small])
			os.Remove(name)
			var broken []string
			for _, h := range f.hexdigests {
				if l, err := f.store.Locate(context.Background(), digest.MustParse(h)); err == nil && l.Key == loc.Key {
					broken = append(broken, h)
				}
			}
			return broken
		}, true},
		{"flip a bit in a root tree", func(t *testing.T, f *corruptionFixture) []string {
			name, loc := f.file(t, f.roots["b1"])
			flipByte(t, name, loc.Offset+loc.Length-5)
			return []string{f.roots["b1"]}
		}, true}, // trees are always read
		{"truncate a backup record", func(t *testing.T, f *corruptionFixture) []string {
			os.Truncate(filepath.Join(f.repo, "backups", "b1.json"), 40)
			return []string{"record:b1"}
		}, true},
		{"flip a bit in a backup record", func(t *testing.T, f *corruptionFixture) []string {
			rec := filepath.Join(f.repo, "backups", "b1.json")
			data, _ := os.ReadFile(rec)
			flipByte(t, rec, int64(bytes.Index(data, []byte(`"root"`))+12))
			return []string{"record:b1"}
		}, true},
	}
	// A chunked file loses itself, and nothing else, with one chunk.
	chunkCases := []damage{
		{"flip a bit in a chunk", func(t *testing.T, f *corruptionFixture) []string {
			chunk := f.chunks[other][len(f.chunks[other])/2]
			name, loc := f.file(t, chunk)
			flipByte(t, name, loc.Offset+loc.Length/2)
			return []string{chunk}
		}, false},
	}
	for _, tc := range slices.Concat(cases, chunkCases) {
		chunked := slices.ContainsFunc(chunkCases, func(d damage) bool { return d.name == tc.name })
		t.Run(tc.name, func(t *testing.T) {
			f := newCorruptionFixture(t, c, chunked)
			broken := tc.do(t, f)
			if len(broken) == 0 {
				t.Fatal("the damage broke nothing; the fixture is wrong")
			}
			// What each backup should lose: the files of broken objects,
			// or the whole backup when its record or root tree broke.
			lostBackup := map[string]bool{}
			lostFiles := map[string][]string{}
			var wantNamed []string
			for _, h := range broken {
				if b, ok := strings.CutPrefix(h, "record:"); ok {
					lostBackup[b] = true
					wantNamed = append(wantNamed, b)
					continue
				}
				wantNamed = append(wantNamed, h)
				for b, root := range f.roots {
					if root == h {
						lostBackup[b] = true
					}
				}
			}
			for _, h := range broken {
				for _, b := range []string{"b1", "b2"} {
					if lostBackup[b] {
						continue
					}
					for _, u := range f.usersOf(h, b) {
						lostFiles[b] = append(lostFiles[b], strings.TrimPrefix(u, b+":"))
						wantNamed = append(wantNamed, u)
					}
				}
			}

			for _, readData := range []bool{true, false} {
				args := []string{"verify", "--repo", f.repo, "--json"}
				if readData {
					args = append(args, "--read-data")
				}
				o := c.run(args...)
				if !readData && !tc.presenceFinds {
					if o.code != 0 {
						t.Errorf("verify without --read-data: exit %d for damage only reading shows\n%s", o.code, o.stderr)
					}
					continue
				}
				if o.code != 1 {
					t.Fatalf("verify (read data %v): exit %d, want 1\n%s%s", readData, o.code, o.stdout, o.stderr)
				}
				var rep hashstore.VerifyReport
				if err := json.Unmarshal([]byte(lastLine(o.stdout)), &rep); err != nil {
					t.Fatal(err)
				}
				text := o.stdout
				for _, want := range wantNamed {
					if !strings.Contains(text, want) {
						t.Errorf("verify (read data %v) does not name %s:\n%s", readData, want, text)
					}
				}
				if !readData {
					continue
				}
				// Nothing intact is reported.
				for _, p := range rep.Problems {
					if !p.ID.IsZero() && !slices.Contains(broken, p.ID.String()) {
						t.Errorf("verify reports intact object %s: %s", p.ID, p)
					}
				}
			}

			for _, b := range []string{"b1", "b2"} {
				out := filepath.Join(f.dir, "out-"+b)
				o := c.run("restore", "--repo", f.repo, b, out)
				if lostBackup[b] {
					if o.code != 1 || !strings.Contains(o.stderr, b) {
						t.Errorf("restore %s with a damaged record or tree: exit %d, stderr:\n%s", b, o.code, o.stderr)
					}
					if entries, _ := os.ReadDir(out); len(entries) > 0 {
						t.Errorf("restore %s wrote %d entries from a damaged tree", b, len(entries))
					}
					continue
				}
				if len(lostFiles[b]) == 0 {
					if o.code != 0 {
						t.Errorf("restore %s, untouched by the damage: exit %d\n%s", b, o.code, o.stderr)
					}
					restoretest.CompareTrees(t, f.src[b], out)
					continue
				}
				if o.code != 1 {
					t.Errorf("restore %s: exit %d, want 1\n%s", b, o.code, o.stderr)
				}
				for _, p := range lostFiles[b] {
					if !strings.Contains(o.stderr, p) {
						t.Errorf("restore %s does not name %s:\n%s", b, p, o.stderr)
					}
					if _, err := os.Lstat(filepath.Join(out, p)); err == nil {
						t.Errorf("restore %s wrote %s, whose object is damaged", b, p)
					}
				}
				restoretest.CompareTrees(t, f.src[b], out, lostFiles[b]...)
			}
		})
	}
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}
