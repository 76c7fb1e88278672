// Package sftptest starts a real OpenSSH server for tests: sshd on a free
// loopback port, with a host key, a client key and a known_hosts file made
// for the test, serving the sftp subsystem. Outside CI, without sshd (the
// Debian package openssh-server), the test is skipped and says so; in CI
// (CI set) a missing sshd fails it.
package sftptest

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"

	"github.com/deltabackup/deltabackup/hashstore/sftpstore"
)

// Server is a running sshd.
type Server struct {
	Host string
	Port int
	User string
	// Identity is the client's private key file, KnownHosts a known_hosts
	// file holding the server's key.
	Identity, KnownHosts string
	// Root is the directory under which each test gets its repositories.
	Root    string
	dir     string
	cmd     *exec.Cmd
	hostKey ssh.PublicKey
}

// sshdPath finds sshd: DELTABACKUP_SSHD, else /usr/sbin/sshd.
func sshdPath(t testing.TB) string {
	p := os.Getenv("DELTABACKUP_SSHD")
	if p == "" {
		p = "/usr/sbin/sshd"
	}
	if _, err := os.Stat(p); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("CI is set but there is no sshd at %s: .ci/run installs openssh-server", p)
		}
		t.Skipf("no sshd at %s: install openssh-server (or run .ci/run), or set DELTABACKUP_SSHD", p)
	}
	return p
}

// Start starts sshd for the test; it stops when the test ends.
func Start(t testing.TB) *Server {
	t.Helper()
	sshd := sshdPath(t)
	dir, err := os.MkdirTemp("", "sftptest-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	u, err := user.Current()
	if err != nil {
		t.Fatal(err)
	}
	s := &Server{Host: "127.0.0.1", User: u.Username, dir: dir, Root: filepath.Join(dir, "data"),
		Identity: filepath.Join(dir, "id_ed25519"), KnownHosts: filepath.Join(dir, "known_hosts")}
	if err := os.Mkdir(s.Root, 0o700); err != nil {
		t.Fatal(err)
	}
	hostPub := writeKey(t, filepath.Join(dir, "host_ed25519"))
	s.hostKey = hostPub
	clientPub := writeKey(t, s.Identity)
	if err := os.WriteFile(filepath.Join(dir, "authorized_keys"), ssh.MarshalAuthorizedKey(clientPub), 0o600); err != nil {
		t.Fatal(err)
	}
	if os.Geteuid() == 0 {
		// sshd running as root insists on its privilege separation directory.
		if err := os.MkdirAll("/run/sshd", 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for attempt := 0; ; attempt++ {
		s.Port = freePort(t)
		addr := net.JoinHostPort(s.Host, strconv.Itoa(s.Port))
		line := knownhosts.Line([]string{knownhosts.Normalize(addr)}, hostPub)
		if err := os.WriteFile(s.KnownHosts, []byte(line+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		config := filepath.Join(dir, "sshd_config")
		if err := os.WriteFile(config, []byte(s.config()), 0o600); err != nil {
			t.Fatal(err)
		}
		log, err := os.Create(filepath.Join(dir, "sshd.log"))
		if err != nil {
			t.Fatal(err)
		}
		s.cmd = exec.Command(sshd, "-D", "-e", "-f", config)
		s.cmd.Stdout, s.cmd.Stderr = log, log
		s.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		if err := s.cmd.Start(); err != nil {
			t.Fatal(err)
		}
		log.Close()
		exited := make(chan struct{})
		go func() { s.cmd.Wait(); close(exited) }()
		if waitListening(addr, exited, 10*time.Second) {
			t.Cleanup(func() {
				// The connections' processes are in sshd's process group.
				syscall.Kill(-s.cmd.Process.Pid, syscall.SIGKILL)
				<-exited
			})
			return s
		}
		syscall.Kill(-s.cmd.Process.Pid, syscall.SIGKILL)
		<-exited
		if attempt == 2 {
			out, _ := os.ReadFile(filepath.Join(dir, "sshd.log"))
			t.Fatalf("sshd did not start:\n%s", out)
		}
	}
}

func (s *Server) config() string {
	return strings.Join([]string{
		"Port " + strconv.Itoa(s.Port),
		"ListenAddress " + s.Host,
		"HostKey " + filepath.Join(s.dir, "host_ed25519"),
		"AuthorizedKeysFile " + filepath.Join(s.dir, "authorized_keys"),
		"PidFile " + filepath.Join(s.dir, "sshd.pid"),
		"StrictModes no",
		"UsePAM no",
		"PasswordAuthentication no",
		"KbdInteractiveAuthentication no",
		"PermitRootLogin prohibit-password",
		"MaxStartups 200",
		"MaxSessions 200",
		"LogLevel ERROR",
		"Subsystem sftp internal-sftp",
	}, "\n") + "\n"
}

// writeKey writes a new ed25519 private key to file and returns its
// public key.
func writeKey(t testing.TB, file string) ssh.PublicKey {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	block, err := ssh.MarshalPrivateKey(priv, "")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(file, pem.EncodeToMemory(block), 0o600); err != nil {
		t.Fatal(err)
	}
	sshPub, err := ssh.NewPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return sshPub
}

func freePort(t testing.TB) int {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

func waitListening(addr string, exited <-chan struct{}, limit time.Duration) bool {
	deadline := time.Now().Add(limit)
	for time.Now().Before(deadline) {
		select {
		case <-exited:
			return false
		default:
		}
		if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
			c.Close()
			return true
		}
		time.Sleep(20 * time.Millisecond)
	}
	return false
}

var seq atomic.Int64

// Config returns the configuration of a new, empty repository directory
// on the server (created when opened). addr overrides the server's
// address (a proxy in front of it), if not empty.
func (s *Server) Config(t testing.TB, addr string) sftpstore.Config {
	host, port := s.Host, s.Port
	if addr != "" {
		s.trust(t, addr)
		h, p, err := net.SplitHostPort(addr)
		if err != nil {
			t.Fatal(err)
		}
		host = h
		port, _ = strconv.Atoi(p)
	}
	return sftpstore.Config{User: s.User, Host: host, Port: port, Path: s.newDir(t),
		IdentityFiles: []string{s.Identity}, KnownHostsFiles: []string{s.KnownHosts}, NoAgent: true, CreateDir: true}
}

func (s *Server) newDir(t testing.TB) string {
	var b strings.Builder
	for _, r := range t.Name() {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' {
			b.WriteRune(r)
		} else {
			b.WriteByte('-')
		}
	}
	return filepath.Join(s.Root, fmt.Sprintf("%s-%d", b.String(), seq.Add(1)))
}

// URL returns sftp://user@host:port/DIR for a new repository directory,
// and the CLI flags that name the test's key and known_hosts file.
func (s *Server) URL(t testing.TB, addr string) (string, []string) {
	if addr == "" {
		addr = net.JoinHostPort(s.Host, strconv.Itoa(s.Port))
	} else {
		s.trust(t, addr)
	}
	return fmt.Sprintf("sftp://%s@%s%s", s.User, addr, s.newDir(t)), []string{"--sftp-identity", s.Identity, "--sftp-known-hosts", s.KnownHosts}
}

// trust adds the server's key for addr (a proxy in front of it) to the
// known_hosts file.
func (s *Server) trust(t testing.TB, addr string) {
	f, err := os.OpenFile(s.KnownHosts, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := fmt.Fprintln(f, knownhosts.Line([]string{knownhosts.Normalize(addr)}, s.hostKey)); err != nil {
		t.Fatal(err)
	}
}
