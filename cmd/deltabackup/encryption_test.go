package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/deltabackup/deltabackup/hashstore"
	"github.com/deltabackup/deltabackup/hashstore/keycache"
	"github.com/deltabackup/deltabackup/hashstore/storetest"
	"github.com/deltabackup/deltabackup/restore/restoretest"
	"github.com/deltabackup/deltabackup/snapshot/digest"
)

const marker = "MARKER-c0ffee-4b1d-secret"

// makeMarkedSource writes a tree whose files of every tier (embedded in
// its tree, packed, an object of its own) hold marker, under names that
// are secrets too; it returns the names and the files' content ids.
func makeMarkedSource(t *testing.T, root string) []string {
	t.Helper()
	noise := func(n int) []byte {
		b := make([]byte, n)
		rand.Read(b)
		copy(b[n/2:], marker)
		return b
	}
	files := map[string][]byte{
		"confidential-payroll/embedded-salaries.txt":   []byte("tiny " + marker),
		"confidential-payroll/packed-bonus-plan.csv":   noise(6000),
		"confidential-payroll/own-object-ledger.db":    noise(2 << 20),
		"confidential-payroll/merger-target-acme.docx": bytes.Repeat([]byte(marker+" "), 400),
	}
	var names []string
	for rel, data := range files {
		p := filepath.Join(root, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
		// Its plain id: whoever can compute it must not find it stored.
		names = append(names, digest.Of(data).String())
	}
	os.Symlink("symlink-target-offshore-account", filepath.Join(root, "confidential-payroll/link-to-offshore"))
	// An xattr value, where the file system keeps them.
	_ = unix.Setxattr(filepath.Join(root, "confidential-payroll/packed-bonus-plan.csv"), "user.note", []byte(marker), 0)
	filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if p != root {
			names = append(names, d.Name())
		}
		return nil
	})
	return append(names, "symlink-target-offshore-account")
}

// scanRepository returns which of secrets occur in any byte of any file
// under repo.
func scanRepository(t *testing.T, repo string, secrets []string) []string {
	t.Helper()
	found := map[string]bool{}
	filepath.WalkDir(repo, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			t.Fatal(err)
		}
		rel, _ := filepath.Rel(repo, p)
		data := []byte(rel)
		if !d.IsDir() {
			if data, err = os.ReadFile(p); err != nil {
				t.Fatal(err)
			}
			data = append(data, rel...)
		}
		for _, s := range secrets {
			if bytes.Contains(data, []byte(s)) {
				found[s+" in "+rel] = true
			}
		}
		return nil
	})
	var out []string
	for f := range found {
		out = append(out, f)
	}
	return out
}

// TestEncryptedRepositoryHoldsNoPlaintext: with compression off, no byte
// of an encrypted repository shows the marker, a file name or a link
// target of the tree backed up; the same backup into an unencrypted
// repository shows them (so the scan can fail).
func TestEncryptedRepositoryHoldsNoPlaintext(t *testing.T) {
	c := newCLI(t)
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	names := makeMarkedSource(t, src)
	secrets := append([]string{marker, src}, names...)
	for _, encrypted := range []bool{true, false} {
		repo := filepath.Join(dir, "repo-encrypted")
		if encrypted {
			c.ok("init", "--repo", repo)
		} else {
			repo = filepath.Join(dir, "repo-plain")
			c.ok("init", "--repo", repo, "--insecure-no-encryption")
		}
		c.ok("backup", "--repo", repo, "--compression", "off", src)
		c.ok("backup", "--repo", repo, "--compression", "off", "--tag", "again", src)
		out := filepath.Join(dir, "out-"+filepath.Base(repo))
		c.ok("restore", "--repo", repo, "latest", out)
		restoretest.CompareTrees(t, src, out)
		found := scanRepository(t, repo, secrets)
		switch {
		case encrypted && len(found) > 0:
			t.Errorf("the encrypted repository shows %v", found)
		case !encrypted && len(found) == 0:
			t.Errorf("the unencrypted repository shows none of the secrets: the scan cannot fail")
		}
		stats := summary(t, c.ok("stats", "--json", "--repo", repo))
		want := map[bool]string{true: hashstore.EncryptionXChaCha20, false: hashstore.EncryptionNone}[encrypted]
		if stats["encryption"] != want {
			t.Errorf("stats says encryption %v, want %s", stats["encryption"], want)
		}
	}
}

