package main

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// postgres runs PostgreSQL binaries of one installation as the postgres
// user, against clusters on Unix sockets in private directories.
type postgres struct {
	t    *testing.T
	bin  string
	cred *syscall.Credential
}

// findPostgres finds initdb, pg_ctl, pgbench and psql: in
// DELTABACKUP_PG_BIN, else in Debian's /usr/lib/postgresql/*/bin. In CI
// (CI set) a missing installation fails the test; elsewhere it skips.
func findPostgres(t *testing.T) *postgres {
	t.Helper()
	fail := t.Skipf
	if os.Getenv("CI") != "" {
		fail = t.Fatalf
	}
	if os.Geteuid() != 0 {
		fail("the PostgreSQL acceptance test runs as root: it backs up a cluster owned by postgres and restores its owners")
		return nil
	}
	bin := os.Getenv("DELTABACKUP_PG_BIN")
	if bin == "" {
		dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
		if len(dirs) > 0 {
			bin = dirs[len(dirs)-1]
		}
	}
	for _, tool := range []string{"initdb", "pg_ctl", "pgbench", "psql"} {
		if _, err := os.Stat(filepath.Join(bin, tool)); err != nil {
			fail("PostgreSQL is not installed (no %s in %q; .ci/run installs it with apt): %v", tool, bin, err)
			return nil
		}
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		fail("no postgres user: %v", err)
		return nil
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	return &postgres{t: t, bin: bin, cred: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}}
}

// run runs a PostgreSQL tool as postgres and returns its output.
func (pg *postgres) run(tool string, args ...string) string {
	pg.t.Helper()
	cmd := exec.Command(filepath.Join(pg.bin, tool), args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: pg.cred}
	cmd.Env = []string{"PATH=" + pg.bin + ":/usr/bin:/bin", "LC_ALL=C", "HOME=/tmp"}
	cmd.Dir = "/"
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		pg.t.Fatalf("%s %s: %v\n%s", tool, strings.Join(args, " "), err, out.String())
	}
	return out.String()
}

// tempDirs returns a test directory postgres can reach, and a function
// that makes a directory in it owned by postgres.
func (pg *postgres) tempDirs(t *testing.T) (string, func(name string) string) {
	top := t.TempDir()
	os.Chmod(top, 0o755) // postgres must reach its directories
	os.Chmod(filepath.Dir(top), 0o755)
	return top, func(name string) string {
		d := filepath.Join(top, name)
		os.Mkdir(d, 0o700)
		os.Chown(d, int(pg.cred.Uid), int(pg.cred.Gid))
		return d
	}
}

// cluster is a data directory, its socket directory and port.
type cluster struct {
	data, sock string
	port       int
}

func (pg *postgres) start(c cluster) {
	pg.t.Helper()
	pg.run("pg_ctl", "-D", c.data, "-w", "-t", "60", "-l", filepath.Join(c.sock, "log"),
		"-o", fmt.Sprintf("-p %d -k %s -c listen_addresses=''", c.port, c.sock), "start")
}

func (pg *postgres) stop(c cluster) {
	pg.t.Helper()
	pg.run("pg_ctl", "-D", c.data, "-w", "-t", "60", "-m", "fast", "stop")
}

