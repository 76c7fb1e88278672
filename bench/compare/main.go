package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"log"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/deltabackup/deltabackup/bench/internal/benchutil"
)

type config struct {
	work     string
	small    bool
	runs     int
	datasets []string
	tools    []string
	install  bool
	goPeers  bool
	settle   time.Duration
	out      string
}

func main() {
	var c config
	var datasets, tools string
	flag.StringVar(&c.work, "work", "/tmp/deltabackup-bench", "work directory for data sets, repositories and restores")
	flag.BoolVar(&c.small, "small", false, "quick run: 1/10 of each data set")
	flag.IntVar(&c.runs, "runs", 3, "runs per measurement (the median is reported)")
	flag.StringVar(&datasets, "datasets", "src,tiny,big", "data sets to measure: src, tiny, big, db")
	flag.StringVar(&tools, "tools", "deltabackup,restic,kopia,borg", "tools to measure (missing ones are skipped); deltabackup-plain is deltabackup without encryption")
	flag.BoolVar(&c.install, "install", false, "install restic, borgbackup and b3sum from Debian packages when missing")
	flag.BoolVar(&c.goPeers, "go-peers", false, "build restic 0.18.1 and kopia 0.22.3 with go (about 2 minutes)")
	flag.DurationVar(&c.settle, "settle", 0, "pause after deleting a restored tree, so file system clean-up does not land in the next run")
	flag.StringVar(&c.out, "out", "bench/results", "output path prefix: .md and .json are appended")
	flag.Parse()
	c.datasets = strings.Split(datasets, ",")
	c.tools = strings.Split(tools, ",")
	if c.runs < 1 {
		log.Fatal("-runs must be at least 1")
	}
	if err := run(c); err != nil {
		log.Fatal(err)
	}
}

// measurement is one timed command.
type measurement struct {
	Dataset   string  `json:"dataset"`
	Operation string  `json:"operation"`
	Tool      string  `json:"tool"`
	Run       int     `json:"run"`
	Wall      float64 `json:"wall_seconds"`
	CPU       float64 `json:"cpu_seconds"`
	MaxRSSKB  int64   `json:"max_rss_kb"`
	RepoBytes int64   `json:"repo_bytes,omitempty"`
	RepoFiles int64   `json:"repo_files,omitempty"`
	// AddedBytes is how much an incremental backup grew the repository.
	AddedBytes int64 `json:"added_bytes,omitempty"`
}

type results struct {
	Machine      map[string]string `json:"machine"`
	Datasets     map[string]string `json:"datasets"`
	Measurements []measurement     `json:"measurements"`
}

func run(c config) error {
	if err := os.MkdirAll(c.work, 0o755); err != nil {
		return err
	}
	bin := filepath.Join(c.work, "bin")
	os.MkdirAll(bin, 0o755)
	if _, err := benchutil.BuildDeltabackup(bin); err != nil {
		return err
	}
	if c.install {
		installDebianPeers()
	}
	if c.goPeers {
		if err := buildGoPeers(c.work, bin); err != nil {
			return err
		}
	}
	res := results{Machine: benchutil.Machine(), Datasets: map[string]string{}}
	for _, ds := range c.datasets {
		dir, desc, err := generate(c, ds)
		if err != nil {
			return err
		}
		res.Datasets[ds] = desc
		log.Printf("data set %s: %s", ds, desc)
		benchutil.Warm(dir)
		for _, name := range c.tools {
			t := findTool(name, bin, c.work)
			if t == nil {
				log.Printf("%s: not installed, skipped (use -install / -go-peers)", name)
				continue
			}
			ms, err := measureTool(c, t, ds, dir)
			if err != nil {
				return fmt.Errorf("%s on %s: %w", name, ds, err)
			}
			res.Measurements = append(res.Measurements, ms...)
		}
		if ds == "big" {
			res.Measurements = append(res.Measurements, hashRows(c, bin, dir)...)
		}
		writeOutputs(c, res) // after every data set, so a long run leaves partial results
	}
	return writeOutputs(c, res)
}