// repoListing is every file under repo with its content, to tell that a
// command wrote nothing.
func repoListing(t *testing.T, repo string) map[string]string {
	t.Helper()
	out := map[string]string{}
	filepath.WalkDir(repo, func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			data, _ := os.ReadFile(p)
			out[p] = string(data)
		}
		return nil
	})
	return out
}

func TestWrongOrMissingPasswordWritesNothing(t *testing.T) {
	c := newCLI(t)
	dir, src, repo := c.backedUpSource()
	before := repoListing(t, repo)

	const wrong = "wrong-password-do-not-echo"
	pwFile := filepath.Join(dir, "wrong")
	os.WriteFile(pwFile, []byte(wrong+"\n"), 0o600)
	for _, args := range [][]string{
		{"backup", "--repo", repo, "--password-file", pwFile, src},
		{"--json", "backup", "--repo", repo, "--password-command", "echo " + wrong, src},
		{"restore", "--repo", repo, "--password-file", pwFile, "latest", filepath.Join(dir, "out")},
		{"gc", "--repo", repo, "--password-file", pwFile},
		{"key", "add", "--repo", repo, "--password-file", pwFile, "--new-password-file", pwFile},
	} {
		o := c.run(args...)
		if o.code != exitPassword {
			t.Fatalf("%v: exit %d, want %d\n%s", args, o.code, exitPassword, o.stderr)
		}
		if lines := strings.Split(strings.TrimSpace(o.stderr), "\n"); len(lines) != 1 || !strings.Contains(o.stderr, "wrong password") {
			t.Errorf("%v: want one line naming the wrong password, got:\n%s", args, o.stderr)
		}
		if strings.Contains(o.stderr+o.stdout, wrong) {
			t.Errorf("%v: the password appears in the output:\n%s%s", args, o.stdout, o.stderr)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "out")); err == nil {
		t.Error("a restore with the wrong password created its target")
	}
	// No password at all (no terminal here): the same code, and advice.
	t.Setenv("DELTABACKUP_PASSWORD", "")
	o := c.run("list", "--repo", repo)
	if o.code != exitPassword || !strings.Contains(o.stderr, "--password-file") {
		t.Errorf("no password: exit %d\n%s", o.code, o.stderr)
	}
	// A password command that fails: named, the same code, no secret.
	o = c.run("list", "--repo", repo, "--password-command", "echo "+wrong+"; exit 3")
	if o.code != exitPassword || strings.Contains(o.stderr, wrong) || !strings.Contains(o.stderr, "--password-command failed") {
		t.Errorf("failing password command: exit %d\n%s", o.code, o.stderr)
	}
	if after := repoListing(t, repo); !maps.Equal(before, after) {
		t.Error("commands refused for their password changed the repository")
	}
}

