package cli

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/leadercron/leadercron/internal/config"
	"github.com/leadercron/leadercron/internal/ledger"
)

// fleetTimeout bounds one fleet command's Consul requests.
const fleetTimeout = 15 * time.Second

// fleet runs the fleet-wide operations: pause, resume, run and status. They
// read the sidecar's own environment, talk only to Consul KV, and work from
// any replica (ECS Exec, kubectl exec).
func fleet(ctx context.Context, cmd string, args []string, env map[string]string, stdout, stderr io.Writer) int {
	fa, ok := parseFleetArgs(cmd, args, stderr)
	if !ok {
		return ExitConfig
	}
	cfg, consul, code := load(ctx, env, stderr)
	if code != ExitOK {
		return code
	}
	if cfg.Lock != config.LockConsul {
		fmt.Fprintf(stderr, "leadercron %s: LEADERCRON_LOCK=%s: fleet commands work through Consul KV, which standalone mode does not use; set LEADERCRON_LOCK=consul and CONSUL_HTTP_ADDR\n", cmd, cfg.Lock)
		return ExitConfig
	}
	if fa.job != "" && !slices.ContainsFunc(cfg.Jobs, func(j config.Job) bool { return j.Name == fa.job }) {
		fmt.Fprintf(stderr, "leadercron %s: unknown job %q; known jobs: %s\n", cmd, fa.job, knownJobs(cfg))
		return ExitConfig
	}
	if fa.by == "" {
		fa.by = operator(env)
	}
	ctx, cancel := context.WithTimeout(ctx, fleetTimeout)
	defer cancel()
	store := ledger.New(consul, cfg.KVPrefix)
	var err error
	switch cmd {
	case "pause":
		err = pause(ctx, store, fa, stdout)
	case "resume":
		err = resume(ctx, store, fa, stdout)
	case "run":
		err = requestRun(ctx, store, fa, stdout)
	case "status":
		err = status(ctx, store, cfg, fa, stdout, stderr)
	}
	if err != nil {
		fmt.Fprintf(stderr, "leadercron %s: %v\n", cmd, err)
		return ExitFailure
	}
	return ExitOK
}

// fleetArgs are a fleet command's job and flags.
type fleetArgs struct {
	job, reason, by string
	json            bool
	history         int
}

// parseFleetArgs parses a fleet command's arguments; flags may come before
// or after the job name. On a problem it prints the usage and returns false.
func parseFleetArgs(cmd string, args []string, stderr io.Writer) (fleetArgs, bool) {
	fs := flag.NewFlagSet("leadercron "+cmd, flag.ContinueOnError)
	fs.SetOutput(stderr)
	reason := fs.String("reason", "", "why the job is paused (shown by status)")
	asJSON := fs.Bool("json", false, "print the full state as JSON")
	history := fs.Int("history", 5, "history entries per job to show (text output)")
	byFlag := fs.String("by", "", "who is asking (default LEADERCRON_ID, else the hostname)")
	fs.Usage = func() { fmt.Fprintln(stderr, fleetUsage[cmd]) }
	wantJob := cmd != "status"
	if err := fs.Parse(args); err != nil {
		return fleetArgs{}, false
	}
	var job string
	if rest := fs.Args(); wantJob && len(rest) > 0 {
		job = rest[0]
		if err := fs.Parse(rest[1:]); err != nil {
			return fleetArgs{}, false
		}
	}
	allowed := map[string][]string{"pause": {"reason", "by"}, "run": {"by"}, "status": {"json", "history"}}[cmd]
	bad := ""
	fs.Visit(func(f *flag.Flag) {
		if !slices.Contains(allowed, f.Name) {
			bad = f.Name
		}
	})
	if bad != "" {
		fmt.Fprintf(stderr, "leadercron %s: flag -%s is not accepted by this command\n", cmd, bad)
		fs.Usage()
		return fleetArgs{}, false
	}
	if fs.NArg() > 0 || wantJob && job == "" {
		fs.Usage()
		return fleetArgs{}, false
	}
	return fleetArgs{job: job, reason: *reason, by: *byFlag, json: *asJSON, history: max(*history, 0)}, true
}