func installDebianPeers() {
	var missing []string
	for bin, pkg := range map[string]string{"restic": "restic", "borg": "borgbackup", "b3sum": "b3sum"} {
		if _, err := exec.LookPath(bin); err != nil {
			missing = append(missing, pkg)
		}
	}
	if len(missing) == 0 {
		return
	}
	sort.Strings(missing)
	log.Printf("installing %v from Debian packages", missing)
	cmd := exec.Command("apt-get", append([]string{"install", "-y", "-q"}, missing...)...)
	cmd.Stdout, cmd.Stderr = io.Discard, os.Stderr
	if err := cmd.Run(); err != nil {
		log.Printf("apt-get install %v: %v (those peers are skipped)", missing, err)
	}
}

// buildGoPeers builds pinned restic and kopia releases. go install
// pkg@version needs the module's version list, which the module proxy here
// does not serve; a throwaway module that requires the exact version does
// not.
func buildGoPeers(work, bin string) error {
	peers := []struct{ name, module, pkg, version string }{
		{"restic", "github.com/restic/restic", "github.com/restic/restic/cmd/restic", "v0.18.1"},
		{"kopia", "github.com/kopia/kopia", "github.com/kopia/kopia", "v0.22.3"},
	}
	for _, p := range peers {
		out := filepath.Join(bin, p.name+"-go")
		if _, err := os.Stat(out); err == nil {
			continue
		}
		dir := filepath.Join(work, "build-"+p.name)
		os.RemoveAll(dir)
		os.MkdirAll(dir, 0o755)
		steps := [][]string{
			{"go", "mod", "init", "bench/" + p.name},
			{"go", "get", p.pkg + "@" + p.version},
			{"go", "build", "-o", out, p.pkg},
		}
		log.Printf("building %s %s", p.name, p.version)
		for _, s := range steps {
			cmd := exec.Command(s[0], s[1:]...)
			cmd.Dir = dir
			cmd.Stdout, cmd.Stderr = io.Discard, os.Stderr
			if err := cmd.Run(); err != nil {
				return fmt.Errorf("%s: %v: %w", p.name, s, err)
			}
		}
	}
	return nil
}

// generate creates (once) and returns the directory of a data set.
func generate(c config, ds string) (string, string, error) {
	scale := 1
	suffix := ""
	if c.small {
		scale, suffix = 10, "-small"
	}
	dir := filepath.Join(c.work, "data", ds+suffix)
	done := dir + ".done"
	desc := ""
	switch ds {
	case "src":
		desc = "copy of $(go env GOROOT)"
		if scale > 1 {
			desc = "copy of $(go env GOROOT)/src/net and /src/runtime"
		}
	case "tiny":
		desc = fmt.Sprintf("%d files of 1-4 KiB in %d dirs", 200000/scale, 400/min(scale, 4))
	case "big":
		desc = fmt.Sprintf("4 x %d MiB random + %d MiB text", 1024/scale, 1024/scale)
	case "db":
		desc = fmt.Sprintf("a database directory: %d table files of 8 KiB pages (%d MiB), 4 WAL segments of 16 MiB, a 32 MiB log, 200 catalog files; "+
			"a night rewrites 1%% of the pages in place, appends 4 MiB to the log and inserts 100 bytes near the start of one table", dbTables, dbTableBytes(scale)>>20)
	default:
		return "", "", fmt.Errorf("unknown data set %q (src, tiny, big, db)", ds)
	}
	if _, err := os.Stat(done); err == nil {
		return dir, desc, nil
	}
	os.RemoveAll(dir)
	log.Printf("generating %s in %s", ds, dir)
	var err error
	switch ds {
	case "src":
		err = genSrc(dir, scale)
	case "tiny":
		err = genTiny(dir, scale)
	case "big":
		err = genBig(dir, scale)
	case "db":
		err = genDB(dir, scale)
	}
	if err != nil {
		return "", "", err
	}
	return dir, desc, os.WriteFile(done, nil, 0o644)
}