// TestKeyRotation: add a password, remove the old one while opened with
// the new; everything restores with the new one and the old one no
// longer opens the repository; the key in use cannot be removed.
func TestKeyRotation(t *testing.T) {
	c := newCLI(t)
	dir, src, repo := c.backedUpSource()
	newFile := filepath.Join(dir, "new")
	os.WriteFile(newFile, []byte("the new password\n"), 0o600)

	var added struct {
		Key hashstore.KeyInfo `json:"key"`
	}
	json.Unmarshal([]byte(c.ok("--json", "key", "add", "--repo", repo, "--new-password-file", newFile).stdout), &added)
	var listed struct {
		Keys []hashstore.KeyInfo `json:"keys"`
	}
	json.Unmarshal([]byte(c.ok("--json", "key", "list", "--repo", repo, "--password-file", newFile).stdout), &listed)
	if len(listed.Keys) != 2 || added.Key.ID == "" {
		t.Fatalf("after key add: %+v", listed.Keys)
	}
	var old string
	for _, k := range listed.Keys {
		if k.Current != (k.ID == added.Key.ID) {
			t.Errorf("key %s current=%v, opened with %s", k.ID, k.Current, added.Key.ID)
		}
		if !k.Current {
			old = k.ID
		}
	}
	// The key in use cannot go (nor, so, the last one).
	if o := c.run("key", "remove", "--repo", repo, "--password-file", newFile, added.Key.ID[:10]); o.code == 0 || !strings.Contains(o.stderr, "in use") {
		t.Errorf("removing the key in use: exit %d\n%s", o.code, o.stderr)
	}
	c.ok("key", "remove", "--repo", repo, "--password-file", newFile, old[:10])
	if o := c.run("list", "--repo", repo); o.code != exitPassword {
		t.Errorf("the removed password still opens the repository: exit %d\n%s", o.code, o.stderr)
	}
	out := filepath.Join(dir, "out")
	c.ok("restore", "--repo", repo, "--password-file", newFile, "latest", out)
	restoretest.CompareTrees(t, src, out)
	c.ok("verify", "--repo", repo, "--password-file", newFile, "--read-data")

	// passwd replaces the key in use: the old password stops working.
	third := filepath.Join(dir, "third")
	os.WriteFile(third, []byte("a third password"), 0o600)
	c.ok("key", "passwd", "--repo", repo, "--password-file", newFile, "--new-password-file", third)
	if o := c.run("list", "--repo", repo, "--password-file", newFile); o.code != exitPassword {
		t.Errorf("the replaced password still opens the repository: exit %d", o.code)
	}
	c.ok("backup", "--repo", repo, "--password-file", third, src)
	if o := c.ok("key", "list", "--repo", repo, "--password-file", third); strings.Count(o.stdout, "\n") != 2 {
		t.Errorf("one key expected after passwd:\n%s", o.stdout)
	}
}

// TestDamagedOrForeignKeyFiles: a key file flipped, truncated, copied
// from another repository, or claiming absurd KDF costs is named and
// refused (before any argon2id run for the absurd one).
func TestDamagedOrForeignKeyFiles(t *testing.T) {
	c := newCLI(t)
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	makeSource(t, src)
	keyFile := func(repo string) string {
		matches, _ := filepath.Glob(filepath.Join(repo, "keys", "*"))
		if len(matches) != 1 {
			t.Fatalf("%d key files in %s", len(matches), repo)
		}
		return matches[0]
	}
	fresh := func(name string) string {
		repo := filepath.Join(dir, name)
		c.ok("init", "--repo", repo)
		c.ok("backup", "--repo", repo, src)
		return repo
	}
	cases := []struct {
		name, want string
		damage     func(repo string)
	}{
		{"flip a bit", "is damaged", func(repo string) { flipByte(t, keyFile(repo), 40) }},
		{"truncate", "is damaged", func(repo string) { os.Truncate(keyFile(repo), 30) }},
		{"another repository's", "belongs to repository", func(repo string) {
			other := fresh("other-" + filepath.Base(repo))
			mine := keyFile(repo)
			theirs := keyFile(other)
			os.Remove(mine)
			data, _ := os.ReadFile(theirs)
			os.WriteFile(filepath.Join(repo, "keys", filepath.Base(theirs)), data, 0o600)
		}},
		{"absurd costs", "outside", func(repo string) {
			name := keyFile(repo)
			data, _ := os.ReadFile(name)
			var kf map[string]any
			json.Unmarshal(data, &kf)
			kf["kdf"].(map[string]any)["memory_kib"] = 1 << 31
			data, _ = json.Marshal(kf)
			os.Remove(name)
			os.WriteFile(filepath.Join(repo, "keys", digest.Of(data).String()), data, 0o600)
		}},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			repo := fresh("repo" + string(rune('a'+i)))
			tc.damage(repo)
			o := c.run("restore", "--repo", repo, "latest", filepath.Join(dir, "out"+tc.name))
			if o.code == 0 || !strings.Contains(o.stderr, tc.want) || !strings.Contains(o.stderr, "keys/") {
				t.Errorf("exit %d, want an error naming the key file with %q:\n%s", o.code, tc.want, o.stderr)
			}
		})
	}
	// A damaged key file the command did not open with: verify names it.
	repo2 := fresh("second-key-damaged")
	second := filepath.Join(dir, "second-password")
	os.WriteFile(second, []byte("second"), 0o600)
	var added struct {
		Key hashstore.KeyInfo `json:"key"`
	}
	json.Unmarshal([]byte(c.ok("--json", "key", "add", "--repo", repo2, "--new-password-file", second).stdout), &added)
	flipByte(t, filepath.Join(repo2, "keys", added.Key.ID), 50)
	if o := c.run("verify", "--repo", repo2); o.code != 1 || !strings.Contains(o.stdout+o.stderr, "damaged key keys/"+added.Key.ID) {
		t.Errorf("verify with a damaged second key file: exit %d\n%s%s", o.code, o.stdout, o.stderr)
	}

	// A config edited to claim no encryption is refused, not obeyed.
	repo := fresh("edited-config")
	cfgPath := filepath.Join(repo, "config")
	data, _ := os.ReadFile(cfgPath)
	os.WriteFile(cfgPath, bytes.Replace(data, []byte(hashstore.EncryptionXChaCha20), []byte(hashstore.EncryptionNone), 1), 0o600)
	before := repoListing(t, repo)
	if o := c.run("backup", "--repo", repo, src); o.code == 0 || !strings.Contains(o.stderr, "holds key file") {
		t.Errorf("backup into a repository whose config says no encryption: exit %d\n%s", o.code, o.stderr)
	}
	if !maps.Equal(before, repoListing(t, repo)) {
		t.Error("a refused backup wrote to the repository")
	}
}

