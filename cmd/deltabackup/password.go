package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"sync"

	"github.com/spf13/pflag"
	"golang.org/x/term"

	"github.com/deltabackup/deltabackup/hashstore"
	"github.com/deltabackup/deltabackup/hashstore/crypt"
)

// passwordSource is where one repository's password comes from; the
// first of these that is set wins: --password-file, --password-command,
// DELTABACKUP_PASSWORD_FILE, DELTABACKUP_PASSWORD_COMMAND,
// DELTABACKUP_PASSWORD, then a prompt on the terminal. The password is
// read at most once per run and never logged, printed or put in an error.
type passwordSource struct {
	// flagPrefix and envPrefix name the flags and variables: "" and
	// "DELTABACKUP_" for --repo, "from-" and "DELTABACKUP_FROM_" for
	// copy's --from.
	flagPrefix, envPrefix string
	file, command         string

	once     sync.Once
	password []byte
	err      error
}

func (p *passwordSource) addFlags(fl *pflag.FlagSet, what string) {
	fl.StringVar(&p.file, p.flagPrefix+"password-file", "", "read the password of "+what+" from this file (env "+p.envPrefix+"PASSWORD_FILE)")
	fl.StringVar(&p.command, p.flagPrefix+"password-command", "", "run this shell command and take its output as the password of "+what+" (env "+p.envPrefix+"PASSWORD_COMMAND)")
}

// sourceKind is how a password source's value gives the password.
type sourceKind int

const (
	fromFile sourceKind = iota
	fromCommand
	literal
)

// setting is one place a password can come from: its name for messages,
// its kind and value ("" when not set).
type setting struct {
	name  string
	kind  sourceKind
	value string
}

// settings lists the sources in the order they win.
func (p *passwordSource) settings() []setting {
	env := func(name string) string { return os.Getenv(p.envPrefix + name) }
	return []setting{
		{"--" + p.flagPrefix + "password-file", fromFile, p.file},
		{"--" + p.flagPrefix + "password-command", fromCommand, p.command},
		{p.envPrefix + "PASSWORD_FILE", fromFile, env("PASSWORD_FILE")},
		{p.envPrefix + "PASSWORD_COMMAND", fromCommand, env("PASSWORD_COMMAND")},
		{p.envPrefix + "PASSWORD", literal, env("PASSWORD")},
	}
}

// given reports whether any source but the prompt is set.
func (p *passwordSource) given() bool {
	for _, st := range p.settings() {
		if st.value != "" {
			return true
		}
	}
	return false
}

// errPasswordSource marks a password source that failed (unreadable
// file, failing command): the exit code of a missing password.
type errPasswordSource struct{ err error }

func (e errPasswordSource) Error() string { return e.err.Error() }
func (e errPasswordSource) Unwrap() error { return e.err }

// get returns the password, reading it on the first call. confirm asks
// twice on a terminal (a new password).
func (p *passwordSource) get(g *globals, prompt string, confirm bool) ([]byte, error) {
	p.once.Do(func() { p.password, p.err = p.read(g, prompt, confirm) })
	return p.password, p.err
}

func (p *passwordSource) read(g *globals, prompt string, confirm bool) ([]byte, error) {
	for _, st := range p.settings() {
		switch {
		case st.value == "":
			continue
		case st.kind == fromFile:
			data, err := os.ReadFile(st.value)
			if err != nil {
				return nil, errPasswordSource{fmt.Errorf("%s: %w", st.name, err)}
			}
			return trimNewline(data), nil
		case st.kind == fromCommand:
			cmd := exec.Command("/bin/sh", "-c", st.value)
			cmd.Stderr = g.stderr
			out, err := cmd.Output()
			if err != nil {
				// Neither the command's output nor the command itself (it
				// may hold a secret) goes into the message.
				return nil, errPasswordSource{fmt.Errorf("%s failed: %v", st.name, err)}
			}
			return trimNewline(out), nil
		}
		return []byte(st.value), nil
	}
	return promptPassword(g, prompt, confirm)
}

// promptPassword asks on the terminal, if stdin is one.
func promptPassword(g *globals, prompt string, confirm bool) ([]byte, error) {
	fd := int(os.Stdin.Fd())
	if !term.IsTerminal(fd) {
		return nil, hashstore.ErrNoPassword
	}
	fmt.Fprintf(g.stderr, "%s: ", prompt)
	pw, err := term.ReadPassword(fd)
	fmt.Fprintln(g.stderr)
	if err != nil {
		return nil, errPasswordSource{fmt.Errorf("read password: %w", err)}
	}
	if confirm {
		fmt.Fprint(g.stderr, "enter it again: ")
		again, err := term.ReadPassword(fd)
		fmt.Fprintln(g.stderr)
		if err != nil {
			return nil, errPasswordSource{fmt.Errorf("read password: %w", err)}
		}
		if !bytes.Equal(pw, again) {
			return nil, errPasswordSource{errors.New("the two passwords differ")}
		}
	}
	return pw, nil
}

// trimNewline drops one trailing newline (files and echo end with one).
func trimNewline(b []byte) []byte {
	b = bytes.TrimSuffix(b, []byte("\n"))
	return bytes.TrimSuffix(b, []byte("\r"))
}

// passwordFunc is hashstore.Options.Password for the repository at loc.
func (g *globals) passwordFunc(p *passwordSource, loc string, confirm bool) func(context.Context) ([]byte, error) {
	return func(context.Context) ([]byte, error) {
		return p.get(g, "password of repository "+loc, confirm)
	}
}

// kdfOptions are the argon2id costs of new key files (init, key add,
// key passwd); unset, they are calibrated to about 0.5 s with 64 MiB.
type kdfOptions struct {
	memory sizeValue
	passes uint32
}

func (k *kdfOptions) addFlags(fl *pflag.FlagSet) {
	if v, err := parseSize(os.Getenv("DELTABACKUP_KDF_MEMORY")); err == nil {
		k.memory = sizeValue(v)
	}
	if v, err := strconv.ParseUint(os.Getenv("DELTABACKUP_KDF_PASSES"), 10, 32); err == nil {
		k.passes = uint32(v)
	}
	fl.Var(&k.memory, "kdf-memory", "argon2id memory of the new key file, 8MiB to 1GiB (env DELTABACKUP_KDF_MEMORY; default 64MiB, passes calibrated to about 0.5 s); less makes guessing the password cheaper")
	fl.Uint32Var(&k.passes, "kdf-passes", k.passes, "argon2id passes of the new key file, 1 to 64 (env DELTABACKUP_KDF_PASSES; default: calibrated)")
}

// kdf returns the parameters, zero for calibrated ones.
func (k *kdfOptions) kdf() (crypt.KDF, error) {
	if k.memory == 0 && k.passes == 0 {
		return crypt.KDF{}, nil
	}
	memory := int64(k.memory)
	if memory == 0 {
		memory = 64 << 20
	}
	passes := k.passes
	if passes == 0 {
		passes = 1
	}
	p := crypt.KDF{Algorithm: "argon2id", Time: passes, MemoryKiB: uint32(min(memory>>10, 1<<31)), Threads: 4}.WithNewSalt()
	if err := p.Check(); err != nil {
		return crypt.KDF{}, usagef("--kdf-memory/--kdf-passes: %v", err)
	}
	return p, nil
}