func genSrc(dir string, scale int) error {
	out, err := exec.Command("go", "env", "GOROOT").Output()
	if err != nil {
		return err
	}
	goroot := strings.TrimSpace(string(out))
	copyTree := func(from, to string) error {
		if out, err := exec.Command("cp", "-a", from, to).CombinedOutput(); err != nil {
			return fmt.Errorf("cp -a %s %s: %w: %s", from, to, err, bytes.TrimSpace(out))
		}
		return nil
	}
	if scale == 1 {
		// cp -a copies GOROOT to dir itself, so only its parent must exist
		// (a fresh -work directory has none yet).
		if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
			return err
		}
		return copyTree(goroot, dir)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	for _, sub := range []string{"src/net", "src/runtime"} {
		if err := copyTree(filepath.Join(goroot, sub), dir); err != nil {
			return err
		}
	}
	return nil
}

var words = strings.Fields(`the of and to in is that for it as with was on be by this are from at or an
which have not but all were when we there can more if will one about up out has been would so what data
backup file system node cluster storage object hash restore snapshot index pack chunk stream buffer`)

// text returns n bytes of compressible word salad.
func text(r *rand.Rand, n int) []byte {
	var b bytes.Buffer
	for b.Len() < n {
		b.WriteString(words[r.IntN(len(words))])
		if r.IntN(12) == 0 {
			b.WriteByte('\n')
		} else {
			b.WriteByte(' ')
		}
	}
	return b.Bytes()[:n]
}

func random(r *rand.Rand, n int) []byte {
	b := make([]byte, n)
	for i := 0; i+8 <= n; i += 8 {
		v := r.Uint64()
		for j := range 8 {
			b[i+j] = byte(v >> (8 * j))
		}
	}
	for i := n - n%8; i < n; i++ {
		b[i] = byte(r.Uint32())
	}
	return b
}

func genTiny(dir string, scale int) error {
	r := rand.New(rand.NewPCG(2026, 11))
	files, dirs := 200000/scale, 400/min(scale, 4)
	for i := range files {
		d := filepath.Join(dir, fmt.Sprintf("d%03d", i%dirs))
		if i < dirs {
			if err := os.MkdirAll(d, 0o755); err != nil {
				return err
			}
		}
		n := 1024 + r.IntN(3*1024+1)
		content := text(r, n)
		if i%2 == 1 {
			content = random(r, n)
		}
		if err := os.WriteFile(filepath.Join(d, fmt.Sprintf("f%06d", i)), content, 0o644); err != nil {
			return err
		}
	}
	return nil
}

func genBig(dir string, scale int) error {
	os.MkdirAll(dir, 0o755)
	size := (1 << 30) / scale
	r := rand.New(rand.NewPCG(7, 7))
	write := func(name string, gen func(n int) []byte) error {
		f, err := os.Create(filepath.Join(dir, name))
		if err != nil {
			return err
		}
		w := bufio.NewWriterSize(f, 4<<20)
		for left := size; left > 0; left -= 4 << 20 {
			if _, err := w.Write(gen(min(left, 4<<20))); err != nil {
				return err
			}
		}
		if err := w.Flush(); err != nil {
			return err
		}
		return f.Close()
	}
	for i := range 4 {
		if err := write(fmt.Sprintf("random-%d.bin", i), func(n int) []byte { return random(r, n) }); err != nil {
			return err
		}
	}
	return write("text.log", func(n int) []byte { return text(r, n) })
}

// The db data set: table files made of 8 KiB pages as a database keeps
// them, each page a header and line pointers (dense, high-entropy bytes:
// LSNs, checksums, offsets), then rows of text and numbers, then free
// space (zeros).
const (
	dbPage   = 8192
	dbTables = 24
	dbMarker = "PG_VERSION"
)

