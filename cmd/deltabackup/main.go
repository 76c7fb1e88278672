package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"golang.org/x/term"
	"golang.org/x/time/rate"

	"github.com/deltabackup/deltabackup/hashstore"
	"github.com/deltabackup/deltabackup/hashstore/azurestore"
	"github.com/deltabackup/deltabackup/hashstore/gcsstore"
	"github.com/deltabackup/deltabackup/hashstore/location"
	"github.com/deltabackup/deltabackup/hashstore/peer"
	"github.com/deltabackup/deltabackup/hashstore/s3store"
	"github.com/deltabackup/deltabackup/hashstore/sftpstore"
)

// Exit codes are an API: wrappers hard-code them. Never renumber.
const (
	exitOK           = 0
	exitFailure      = 1
	exitUsage        = 2
	exitIncomplete   = 3  // finished, but some files could not be read
	exitNoRepository = 10 // there is no repository at the location
	exitLocked       = 11 // another process holds the repository
	exitPassword     = 12 // wrong password, or none could be read
	exitInterrupted  = 130
)

// globals are the flags every command shares.
type globals struct {
	repo       string
	json       bool
	cpuProfile string
	memProfile string
	verbose    int
	quiet      bool
	cacheDir   string

	s3Flags        map[string]string
	createBucket   bool
	createDir      bool
	sftpIdentities []string
	sftpKnownHosts []string
	gcsProject     string
	limitUpload    sizeValue
	limitDownload  sizeValue
	// upLimiter and downLimiter are made once from the limits, so every
	// transfer of the process shares them.
	upLimiter, downLimiter *rate.Limiter
	retryTime              time.Duration

	// What a run builds as it goes, not flags.
	stdout io.Writer
	stderr io.Writer
	logger *slog.Logger
	// counted are the locations opened by the run, whose storage requests
	// are reported.
	counted []*location.Opened

	metricsFile string
	notifyURL   string
	notifier    *notifier
	openedStore *hashstore.Store
	// password is the password of --repo (and of the other repositories a
	// command opens unless it has flags of their own).
	password passwordSource
	// keyCache is how long an unwrapped master key stays in the user's
	// kernel keyring (0: not at all).
	keyCache time.Duration
}

// usageError marks errors in how the command was called (exit code 2).
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

func usagef(format string, args ...any) error { return usageError{fmt.Errorf(format, args...)} }

// incompleteError marks a run that finished but left files out (exit 3).
type incompleteError struct{ msg string }

func (e incompleteError) Error() string { return e.msg }

func exactArgs(n int, names string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) != n {
			return usagef("%s expects %s (got %d arguments); see '%s --help'", cmd.Name(), names, len(args), cmd.CommandPath())
		}
		return nil
	}
}

func rangeArgs(lo, hi int, names string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) < lo || len(args) > hi {
			return usagef("%s expects %s (got %d arguments); see '%s --help'", cmd.Name(), names, len(args), cmd.CommandPath())
		}
		return nil
	}
}

