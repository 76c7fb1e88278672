package main

import (
	"context"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/deltabackup/deltabackup/progress"
	"github.com/deltabackup/deltabackup/snapshot"
)

// showProgress returns one Progress per named phase and shows them: a bar
// on a terminal (following the first unfinished phase), JSON status lines
// with --json, nothing otherwise. Call the returned function when done.
func (g *globals) showProgress(ctx context.Context, names ...string) ([]*progress.Progress, func()) {
	ps := make([]*progress.Progress, len(names))
	phases := make([]progress.Phase, len(names))
	for i, name := range names {
		ps[i] = progress.New()
		phases[i] = progress.Phase{Name: name, Progress: ps[i]}
		if g.json {
			ps[i].SetReporter(progress.JSONReporter(g.stdout, name))
		}
	}
	if g.json || g.quiet || !g.stderrIsTerminal() {
		return ps, func() {}
	}
	return ps, progress.NewBar(ctx, g.stderr, phases...).Stop
}

// problemPaths lists the paths of problems, never nil so JSON shows [].
func problemPaths(ps []snapshot.Problem) []string {
	out := make([]string, 0, len(ps))
	for _, p := range ps {
		out = append(out, p.Path)
	}
	return out
}

// quoteName returns a file name as it can be printed on a terminal: as it
// is, or, when it holds control characters (a newline would fake a line,
// an escape sequence would drive the terminal) or is not valid UTF-8,
// quoted with Go escapes, as ls -b does.
func quoteName(name string) string {
	if !utf8.ValidString(name) || strings.IndexFunc(name, unicode.IsControl) >= 0 {
		return strconv.Quote(name)
	}
	return name
}

// quoteProblem is a snapshot problem whose path is printable.
func quoteProblem(p snapshot.Problem) string {
	return quoteName(p.Path) + ": " + p.Err.Error()
}