func dbTableBytes(scale int) int64 { return int64(768<<20) / int64(scale) }

// dbPageBytes returns one page: a fresh LSN and checksum make every
// rewrite of a page differ.
func dbPageBytes(r *rand.Rand) []byte {
	p := make([]byte, dbPage)
	rows := 20 + r.IntN(40)
	header := 24 + 4*rows
	copy(p, random(r, header))
	fill := dbPage * (40 + r.IntN(55)) / 100 // 40-95% of the page holds rows
	if fill > header {
		copy(p[header:fill], text(r, fill-header))
	}
	return p
}

func genDB(dir string, scale int) error {
	r := rand.New(rand.NewPCG(5432, 16))
	base := filepath.Join(dir, "base", "16384")
	for _, d := range []string{base, filepath.Join(dir, "pg_wal"), filepath.Join(dir, "global"), filepath.Join(dir, "log")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return err
		}
	}
	if err := os.WriteFile(filepath.Join(dir, dbMarker), []byte("16\n"), 0o600); err != nil {
		return err
	}
	// Tables of 1 to 47 units, the units summing to the total.
	total := dbTableBytes(scale) / dbPage
	units := int64(dbTables * (dbTables + 1) / 2)
	for i := range dbTables {
		pages := total * int64(i+1) / units
		var b bytes.Buffer
		for range pages {
			b.Write(dbPageBytes(r))
		}
		if err := os.WriteFile(filepath.Join(base, strconv.Itoa(16400+i)), b.Bytes(), 0o600); err != nil {
			return err
		}
	}
	for i := range 4 {
		if err := os.WriteFile(filepath.Join(dir, "pg_wal", fmt.Sprintf("%024X", i+1)), random(r, (16<<20)/scale), 0o600); err != nil {
			return err
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "log", "postgresql.log"), text(r, (32<<20)/scale), 0o600); err != nil {
		return err
	}
	for i := range 200 {
		pages := 1 + r.IntN(8)
		var b bytes.Buffer
		for range pages {
			b.Write(dbPageBytes(r))
		}
		if err := os.WriteFile(filepath.Join(dir, "global", strconv.Itoa(1200+i)), b.Bytes(), 0o600); err != nil {
			return err
		}
	}
	return nil
}

// changeDB is one night of a database: 1% of the table pages rewritten
// in place, 4 MiB appended to the log, and 100 bytes inserted 4 KiB into
// one table (everything after them moves).
func changeDB(dir string, seed uint64) error {
	r := rand.New(rand.NewPCG(seed, 5432))
	base := filepath.Join(dir, "base", "16384")
	entries, err := os.ReadDir(base)
	if err != nil {
		return err
	}
	type table struct {
		path  string
		pages int64
	}
	var tables []table
	var pages int64
	for _, e := range entries {
		fi, err := e.Info()
		if err != nil {
			return err
		}
		tables = append(tables, table{filepath.Join(base, e.Name()), fi.Size() / dbPage})
		pages += fi.Size() / dbPage
	}
	for range pages / 100 {
		n := r.Int64N(pages)
		for _, t := range tables {
			if n < t.pages {
				f, err := os.OpenFile(t.path, os.O_WRONLY, 0)
				if err != nil {
					return err
				}
				_, err = f.WriteAt(dbPageBytes(r), n*dbPage)
				if cerr := f.Close(); err == nil {
					err = cerr
				}
				if err != nil {
					return err
				}
				break
			}
			n -= t.pages
		}
	}
	logFile, err := os.OpenFile(filepath.Join(dir, "log", "postgresql.log"), os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return err
	}
	_, err = logFile.Write(text(r, 4<<20))
	if cerr := logFile.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	victim := tables[r.IntN(len(tables))].path
	data, err := os.ReadFile(victim)
	if err != nil {
		return err
	}
	at := min(4096, len(data))
	data = append(data[:at], append(random(r, 100), data[at:]...)...)
	return os.WriteFile(victim, data, 0o600)
}