// TestDamagedIndexFileAndPackTrailerAreNamed: the two sealed files the
// corruption test does not reach.
func TestDamagedIndexFileAndPackTrailerAreNamed(t *testing.T) {
	c := newCLI(t)
	_, _, repo := c.backedUpSource()
	indexes, _ := filepath.Glob(filepath.Join(repo, "index", "*", "*"))
	if len(indexes) == 0 {
		t.Fatal("no index files")
	}
	flipByte(t, indexes[0], 30)
	o := c.run("verify", "--repo", repo)
	if o.code == 0 || !strings.Contains(o.stderr+o.stdout, filepath.Base(indexes[0])) {
		t.Errorf("a flipped index file: exit %d, not named\n%s%s", o.code, o.stdout, o.stderr)
	}

	store := openTestStore(t, repo)
	packs, _ := filepath.Glob(filepath.Join(repo, "packs", "*", "*"))
	pack := packs[0]
	info, _ := os.Stat(pack)
	flipByte(t, pack, info.Size()-12) // inside the sealed trailer
	key, _ := filepath.Rel(repo, pack)
	if _, err := store.ReadPackTrailer(context.Background(), filepath.ToSlash(key)); err == nil || !strings.Contains(err.Error(), "does not authenticate") {
		t.Errorf("a flipped pack trailer: %v", err)
	}
}

