package sftpstore

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"time"

	"github.com/pkg/sftp"
	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/agent"
	"golang.org/x/crypto/ssh/knownhosts"

	"github.com/deltabackup/deltabackup/hashstore"
)

// Errors a caller can act on; each is also hashstore.Permanent, as
// retrying cannot mend it.
var (
	// ErrUnknownHostKey: the server's key is in no known_hosts file.
	ErrUnknownHostKey = errors.New("host key is not known")
	// ErrHostKeyChanged: known_hosts holds another key for the server.
	ErrHostKeyChanged = errors.New("host key does not match known_hosts")
	// ErrAuth: the server accepted none of the keys offered.
	ErrAuth = errors.New("SSH authentication failed")
	// ErrNoSFTP: the server does not offer the sftp subsystem.
	ErrNoSFTP = errors.New("server does not offer SFTP")
	// ErrDirMissing: the repository's directory does not exist.
	ErrDirMissing = errors.New("directory does not exist")
	// ErrPermission: the server refused an operation on a path.
	ErrPermission = errors.New("permission denied")
)

// keepaliveInterval is how often an idle connection is checked; a server
// that does not answer two intervals is taken as gone.
const keepaliveInterval = 15 * time.Second

// session is one SSH connection and the SFTP client on it.
type session struct {
	ssh  *ssh.Client
	sftp *sftp.Client
	// home is the login directory, for paths relative to it.
	home string
	// posixRename and hardlink are the server's extensions.
	posixRename, hardlink bool
	done                  chan struct{}
}

func (s *session) close() {
	s.sftp.Close()
	s.ssh.Close()
}

// dial opens a session: TCP, the host key checked against known_hosts,
// public-key authentication, the sftp subsystem.
func dial(ctx context.Context, cfg Config) (*session, error) {
	auth, closeAgent, err := authMethods(cfg)
	if err != nil {
		return nil, hashstore.Permanent(err)
	}
	defer closeAgent()
	hostKeys, err := hostKeyCallback(cfg)
	if err != nil {
		return nil, hashstore.Permanent(err)
	}
	sshCfg := &ssh.ClientConfig{
		User:            cfg.User,
		Auth:            auth,
		HostKeyCallback: hostKeys,
		Timeout:         cfg.ConnectTimeout,
	}
	dctx, cancel := context.WithTimeout(ctx, cfg.ConnectTimeout)
	defer cancel()
	var d net.Dialer
	conn, err := d.DialContext(dctx, "tcp", cfg.address())
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %w", cfg.address(), err)
	}
	// The handshake has no context: a deadline bounds it instead.
	_ = conn.SetDeadline(time.Now().Add(cfg.ConnectTimeout))
	c, chans, reqs, err := ssh.NewClientConn(conn, cfg.address(), sshCfg)
	if err != nil {
		conn.Close()
		var hk *hostKeyError
		switch {
		case errors.As(err, &hk):
			return nil, hashstore.Permanent(hk.err)
		case strings.Contains(err.Error(), "unable to authenticate"):
			return nil, hashstore.Permanent(fmt.Errorf("%s as %q: %w (offered: %s)", cfg.address(), cfg.User, ErrAuth, describeAuth(cfg)))
		}
		return nil, fmt.Errorf("SSH handshake with %s: %w", cfg.address(), err)
	}
	_ = conn.SetDeadline(time.Time{})
	client := ssh.NewClient(c, chans, reqs)
	sc, err := sftp.NewClient(client, sftp.UseConcurrentWrites(true), sftp.UseConcurrentReads(true), sftp.MaxConcurrentRequestsPerFile(64))
	if err != nil {
		client.Close()
		if strings.Contains(err.Error(), "subsystem request failed") {
			return nil, hashstore.Permanent(fmt.Errorf("%s: %w: %v", cfg.address(), ErrNoSFTP, err))
		}
		return nil, fmt.Errorf("start SFTP with %s: %w", cfg.address(), err)
	}
	s := &session{ssh: client, sftp: sc, done: make(chan struct{})}
	_, s.posixRename = sc.HasExtension("posix-rename@openssh.com")
	_, s.hardlink = sc.HasExtension("hardlink@openssh.com")
	if s.home, err = sc.Getwd(); err != nil {
		s.close()
		return nil, fmt.Errorf("%s: login directory: %w", cfg.address(), err)
	}
	go func() {
		_ = client.Wait()
		close(s.done)
	}()
	go s.keepalive()
	return s, nil
}