// change rewrites about 1% of the bytes of a data set, differently for
// each seed: whole small files, or a 1% stretch of one big file; a db
// data set gets a night of a database (changeDB).
func change(dir string, seed uint64) error {
	if _, err := os.Stat(filepath.Join(dir, dbMarker)); err == nil {
		return changeDB(dir, seed)
	}
	var files []string
	var total int64
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			files = append(files, p)
			if fi, err := d.Info(); err == nil {
				total += fi.Size()
			}
		}
		return nil
	})
	sort.Strings(files)
	r := rand.New(rand.NewPCG(seed, 99))
	budget := total / 100
	if len(files) < 20 { // big: a stretch inside one file
		p := files[r.IntN(len(files))]
		fi, err := os.Stat(p)
		if err != nil {
			return err
		}
		f, err := os.OpenFile(p, os.O_WRONLY, 0)
		if err != nil {
			return err
		}
		defer f.Close()
		n := min(budget, fi.Size())
		_, err = f.WriteAt(random(r, int(n)), r.Int64N(fi.Size()-n+1))
		return err
	}
	for budget > 0 {
		p := files[r.IntN(len(files))]
		fi, err := os.Stat(p)
		if err != nil {
			return err
		}
		if err := os.WriteFile(p, random(r, int(fi.Size())), fi.Mode().Perm()); err != nil {
			return err
		}
		budget -= fi.Size()
	}
	return nil
}

// tool knows how to drive one backup program.
type tool struct {
	name    string
	env     []string
	init    func(repo string) []string
	backup  func(repo, src string) []string
	restore func(repo, src, target string) []string
	workDir func(target string) string // for borg extract, which restores into the cwd
}

func findTool(name, bin, work string) *tool {
	look := func(names ...string) string {
		for _, n := range names {
			if p, err := exec.LookPath(n); err == nil {
				return p
			}
		}
		return ""
	}
	cache := filepath.Join(work, "cache", name)
	switch name {
	case "deltabackup", "deltabackup-plain":
		// deltabackup encrypts like restic and kopia; deltabackup-plain
		// (--insecure-no-encryption) shows what encryption costs.
		p := filepath.Join(bin, "deltabackup")
		init := []string{"init", "-q"}
		if name == "deltabackup-plain" {
			init = append(init, "--insecure-no-encryption")
		}
		return &tool{
			name:    name,
			env:     []string{"DELTABACKUP_CACHE_DIR=" + cache, "DELTABACKUP_PASSWORD=bench"},
			init:    func(repo string) []string { return append(append([]string{p}, init...), "--repo", repo) },
			backup:  func(repo, src string) []string { return []string{p, "backup", "-q", "--repo", repo, src} },
			restore: func(repo, src, t string) []string { return []string{p, "restore", "-q", "--repo", repo, "latest", t} },
		}
	case "restic":
		p := look(filepath.Join(bin, "restic-go"), "restic")
		if p == "" {
			return nil
		}
		return &tool{
			name: "restic " + version(p, "version"),
			env:  []string{"RESTIC_PASSWORD=bench", "RESTIC_CACHE_DIR=" + cache},
			init: func(repo string) []string { return []string{p, "-q", "-r", repo, "init"} },
			backup: func(repo, src string) []string {
				return []string{p, "-q", "-r", repo, "backup", "--host", "bench", src}
			},
			restore: func(repo, src, t string) []string {
				return []string{p, "-q", "-r", repo, "restore", "latest", "--target", t}
			},
		}
	case "kopia":
		p := look(filepath.Join(bin, "kopia-go"), "kopia")
		if p == "" {
			return nil
		}
		cfg := func(repo string) []string {
			return []string{p, "--config-file=" + repo + ".config", "--log-dir=" + repo + ".logs"}
		}
		return &tool{
			name: "kopia " + version(p, "--version"),
			env:  []string{"KOPIA_PASSWORD=bench", "KOPIA_CHECK_FOR_UPDATES=false"},
			init: func(repo string) []string {
				return append(cfg(repo), "repository", "create", "filesystem", "--path="+repo, "--cache-directory="+cache)
			},
			backup: func(repo, src string) []string { return append(cfg(repo), "snapshot", "create", "--no-progress", src) },
			restore: func(repo, src, t string) []string {
				return append(cfg(repo), "snapshot", "restore", "--no-progress", src, t)
			},
		}
	case "borg":
		p := look("borg")
		if p == "" {
			return nil
		}
		n := 0
		return &tool{
			name: "borg " + version(p, "--version"),
			env: []string{"BORG_PASSPHRASE=", "BORG_BASE_DIR=" + cache, "BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes",
				"BORG_RELOCATED_REPO_ACCESS_IS_OK=yes"},
			init: func(repo string) []string { return []string{p, "init", "--encryption=none", repo} },
			backup: func(repo, src string) []string {
				n++
				return []string{p, "create", fmt.Sprintf("%s::a%d", repo, n), src}
			},
			restore: func(repo, src, t string) []string {
				return []string{p, "extract", fmt.Sprintf("%s::a%d", repo, n)}
			},
			workDir: func(t string) string { return t },
		}
	}
	return nil
}