func newRootCommand(g *globals) *cobra.Command {
	root := &cobra.Command{
		Use:   "deltabackup",
		Short: "Content-addressed delta backups of data directories",
		Long: `deltabackup backs up a data directory to a repository (a local directory,
or an S3 bucket), storing each distinct content once under its BLAKE3
hexdigest, uploading only what the repository lacks, and restores it byte
for byte, from the repository and from peers at once.

Exit codes: 0 success, 1 failure, 2 usage error, 3 finished but some files
could not be read (they are listed), 10 no repository at --repo, 11 the
repository is locked by another process, 12 wrong password or none given,
130 interrupted.`,
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, args []string) error {
			g.logger = newLogger(g)
			g.s3Flags = map[string]string{}
			cmd.Flags().Visit(func(f *pflag.Flag) {
				if name, ok := strings.CutPrefix(f.Name, "s3-"); ok {
					g.s3Flags[name] = f.Value.String()
				}
			})
			return g.startProfiles()
		},
		PersistentPostRunE: func(cmd *cobra.Command, args []string) error {
			return g.stopProfiles()
		},
	}
	root.SetFlagErrorFunc(func(cmd *cobra.Command, err error) error {
		return usageError{fmt.Errorf("%w; see '%s --help'", err, cmd.CommandPath())}
	})
	pf := root.PersistentFlags()
	pf.StringVarP(&g.repo, "repo", "r", os.Getenv("DELTABACKUP_REPO"), "repository location: a path, file:///path, s3://bucket/prefix, gs://bucket/prefix, azure://container/prefix or sftp://user@host[:port]/path (env DELTABACKUP_REPO)")
	g.password.addFlags(pf, "the repository")
	keyCacheDefault := 10 * time.Minute
	if v, err := time.ParseDuration(os.Getenv("DELTABACKUP_KEY_CACHE")); err == nil {
		keyCacheDefault = v
	}
	pf.DurationVar(&g.keyCache, "key-cache", keyCacheDefault, "keep the unwrapped key of an encrypted repository this long in the user's kernel keyring, so the next command skips the 0.5 s key derivation (env DELTABACKUP_KEY_CACHE; 0 turns it off)")
	pf.BoolVar(&g.json, "json", false, "machine-readable output: JSON progress lines and a JSON summary")
	pf.CountVarP(&g.verbose, "verbose", "v", "more output (repeat for debug logs)")
	pf.BoolVarP(&g.quiet, "quiet", "q", false, "print only errors")
	pf.StringVar(&g.cacheDir, "cache-dir", os.Getenv("DELTABACKUP_CACHE_DIR"), "where the stat cache lives (env DELTABACKUP_CACHE_DIR; default: the user cache dir)")
	pf.DurationVar(&g.retryTime, "retry-max-time", 3*time.Minute, "how long to keep retrying a failing storage request before giving up")
	pf.String("s3-endpoint", "", "S3 endpoint URL (default: AWS, or AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL)")
	pf.String("s3-region", "", "S3 region (default: from the AWS configuration, else us-east-1)")
	pf.String("s3-profile", "", "AWS shared-config profile (AWS_PROFILE works too)")
	pf.Bool("s3-path-style", false, "path-style addressing (endpoint/bucket/key); default: on for custom endpoints")
	pf.Bool("s3-insecure-skip-verify", false, "do not verify the S3 server's TLS certificate (test setups only)")
	pf.String("s3-ca-bundle", "", "PEM file of extra certificate authorities to trust")
	pf.Duration("s3-connect-timeout", 0, "S3 connect timeout (default 10s)")
	pf.Duration("s3-read-timeout", 0, "how long an S3 response may stall (default 60s)")
	pf.String("s3-part-size", "", "multipart part size, also the largest single PUT (default 8MiB, at least 5MiB)")
	pf.Int("s3-upload-concurrency", 0, "parts uploaded at once per object (default 4)")
	pf.String("s3-storage-class", "", "storage class for new objects (default: the bucket's)")
	pf.String("s3-object-lock", "", "put what is written (all but locks) under S3 Object Lock for this long, e.g. 30d: no one can delete or overwrite it until then; init --create-bucket makes the bucket with Object Lock")
	pf.String("s3-object-lock-mode", "", "compliance (default: not even the account's root can shorten it) or governance")
	pf.Var(&g.limitUpload, "limit-upload", "send at most this many bytes per second to storage (and, for serve, to peers), all transfers together, e.g. 20MiB (default: no limit)")
	pf.Var(&g.limitDownload, "limit-download", "receive at most this many bytes per second from storage and peers, all transfers together (default: no limit)")
	pf.StringVar(&g.gcsProject, "gcs-project", "", "Google Cloud project of a bucket that init --create-bucket makes (default GOOGLE_CLOUD_PROJECT)")
	pf.StringArrayVar(&g.sftpIdentities, "sftp-identity", nil, "SSH private key for sftp:// repositories (repeatable; default: ssh-agent's keys, then ~/.ssh/id_ed25519, id_ecdsa, id_rsa)")
	pf.StringArrayVar(&g.sftpKnownHosts, "sftp-known-hosts", nil, "known_hosts file holding the SFTP server's key (repeatable; default ~/.ssh/known_hosts)")
	pf.StringVar(&g.metricsFile, "metrics-file", "", "after a backup, write its metrics here in the Prometheus text format (node_exporter textfile collector)")
	pf.StringVar(&g.notifyURL, "notify-url", "", "POST a JSON event here when a backup finishes or fails and when gc deletes (in the background; never fails the command)")
	pf.StringVar(&g.cpuProfile, "cpu-profile", "", "write a CPU profile (go tool pprof) to this file")
	pf.StringVar(&g.memProfile, "mem-profile", "", "write a heap profile (go tool pprof) to this file at the end")
	_ = pf.MarkHidden("cpu-profile")
	_ = pf.MarkHidden("mem-profile")
	root.AddCommand(newInitCommand(g), newBackupCommand(g), newRestoreCommand(g), newListCommand(g), newShowCommand(g), newBenchCommand(g), newServeCommand(g), newVerifyCommand(g),
		newForgetCommand(g), newGCCommand(g), newDiffCommand(g), newStatsCommand(g), newCopyCommand(g), newWatchCommand(g),
		newLsCommand(g), newDumpCommand(g), newTagCommand(g), newKeyCommand(g))
	return root
}