// keepalive closes the connection when the server stops answering, so
// that requests waiting on it fail and the next operation dials again.
func (s *session) keepalive() {
	t := time.NewTicker(keepaliveInterval)
	defer t.Stop()
	for {
		select {
		case <-s.done:
			return
		case <-t.C:
		}
		answered := make(chan struct{})
		go func() {
			_, _, _ = s.ssh.SendRequest("keepalive@openssh.com", true, nil)
			close(answered)
		}()
		select {
		case <-answered:
		case <-s.done:
			return
		case <-time.After(2 * keepaliveInterval):
			s.ssh.Close()
			return
		}
	}
}

// alive reports whether the connection is still up.
func (s *session) alive() bool {
	select {
	case <-s.done:
		return false
	default:
		return true
	}
}

// authMethods offers ssh-agent's keys, then the identity files'. A
// passphrase-protected file named explicitly is an error (load it into
// the agent); one found by default is skipped.
func authMethods(cfg Config) ([]ssh.AuthMethod, func(), error) {
	var signers []ssh.Signer
	closeAgent := func() {}
	if sock := os.Getenv("SSH_AUTH_SOCK"); sock != "" && !cfg.NoAgent {
		if conn, err := net.Dial("unix", sock); err == nil {
			closeAgent = func() { conn.Close() }
			if keys, err := agent.NewClient(conn).Signers(); err == nil {
				signers = append(signers, keys...)
			}
		}
	}
	for _, file := range cfg.IdentityFiles {
		pem, err := os.ReadFile(file)
		if err != nil {
			closeAgent()
			return nil, nil, fmt.Errorf("identity file: %w", err)
		}
		signer, err := ssh.ParsePrivateKey(pem)
		var missing *ssh.PassphraseMissingError
		switch {
		case errors.As(err, &missing):
			closeAgent()
			return nil, nil, fmt.Errorf("identity file %s is protected by a passphrase: load it into ssh-agent instead", file)
		case err != nil:
			closeAgent()
			return nil, nil, fmt.Errorf("identity file %s: %w", file, err)
		}
		signers = append(signers, signer)
	}
	if len(signers) == 0 {
		closeAgent()
		return nil, nil, fmt.Errorf("%w: no SSH key to offer (no ssh-agent with keys, no identity file)", ErrAuth)
	}
	return []ssh.AuthMethod{ssh.PublicKeys(signers...)}, closeAgent, nil
}

func describeAuth(cfg Config) string {
	var parts []string
	if os.Getenv("SSH_AUTH_SOCK") != "" && !cfg.NoAgent {
		parts = append(parts, "ssh-agent's keys")
	}
	parts = append(parts, cfg.IdentityFiles...)
	return strings.Join(parts, ", ")
}

// hostKeyError carries a refusal of the server's key through the SSH
// handshake, which wraps the callback's error in its own text.
type hostKeyError struct{ err error }

func (e *hostKeyError) Error() string { return e.err.Error() }

// hostKeyCallback accepts exactly the keys of the known_hosts files.
func hostKeyCallback(cfg Config) (ssh.HostKeyCallback, error) {
	var files []string
	for _, f := range cfg.KnownHostsFiles {
		if _, err := os.Stat(f); err == nil {
			files = append(files, f)
		}
	}
	var known ssh.HostKeyCallback
	if len(files) > 0 {
		cb, err := knownhosts.New(files...)
		if err != nil {
			return nil, fmt.Errorf("known hosts: %w", err)
		}
		known = cb
	}
	where := strings.Join(cfg.KnownHostsFiles, ", ")
	return func(hostname string, remote net.Addr, key ssh.PublicKey) error {
		fp := ssh.FingerprintSHA256(key)
		if known == nil {
			return &hostKeyError{fmt.Errorf("%w: %s presents %s key %s, and there is no known_hosts file (%s)", ErrUnknownHostKey, hostname, key.Type(), fp, where)}
		}
		err := known(hostname, remote, key)
		var ke *knownhosts.KeyError
		switch {
		case err == nil:
			return nil
		case errors.As(err, &ke) && len(ke.Want) == 0:
			return &hostKeyError{fmt.Errorf("%w: %s presents %s key %s, which is not in %s", ErrUnknownHostKey, hostname, key.Type(), fp, where)}
		case errors.As(err, &ke):
			return &hostKeyError{fmt.Errorf("%w: %s presents %s key %s, but %s:%d holds another key for it (a changed server, or someone in between)",
				ErrHostKeyChanged, hostname, key.Type(), fp, ke.Want[0].Filename, ke.Want[0].Line)}
		}
		return &hostKeyError{fmt.Errorf("host key of %s: %w", hostname, err)}
	}, nil
}