func version(bin, arg string) string {
	out, _ := exec.Command(bin, arg).CombinedOutput()
	for _, f := range strings.Fields(string(out)) {
		if len(f) > 0 && (f[0] >= '0' && f[0] <= '9' || f[0] == 'v') && strings.Contains(f, ".") {
			return f
		}
	}
	return "?"
}

// timed runs argv under /usr/bin/time -v.
func timed(t *tool, argv []string, dir string) (measurement, error) {
	cmd := exec.Command("/usr/bin/time", append([]string{"-v"}, argv...)...)
	cmd.Env = append(os.Environ(), t.env...)
	cmd.Dir = dir
	var stderr bytes.Buffer
	cmd.Stdout = io.Discard
	cmd.Stderr = &stderr
	err := cmd.Run()
	m := parseTime(stderr.String())
	if err != nil {
		tail := stderr.String()
		if len(tail) > 2000 {
			tail = tail[len(tail)-2000:]
		}
		return m, fmt.Errorf("%s: %w\n%s", strings.Join(argv, " "), err, tail)
	}
	return m, nil
}

func parseTime(out string) measurement {
	var m measurement
	for _, l := range strings.Split(out, "\n") {
		l = strings.TrimSpace(l)
		k, v, ok := strings.Cut(l, ": ")
		if !ok {
			continue
		}
		switch k {
		case "User time (seconds)", "System time (seconds)":
			f, _ := strconv.ParseFloat(v, 64)
			m.CPU += f
		case "Maximum resident set size (kbytes)":
			m.MaxRSSKB, _ = strconv.ParseInt(v, 10, 64)
		case "Elapsed (wall clock) time (h:mm:ss or m:ss)":
			parts := strings.Split(v, ":")
			mult := 1.0
			for i := len(parts) - 1; i >= 0; i-- {
				f, _ := strconv.ParseFloat(parts[i], 64)
				m.Wall += f * mult
				mult *= 60
			}
		}
	}
	return m
}

func plain(argv []string, env []string, dir string) error {
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %w\n%s", strings.Join(argv, " "), err, out)
	}
	return nil
}

func duStats(dir string) (bytes, files int64) {
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			if fi, err := d.Info(); err == nil {
				bytes += fi.Size()
				files++
			}
		}
		return nil
	})
	return
}