func newLogger(g *globals) *slog.Logger {
	level := slog.LevelWarn
	switch {
	case g.quiet:
		level = slog.LevelError
	case g.verbose == 1:
		level = slog.LevelInfo
	case g.verbose > 1:
		level = slog.LevelDebug
	}
	opts := &slog.HandlerOptions{Level: level}
	if g.json {
		return slog.New(slog.NewJSONHandler(g.stderr, opts))
	}
	return slog.New(slog.NewTextHandler(g.stderr, opts))
}

// stderrIsTerminal decides whether progress bars are drawn.
func (g *globals) stderrIsTerminal() bool {
	f, ok := g.stderr.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

func (g *globals) printJSON(v any) error { return g.printJSONTo(g.stdout, v) }

// printJSONTo writes v as one JSON line to w.
func (g *globals) printJSONTo(w io.Writer, v any) error {
	return json.NewEncoder(w).Encode(v)
}

func (g *globals) printf(format string, args ...any) {
	if !g.quiet {
		fmt.Fprintf(g.stdout, format, args...)
	}
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	g := &globals{stdout: stdout, stderr: stderr, password: passwordSource{envPrefix: "DELTABACKUP_"}}
	root := newRootCommand(g)
	root.SetArgs(args)
	root.SetOut(stdout)
	root.SetErr(stderr)
	err := root.ExecuteContext(ctx)
	g.drainNotifications()
	for _, o := range g.counted {
		o.Close()
	}
	if err == nil {
		return exitOK
	}
	err = advise(err, g)
	code := exitCode(ctx, err)
	if g.json {
		_ = json.NewEncoder(stderr).Encode(map[string]any{"message_type": "exit_error", "code": code, "message": err.Error()})
	} else {
		fmt.Fprintf(stderr, "deltabackup: %v\n", err)
	}
	return code
}

func exitCode(ctx context.Context, err error) int {
	var usage usageError
	var incomplete incompleteError
	switch {
	case errors.As(err, &usage), errors.Is(err, location.ErrInvalid):
		return exitUsage
	case errors.As(err, &incomplete):
		return exitIncomplete
	case ctx.Err() != nil && errors.Is(err, context.Canceled):
		return exitInterrupted
	case errors.Is(err, hashstore.ErrNotRepository):
		return exitNoRepository
	case errors.Is(err, hashstore.ErrLocked):
		return exitLocked
	case errors.Is(err, hashstore.ErrWrongPassword), errors.Is(err, hashstore.ErrNoPassword), errors.As(err, new(errPasswordSource)):
		return exitPassword
	}
	// cobra reports unknown commands and flags as plain errors.
	if isCobraUsageError(err) {
		return exitUsage
	}
	return exitFailure
}

func isCobraUsageError(err error) bool {
	msg := err.Error()
	for _, prefix := range []string{"unknown command", "unknown flag", "unknown shorthand flag", "required flag", "accepts ", "requires "} {
		if len(msg) >= len(prefix) && msg[:len(prefix)] == prefix {
			return true
		}
	}
	return false
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// advise adds, to an error about to be printed, what the user can do
// about it with this program's flags and commands. The library states
// facts; advice that names a flag or a command belongs here.
func advise(err error, g *globals) error {
	var amb *hashstore.AmbiguousLatestError
	var unreadable *hashstore.UnreadableBackupError
	var damagedPending *hashstore.DamagedPendingError
	switch {
	case errors.Is(err, hashstore.ErrNotRepository):
		return fmt.Errorf("%w; create one with 'deltabackup init --repo %s'", err, g.repo)
	case errors.Is(err, hashstore.ErrRepositoryExists):
		return fmt.Errorf("%w; choose an empty location", err)
	case errors.Is(err, hashstore.ErrWrongPassword):
		return fmt.Errorf("%w; check the password given (--password-file, --password-command, DELTABACKUP_PASSWORD_FILE or DELTABACKUP_PASSWORD); 'deltabackup key list' shows the repository's keys", err)
	case errors.Is(err, hashstore.ErrNoPassword):
		return fmt.Errorf("%w; give it with --password-file, --password-command, DELTABACKUP_PASSWORD_FILE or DELTABACKUP_PASSWORD, or run on a terminal to be asked", err)
	case errors.Is(err, hashstore.ErrKeyInUse):
		return fmt.Errorf("%w; open the repository with another key's password to remove it, or use 'deltabackup key passwd' to replace it", err)
	case errors.Is(err, hashstore.ErrConfigAltered):
		return fmt.Errorf("%w; restore the config file from a copy you trust (its \"encryption\" field)", err)
	case errors.Is(err, hashstore.ErrNewerFormat):
		return fmt.Errorf("%w; upgrade deltabackup", err)
	case errors.Is(err, hashstore.ErrLocked):
		return fmt.Errorf("%w; wait for it to finish, or give a longer --lock-wait", err)
	case errors.As(err, &amb):
		return fmt.Errorf("%w; name the backup, or pick one with --source (and --node)", err)
	case errors.Is(err, hashstore.ErrNoBackups):
		return fmt.Errorf("%w; 'latest' is the newest backup of this host: give --node NAME, or --all-nodes", err)
	case errors.Is(err, hashstore.ErrBackupExists):
		return fmt.Errorf("%w; choose another --name", err)
	case errors.As(err, &unreadable):
		return fmt.Errorf("%w; run 'deltabackup verify', and forget backup %s if it cannot be repaired (or delete backups/%s.json)", err, unreadable.Name, unreadable.Name)
	case errors.As(err, &damagedPending):
		return fmt.Errorf("%w; delete %s from the repository (safe: nothing is deleted by it then, and the next gc marks again)", err, damagedPending.Key)
	case errors.Is(err, hashstore.ErrNoSuchBackup):
		return fmt.Errorf("%w; list backups with 'deltabackup list'", err)
	case errors.Is(err, s3store.ErrBucketMissing):
		return fmt.Errorf("%w; create it, or pass --create-bucket to init", err)
	case errors.Is(err, s3store.ErrWrongRegion):
		return fmt.Errorf("%w; set --s3-region or AWS_REGION", err)
	case errors.Is(err, s3store.ErrAccessDenied):
		return fmt.Errorf("%w; check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or --s3-profile) and the bucket policy", err)
	case errors.Is(err, gcsstore.ErrBucketMissing):
		return fmt.Errorf("%w; create it, or pass --create-bucket to init (with --gcs-project or GOOGLE_CLOUD_PROJECT)", err)
	case errors.Is(err, gcsstore.ErrAccessDenied):
		return fmt.Errorf("%w; check GOOGLE_APPLICATION_CREDENTIALS (or 'gcloud auth application-default login') and the bucket's IAM roles", err)
	case errors.Is(err, azurestore.ErrContainerMissing):
		return fmt.Errorf("%w; create it, or pass --create-bucket to init", err)
	case errors.Is(err, azurestore.ErrAccessDenied):
		return fmt.Errorf("%w; check AZURE_STORAGE_CONNECTION_STRING, or AZURE_STORAGE_ACCOUNT with AZURE_STORAGE_KEY or AZURE_STORAGE_SAS_TOKEN, and the container's role assignments", err)
	case errors.Is(err, sftpstore.ErrUnknownHostKey):
		return fmt.Errorf("%w; if the fingerprint is the server's (ask its administrator), add its key with 'ssh-keyscan -p PORT HOST >> ~/.ssh/known_hosts', or name a file with --sftp-known-hosts", err)
	case errors.Is(err, sftpstore.ErrHostKeyChanged):
		return fmt.Errorf("%w; if the server's key really changed, remove the old line (ssh-keygen -R '[HOST]:PORT') and add the new one", err)
	case errors.Is(err, sftpstore.ErrAuth):
		return fmt.Errorf("%w; load the key the server accepts into ssh-agent, or give it with --sftp-identity", err)
	case errors.Is(err, sftpstore.ErrDirMissing):
		return fmt.Errorf("%w; check the path, or create it with 'deltabackup init'", err)
	case errors.Is(err, sftpstore.ErrPermission):
		return fmt.Errorf("%w; check the owner and mode of the repository's directories on the server", err)
	case errors.Is(err, peer.ErrUnauthorized):
		return fmt.Errorf("%w; give the peers' token with --peer-token-file", err)
	case errors.Is(err, hashstore.ErrEmptyPolicy):
		return usageError{fmt.Errorf("%w: give at least one --keep-* option", err)}
	}
	return err
}