var fleetUsage = map[string]string{
	"pause":  "usage: leadercron pause [-by NAME] [-reason TEXT] <job>",
	"resume": "usage: leadercron resume <job>",
	"run":    "usage: leadercron run [-by NAME] <job>",
	"status": "usage: leadercron status [-json] [-history N]",
}

func pause(ctx context.Context, store *ledger.Store, fa fleetArgs, stdout io.Writer) error {
	p, created, err := store.Pause(ctx, fa.job, fa.by, fa.reason)
	switch {
	case err != nil:
		return err
	case created:
		fmt.Fprintf(stdout, "paused %s (by %s%s): the leader skips its slots until `leadercron resume %s`\n", fa.job, fa.by, reasonSuffix(p.Reason), fa.job)
	default:
		fmt.Fprintf(stdout, "%s was already paused by %s at %s%s; left unchanged\n", fa.job, p.By, stamp(p.At), reasonSuffix(p.Reason))
	}
	return nil
}

func resume(ctx context.Context, store *ledger.Store, fa fleetArgs, stdout io.Writer) error {
	p, was, err := store.Resume(ctx, fa.job)
	switch {
	case err != nil:
		return err
	case was:
		fmt.Fprintf(stdout, "resumed %s (paused by %s at %s%s)\n", fa.job, p.By, stamp(p.At), reasonSuffix(p.Reason))
	default:
		fmt.Fprintf(stdout, "%s was not paused; nothing changed\n", fa.job)
	}
	return nil
}

func requestRun(ctx context.Context, store *ledger.Store, fa fleetArgs, stdout io.Writer) error {
	r, created, err := store.RequestRun(ctx, fa.job, fa.by)
	switch {
	case err != nil:
		return err
	case created:
		fmt.Fprintf(stdout, "run-now request for %s queued (id %s, by %s): the leader fires it once\n", fa.job, r.ID, fa.by)
	default:
		fmt.Fprintf(stdout, "a run-now request for %s is already pending (id %s, by %s at %s); not queued again\n", fa.job, r.ID, r.By, stamp(r.At))
	}
	return nil
}

func status(ctx context.Context, store *ledger.Store, cfg config.Config, fa fleetArgs, stdout, stderr io.Writer) error {
	f, err := store.Snapshot(ctx)
	if err != nil {
		return err
	}
	for _, p := range f.Problems {
		fmt.Fprintf(stderr, "leadercron status: warning: cannot decode %s\n", p)
	}
	st := newStatusView(cfg, f, time.Now())
	if fa.json {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(st)
	}
	st.print(stdout, fa.history)
	return nil
}

// operator names who ran a fleet command: LEADERCRON_ID if set, else the
// hostname (the default sidecar ID carries a pid that means nothing here).
func operator(env map[string]string) string {
	if id := strings.TrimSpace(env["LEADERCRON_ID"]); id != "" {
		return id
	}
	if h, err := os.Hostname(); err == nil && h != "" {
		return h
	}
	return "unknown"
}

func knownJobs(cfg config.Config) string {
	if len(cfg.Jobs) == 0 {
		return "none (no LEADERCRON_JOB_<NAME> variables are set)"
	}
	names := make([]string, len(cfg.Jobs))
	for i, j := range cfg.Jobs {
		names[i] = j.Name
	}
	return strings.Join(names, ", ")
}

func reasonSuffix(r string) string {
	if r == "" {
		return ""
	}
	return fmt.Sprintf(", reason %q", r)
}

func stamp(t time.Time) string {
	if t.IsZero() {
		return "?"
	}
	return t.UTC().Format(time.RFC3339)
}