func measureTool(c config, t *tool, ds, src string) ([]measurement, error) {
	var ms []measurement
	slug := strings.Fields(t.name)[0]
	repos := filepath.Join(c.work, "repos")
	os.MkdirAll(repos, 0o755)
	record := func(op string, run int, m measurement) {
		m.Dataset, m.Operation, m.Tool, m.Run = ds, op, t.name, run
		log.Printf("%-5s %-12s %-22s run %d: %6.2fs wall %6.2fs cpu %7.1f MiB", ds, op, t.name, run, m.Wall, m.CPU, float64(m.MaxRSSKB)/1024)
		ms = append(ms, m)
	}
	// Full backups, each into a fresh repository; the last one is kept.
	var repo string
	for i := range c.runs {
		repo = filepath.Join(repos, fmt.Sprintf("%s-%s-%d", slug, ds, i))
		os.RemoveAll(repo)
		os.RemoveAll(repo + ".config")
		os.RemoveAll(filepath.Join(c.work, "cache", slug))
		if err := plain(t.init(repo), t.env, ""); err != nil {
			return nil, err
		}
		m, err := timed(t, t.backup(repo, src), "")
		if err != nil {
			return nil, err
		}
		m.RepoBytes, m.RepoFiles = duStats(repo)
		record("full", i, m)
		if i < c.runs-1 {
			os.RemoveAll(repo)
		}
	}
	for i := range c.runs {
		m, err := timed(t, t.backup(repo, src), "")
		if err != nil {
			return nil, err
		}
		record("no-change", i, m)
	}
	for i := range c.runs {
		// A seed never used before: a change with an old seed writes the
		// bytes an earlier run wrote, which changes mtimes but no content
		// (every incremental row before this fix measured reading only).
		if err := change(src, uint64(time.Now().UnixNano())); err != nil {
			return nil, err
		}
		before, _ := duStats(repo)
		m, err := timed(t, t.backup(repo, src), "")
		if err != nil {
			return nil, err
		}
		after, _ := duStats(repo)
		m.AddedBytes = after - before // what this incremental stored
		record("incremental", i, m)
	}
	for i := range c.runs {
		target := filepath.Join(c.work, "restore", fmt.Sprintf("%s-%s-%d", slug, ds, i))
		os.RemoveAll(target)
		os.MkdirAll(target, 0o755)
		dir := ""
		if t.workDir != nil {
			dir = t.workDir(target)
		}
		m, err := timed(t, t.restore(repo, src, target), dir)
		if err != nil {
			return nil, err
		}
		record("restore", i, m)
		os.RemoveAll(target)
		time.Sleep(c.settle)
	}
	os.RemoveAll(repo)
	return ms, nil
}

// hashRows compares deltabackup's hashing of the big data set with b3sum at
// 1 and all threads.
func hashRows(c config, bin, dir string) []measurement {
	var ms []measurement
	var files []string
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		files = append(files, filepath.Join(dir, e.Name()))
	}
	nproc := benchutil.Machine()["nproc"]
	b3 := &tool{name: "b3sum"}
	db := &tool{name: "deltabackup bench"}
	for _, threads := range []string{"1", nproc} {
		for i := range c.runs {
			if p, err := exec.LookPath("b3sum"); err == nil {
				if m, err := timed(b3, append([]string{p, "--num-threads", threads}, files...), ""); err == nil {
					m.Dataset, m.Operation, m.Tool, m.Run = "big", "hash x"+threads, "b3sum", i
					ms = append(ms, m)
				}
			}
			// Whole files hashed (as b3sum does), and files cut into
			// chunks each hashed (what a backup does by default).
			for _, only := range []string{"blake3", "chunks"} {
				argv := []string{filepath.Join(bin, "deltabackup"), "bench", "--workers", threads, "--no-read-baseline", "--only", only, dir}
				if m, err := timed(db, argv, ""); err == nil {
					m.Dataset, m.Operation, m.Tool, m.Run = "big", "hash x"+threads, "deltabackup", i
					if only == "chunks" {
						m.Operation = "chunk+hash x" + threads
					}
					ms = append(ms, m)
				} else {
					log.Print(err)
				}
			}
		}
	}
	return ms
}