// TestCopyBetweenKeysRenamesAndReseals: a copy into a repository with
// another key stores every content under the target's names and seal.
func TestCopyBetweenKeysRenamesAndReseals(t *testing.T) {
	c := newCLI(t)
	dir := t.TempDir()
	a, b, src := filepath.Join(dir, "a"), filepath.Join(dir, "b"), filepath.Join(dir, "src")
	makeSource(t, src)
	// Whole files: big.bin is then a loose object for certain, whose names
	// under the two keys are compared (chunks of it may all be packed).
	c.ok("init", "--repo", a, "--no-chunking")
	c.ok("backup", "--repo", a, src)
	bPassword := filepath.Join(dir, "b-password")
	os.WriteFile(bPassword, []byte("b's own password"), 0o600)
	c.ok("init", "--repo", b, "--password-file", bPassword)
	aPassword := filepath.Join(dir, "a-password")
	os.WriteFile(aPassword, []byte(storetest.Password), 0o600)
	c.ok("copy", "--from", a, "--to", b, "--from-password-file", aPassword, "--password-file", bPassword)
	out := filepath.Join(dir, "out")
	c.ok("restore", "--repo", b, "--password-file", bPassword, "latest", out)
	restoretest.CompareTrees(t, src, out)
	c.ok("verify", "--repo", b, "--password-file", bPassword, "--read-data")
	looseA, _ := filepath.Glob(filepath.Join(a, "objects", "*", "*"))
	for _, p := range looseA {
		if _, err := os.Stat(filepath.Join(b, "objects", filepath.Base(filepath.Dir(p)), filepath.Base(p))); err == nil {
			t.Errorf("loose object %s has the same name under both keys", filepath.Base(p))
		}
	}
	if len(looseA) == 0 {
		t.Fatal("no loose objects to compare")
	}
	// A peer serving repository a (its own key) feeds a restore from b:
	// contents travel by plain id, verified on arrival.
	url := c.serve("--repo", a)
	out2 := filepath.Join(dir, "out2")
	s := summary(t, c.ok("restore", "--json", "--repo", b, "--password-file", bPassword, "--from", url, "latest", out2))
	restoretest.CompareTrees(t, src, out2)
	var fromPeer int64
	for _, source := range sourcesOf(t, s) {
		if source.Source == "peer "+url {
			fromPeer += source.FetchedBytes
		}
	}
	if fromPeer == 0 {
		t.Errorf("the peer with another key delivered nothing: %+v", sourcesOf(t, s))
	}
}

// TestKeyCacheServesTheRightPasswordOnly: with the kernel keyring cache
// on, a command after another opens the repository without its key
// file (shown by damaging the key file's bytes: only the cache can open
// it then), never for a wrong password, and never for the password of a
// key that was removed.
func TestKeyCacheServesTheRightPasswordOnly(t *testing.T) {
	if keycache.Kernel(time.Minute) == nil {
		t.Skip("the kernel keyring cannot be used here (keyctl refused): the key cache is off")
	}
	t.Setenv("DELTABACKUP_KEY_CACHE", "1m")
	c := newCLI(t)
	dir := t.TempDir()
	repo, src := filepath.Join(dir, "repo"), filepath.Join(dir, "src")
	makeSource(t, src)
	c.ok("init", "--repo", repo) // caches the new key
	c.ok("backup", "--repo", repo, src)
	keys, _ := filepath.Glob(filepath.Join(repo, "keys", "*"))
	original, _ := os.ReadFile(keys[0])
	flipByte(t, keys[0], 40)
	c.ok("list", "--repo", repo)
	if o := c.run("list", "--repo", repo, "--key-cache", "0"); o.code == 0 || !strings.Contains(o.stderr, "is damaged") {
		t.Fatalf("without the cache the damaged key file should stop the open: exit %d\n%s", o.code, o.stderr)
	}
	wrong := filepath.Join(dir, "wrong")
	os.WriteFile(wrong, []byte("not the password"), 0o600)
	if o := c.run("list", "--repo", repo, "--password-file", wrong); o.code == 0 {
		t.Fatalf("a wrong password opened through the cache:\n%s", o.stdout)
	}
	os.WriteFile(keys[0], original, 0o600)

	// Another key; the first one removed: its password, cached a moment
	// ago, no longer opens the repository.
	second := filepath.Join(dir, "second")
	os.WriteFile(second, []byte("the second password"), 0o600)
	c.ok("key", "add", "--repo", repo, "--new-password-file", second)
	// Removed by a process that does not touch the cache: the entry of
	// the first password stays, and must not be honoured.
	c.ok("key", "remove", "--repo", repo, "--key-cache", "0", "--password-file", second, filepath.Base(keys[0])[:12])
	if o := c.run("list", "--repo", repo); o.code != exitPassword {
		t.Fatalf("the removed key's password still opens the repository through the cache: exit %d\n%s", o.code, o.stderr)
	}
	c.ok("list", "--repo", repo, "--password-file", second)
}
