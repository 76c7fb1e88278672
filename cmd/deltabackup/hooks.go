package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"syscall"
	"time"
)

// runHook runs command with sh -c, its output going to ours, with env
// added to the environment, and stops it (and what it started) after
// timeout. The error says how it ended.
func runHook(ctx context.Context, g *globals, which, command string, timeout time.Duration, env []string) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "/bin/sh", "-c", command)
	cmd.Stdout, cmd.Stderr = g.stderr, g.stderr
	cmd.Env = append(os.Environ(), env...)
	// Its own process group, so a timeout stops the children too.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	g.logger.Info("running hook", "hook", which)
	err := cmd.Run()
	var exit *exec.ExitError
	switch {
	case err == nil:
		return nil
	case errors.Is(ctx.Err(), context.DeadlineExceeded):
		return fmt.Errorf("%s %q did not finish within %v (stopped)", which, command, timeout)
	case errors.As(err, &exit):
		return fmt.Errorf("%s %q failed: %v", which, command, exit)
	}
	return fmt.Errorf("%s %q: %w", which, command, err)
}
