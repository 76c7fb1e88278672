package sftpstore

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// Config says where the repository is and how to log in.
type Config struct {
	// User is the login name (default: the local user).
	User string
	// Host and Port are the server (Port 0: 22).
	Host string
	Port int
	// Path is the repository's directory on the server: absolute, or
	// relative to the login directory when it starts with "~/".
	Path string
	// IdentityFiles are private keys to offer, after ssh-agent's (default:
	// those of ~/.ssh/id_ed25519, id_ecdsa and id_rsa that exist).
	IdentityFiles []string
	// KnownHostsFiles hold the accepted host keys (default
	// ~/.ssh/known_hosts).
	KnownHostsFiles []string
	// NoAgent leaves ssh-agent out even when SSH_AUTH_SOCK is set.
	NoAgent bool
	// ConnectTimeout bounds dialling and the SSH handshake (default 15s).
	ConnectTimeout time.Duration
	// Requests bounds the operations in flight at once (default 16).
	Requests int
	// CreateDir creates Path when it is missing (for init).
	CreateDir bool
}

// ParseURL reads sftp://[user@]host[:port]/path. The path is absolute on
// the server; sftp://host/~/backups is backups in the login directory.
func ParseURL(s string) (Config, error) {
	u, err := url.Parse(s)
	if err != nil {
		return Config{}, fmt.Errorf("not a valid URL: %w", unwrapURLError(err))
	}
	if u.Scheme != "sftp" {
		return Config{}, fmt.Errorf("%s: not an sftp:// URL", u.Redacted())
	}
	if _, hasPassword := u.User.Password(); hasPassword {
		return Config{}, errors.New("sftp:// URLs must not hold a password: use ssh-agent or --sftp-identity")
	}
	if len(u.RawQuery) > 0 || u.Fragment != "" {
		return Config{}, fmt.Errorf("%s: sftp:// URLs take no query or fragment", u.Redacted())
	}
	cfg := Config{User: u.User.Username(), Host: u.Hostname()}
	if cfg.Host == "" {
		return Config{}, fmt.Errorf("%s: no host", u.Redacted())
	}
	if p := u.Port(); p != "" {
		n, err := strconv.Atoi(p)
		if err != nil || n < 1 || n > 65535 {
			return Config{}, fmt.Errorf("%s: port %q is not a port number", u.Redacted(), p)
		}
		cfg.Port = n
	}
	cfg.Path = u.Path
	if strings.HasPrefix(cfg.Path, "/~/") {
		cfg.Path = cfg.Path[1:]
	}
	if cfg.Path == "" || cfg.Path == "/" || cfg.Path == "~/" {
		return Config{}, fmt.Errorf("%s: give the repository's directory, as in sftp://host/srv/backups", u.Redacted())
	}
	return cfg, nil
}

func unwrapURLError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

// withDefaults fills in the user, port, keys, known hosts and limits.
func (c Config) withDefaults() Config {
	if c.User == "" {
		if u, err := user.Current(); err == nil {
			c.User = u.Username
		}
	}
	if c.Port == 0 {
		c.Port = 22
	}
	home, _ := os.UserHomeDir()
	if c.IdentityFiles == nil && home != "" {
		for _, name := range []string{"id_ed25519", "id_ecdsa", "id_rsa"} {
			p := filepath.Join(home, ".ssh", name)
			if _, err := os.Stat(p); err == nil {
				c.IdentityFiles = append(c.IdentityFiles, p)
			}
		}
	}
	if c.KnownHostsFiles == nil && home != "" {
		c.KnownHostsFiles = []string{filepath.Join(home, ".ssh", "known_hosts")}
	}
	if c.ConnectTimeout <= 0 {
		c.ConnectTimeout = 15 * time.Second
	}
	if c.Requests <= 0 {
		c.Requests = 16
	}
	return c
}

// address is host:port for dialling and for known_hosts.
func (c Config) address() string { return net.JoinHostPort(c.Host, strconv.Itoa(c.Port)) }

// String names the repository without anything secret.
func (c Config) String() string {
	u := url.URL{Scheme: "sftp", Host: c.Host, Path: c.Path}
	if c.Port != 0 && c.Port != 22 {
		u.Host = c.address()
	}
	if c.User != "" {
		u.User = url.User(c.User)
	}
	if !strings.HasPrefix(c.Path, "/") {
		u.Path = "/" + c.Path
	}
	return u.String()
}