type row struct {
	dataset, op, tool string
	wall, cpu, rss    float64
	repoBytes         int64
	repoFiles         int64
	addedBytes        float64 // median, incremental backups
}

func summarize(ms []measurement) []row {
	type key struct{ ds, op, tool string }
	groups := map[key][]measurement{}
	var order []key
	for _, m := range ms {
		k := key{m.Dataset, m.Operation, m.Tool}
		if _, ok := groups[k]; !ok {
			order = append(order, k)
		}
		groups[k] = append(groups[k], m)
	}
	var rows []row
	for _, k := range order {
		var wall, cpu, rss, added []float64
		r := row{dataset: k.ds, op: k.op, tool: k.tool}
		for _, m := range groups[k] {
			wall = append(wall, m.Wall)
			cpu = append(cpu, m.CPU)
			rss = append(rss, float64(m.MaxRSSKB)/1024)
			added = append(added, float64(m.AddedBytes))
			if m.RepoBytes > 0 {
				r.repoBytes, r.repoFiles = m.RepoBytes, m.RepoFiles
			}
		}
		r.wall, r.cpu, r.rss, r.addedBytes = benchutil.Median(wall), benchutil.Median(cpu), benchutil.Median(rss), benchutil.Median(added)
		rows = append(rows, r)
	}
	return rows
}

func writeOutputs(c config, res results) error {
	os.MkdirAll(filepath.Dir(c.out), 0o755)
	data, err := json.MarshalIndent(res, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(c.out+".json", data, 0o644); err != nil {
		return err
	}
	rows := summarize(res.Measurements)
	ours := map[[2]string]row{}
	for _, r := range rows {
		if r.tool == "deltabackup" {
			ours[[2]string{r.dataset, r.op}] = r
		}
	}
	var b strings.Builder
	fmt.Fprintf(&b, "# deltabackup vs peers\n\nMachine: %s, %s cores, kernel %s, %s. Medians of %d runs, page cache warm.\n\n",
		res.Machine["cpu"], res.Machine["nproc"], res.Machine["kernel"], res.Machine["date"], c.runs)
	var names []string
	for ds := range res.Datasets {
		names = append(names, ds)
	}
	sort.Strings(names)
	for _, ds := range names {
		fmt.Fprintf(&b, "- **%s**: %s\n", ds, res.Datasets[ds])
	}
	b.WriteString("\nrepo MiB: the repository after a full backup; +N on an incremental row: what that incremental stored (median).\n")
	b.WriteString("\n| data set | operation | tool | wall s | CPU s | peak RSS MiB | repo MiB | repo files | deltabackup/tool (wall) |\n")
	b.WriteString("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |\n")
	for _, r := range rows {
		ratio := ""
		// Against deltabackup-plain, the ratio is what encryption costs.
		if o, ok := ours[[2]string{r.dataset, r.op}]; ok && r.tool != "deltabackup" && r.wall > 0 {
			ratio = fmt.Sprintf("%.2f", o.wall/r.wall)
		}
		repo, files := "", ""
		if r.repoBytes > 0 {
			repo, files = fmt.Sprintf("%.1f", float64(r.repoBytes)/(1<<20)), strconv.FormatInt(r.repoFiles, 10)
		}
		if r.op == "incremental" {
			repo = fmt.Sprintf("+%.1f", r.addedBytes/(1<<20)) // what one incremental stored
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %.2f | %.2f | %.1f | %s | %s | %s |\n", r.dataset, r.op, r.tool, r.wall, r.cpu, r.rss, repo, files, ratio)
	}
	return os.WriteFile(c.out+".md", []byte(b.String()), 0o644)
}