func (pg *postgres) query(c cluster, sql string) string {
	pg.t.Helper()
	return strings.TrimSpace(pg.run("psql", "-h", c.sock, "-p", strconv.Itoa(c.port), "-d", "postgres", "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql))
}

// freePort returns a TCP port number nobody listens on, for the socket's
// name (the clusters listen on no TCP address).
func freePort(t *testing.T) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// checks are the queries whose answers a restored cluster must give.
var checks = []string{
	"SELECT sum(abalance), count(*) FROM pgbench_accounts",
	"SELECT md5(string_agg(aid::text || ':' || abalance::text, ',' ORDER BY aid)) FROM pgbench_accounts",
	"SELECT md5(string_agg(tid::text || ':' || tbalance::text, ',' ORDER BY tid)) FROM pgbench_tellers",
	"SELECT count(*), sum(delta) FROM pgbench_history",
}

// TestPostgresClusterRestoredAsANewNodeStarts is the acceptance test of
// format 2: a PostgreSQL cluster (initdb as postgres, pgbench -i -s 10 and
// a few thousand transactions), stopped cleanly, backed up as root and
// restored into another directory, as a new node would be, starts as
// postgres and answers every query as before: once from the repository,
// once from the repository and a peer serving the original directory.
func TestPostgresClusterRestoredAsANewNodeStarts(t *testing.T) {
	pg := findPostgres(t)
	c := newCLI(t)
	c.process = true // hundreds of MB: the race detector would only slow it down
	top, mkdir := pg.tempDirs(t)
	orig := cluster{data: mkdir("data"), sock: mkdir("sock"), port: freePort(t)}
	pg.run("initdb", "-D", orig.data, "-U", "postgres", "--auth=trust", "--no-sync")
	pg.start(orig)
	started := true
	defer func() {
		if started {
			pg.stop(orig)
		}
	}()
	pg.run("pgbench", "-i", "-s", "10", "-q", "-h", orig.sock, "-p", strconv.Itoa(orig.port), "postgres")
	pg.run("pgbench", "-t", "2000", "-c", "2", "-h", orig.sock, "-p", strconv.Itoa(orig.port), "postgres")
	var want []string
	for _, q := range checks {
		want = append(want, pg.query(orig, q))
	}
	if want[3] == "0|" {
		t.Fatalf("pgbench wrote no history: %v", want)
	}
	pg.stop(orig)
	started = false

	repo := filepath.Join(top, "repo")
	c.ok("init", "--repo", repo)
	b := summary(t, c.ok("backup", "--json", "--repo", repo, orig.data))
	t.Logf("backup of the cluster: %v files, %.0f MB, %v trees", b["files"], b["total_bytes"].(float64)/1e6, b["trees_stored"])

	for _, withPeer := range []bool{false, true} {
		name := "from-repository"
		args := []string{"restore", "--json", "--repo", repo}
		if withPeer {
			name = "from-repository-and-peer"
			args = append(args, "--from", c.serve("--source", orig.data))
		}
		t.Run(name, func(t *testing.T) {
			node := cluster{data: filepath.Join(top, "node-"+name), sock: mkdir("sock-" + name), port: freePort(t)}
			s := summary(t, c.ok(append(args, "latest", node.data)...))
			if withPeer {
				sources := sourcesOf(t, s)
				if len(sources) != 2 || sources[1].FetchedBytes == 0 {
					t.Fatalf("the peer delivered nothing: %+v", sources)
				}
			}
			pg.start(node)
			defer pg.stop(node)
			for i, q := range checks {
				if got := pg.query(node, q); got != want[i] {
					t.Errorf("%s on the restored node: %q, want %q", q, got, want[i])
				}
			}
			// The restored node takes writes too.
			pg.run("pgbench", "-t", "100", "-h", node.sock, "-p", strconv.Itoa(node.port), "postgres")
		})
	}
}

// TestPostgresDumpFromACommandWithHooks backs up pg_dump's output as a
// stream, bracketed by a pre-hook (a CHECKPOINT) and a post-hook that
// records the outcome; the dump comes back with 'dump' and loads into a
// new database that answers the queries as the original did. A pg_dump
// that fails writes no record.
func TestPostgresDumpFromACommandWithHooks(t *testing.T) {
	pg := findPostgres(t)
	c := newCLI(t)
	top, mkdir := pg.tempDirs(t)
	cl := cluster{data: mkdir("data"), sock: mkdir("sock"), port: freePort(t)}
	pg.run("initdb", "-D", cl.data, "-U", "postgres", "--auth=trust", "--no-sync")
	pg.start(cl)
	defer pg.stop(cl)
	port := strconv.Itoa(cl.port)
	pg.run("pgbench", "-i", "-s", "1", "-q", "-h", cl.sock, "-p", port, "postgres")
	pg.run("pgbench", "-t", "200", "-c", "2", "-h", cl.sock, "-p", port, "postgres")
	var want []string
	for _, q := range checks {
		want = append(want, pg.query(cl, q))
	}

	repo, post := filepath.Join(top, "repo"), filepath.Join(top, "post")
	c.ok("init", "--repo", repo)
	psql := filepath.Join(pg.bin, "psql")
	dump := []string{filepath.Join(pg.bin, "pg_dump"), "-h", cl.sock, "-p", port, "-U", "postgres", "-d"}
	s := summary(t, c.ok(append([]string{"backup", "--json", "--repo", repo, "--stdin-from-command", "--stdin-filename", "postgres.sql",
		"--pre-hook", fmt.Sprintf("%s -h %s -p %s -U postgres -d postgres -X -q -c CHECKPOINT", psql, cl.sock, port),
		"--post-hook", `echo "$DELTABACKUP_OUTCOME $DELTABACKUP_BACKUP" > ` + post, "--"}, append(dump, "postgres")...)...))
	if got, _ := os.ReadFile(post); string(got) != "success "+s["name"].(string)+"\n" {
		t.Fatalf("post-hook saw %q", got)
	}

	sql := c.ok("dump", "--repo", repo, "latest", "--source", "stdin:postgres.sql", "postgres.sql").stdout
	file := filepath.Join(top, "restore.sql")
	os.WriteFile(file, []byte(sql), 0o644)
	pg.run("createdb", "-h", cl.sock, "-p", port, "-U", "postgres", "restored")
	pg.run("psql", "-h", cl.sock, "-p", port, "-U", "postgres", "-d", "restored", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-f", file)
	for i, q := range checks {
		got := strings.TrimSpace(pg.run("psql", "-h", cl.sock, "-p", port, "-d", "restored", "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", q))
		if got != want[i] {
			t.Errorf("%s on the database loaded from the backed-up dump: %q, want %q", q, got, want[i])
		}
	}

	before := len(records(t, c, repo))
	o := c.run(append([]string{"backup", "--repo", repo, "--stdin-from-command", "--post-hook", `echo "$DELTABACKUP_OUTCOME" > ` + post, "--"}, append(dump, "no_such_database")...)...)
	if o.code != 1 || !strings.Contains(o.stderr, "nothing was backed up") {
		t.Fatalf("pg_dump of a missing database: exit %d\n%s", o.code, o.stderr)
	}
	if n := len(records(t, c, repo)); n != before {
		t.Fatalf("a failed pg_dump changed the records from %d to %d", before, n)
	}
	if got, _ := os.ReadFile(post); string(got) != "failure\n" {
		t.Fatalf("post-hook after a failed pg_dump saw %q", got)
	}
}
