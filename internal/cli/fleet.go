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

	"github.com/hashicorp/consul/api"

	"github.com/leadercron/leadercron/internal/config"
	"github.com/leadercron/leadercron/internal/ecsmeta"
	"github.com/leadercron/leadercron/internal/ledger"
)

// fleetTimeout bounds one fleet command's Consul requests.
const fleetTimeout = 15 * time.Second

// fleet runs the fleet-wide operations: pause, resume, run and status. They
// talk only to Consul KV and work from any replica (ECS Exec, kubectl exec)
// or from an operator's machine with only CONSUL_HTTP_ADDR (and the other
// CONSUL_* variables it needs) and the fleet's service name: job names are
// checked against the job table the leader publishes in Consul.
func fleet(ctx context.Context, cmd string, args []string, env map[string]string, stdout, stderr io.Writer) int {
	fa, ok := parseFleetArgs(cmd, args, stderr)
	if !ok {
		return ExitConfig
	}
	cfg, consul, code := loadFleet(ctx, cmd, fa, env, stderr)
	if code != ExitOK {
		return code
	}
	if fa.by == "" {
		fa.by = operator(env)
	}
	ctx, cancel := context.WithTimeout(ctx, fleetTimeout)
	defer cancel()
	store := ledger.New(consul, cfg.KVPrefix)
	if fa.job != "" {
		if code := checkJob(ctx, cmd, store, cfg, fa.job, stderr); code != ExitOK {
			return code
		}
	}
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

// fleetVars are the LEADERCRON_* variables a fleet command reads, besides
// the LEADERCRON_JOB_* ones; the sidecar's other settings (the app's URL,
// the secrets, the admin port) are not read, so neither their absence nor
// a value that only the sidecar's container can use gets in the way.
// LEADERCRON_TRIGGER_TIMEOUT is the default timeout of the local jobs.
var fleetVars = []string{"LEADERCRON_SERVICE", "LEADERCRON_KV_PREFIX", "LEADERCRON_ID", "LEADERCRON_LOCK",
	"LEADERCRON_TRIGGER_TIMEOUT", ecsmeta.EnvVar}

// loadFleet loads what a fleet command needs: the fleet's service (-service,
// else LEADERCRON_SERVICE, else the ECS task family), its KV prefix, any
// local LEADERCRON_JOB_* variables, and the Consul client, which
// api.DefaultConfig builds from the CONSUL_* variables. On a problem it
// prints it and returns ExitConfig.
func loadFleet(ctx context.Context, cmd string, fa fleetArgs, env map[string]string, stderr io.Writer) (config.Config, *api.Client, int) {
	sub := map[string]string{}
	for k, v := range env {
		if slices.Contains(fleetVars, k) || strings.HasPrefix(k, config.JobPrefix) {
			sub[k] = v
		}
	}
	if fa.service != "" {
		sub["LEADERCRON_SERVICE"] = fa.service
	}
	if sub["LEADERCRON_SERVICE"] == "" && sub[ecsmeta.EnvVar] == "" {
		fmt.Fprintf(stderr, "leadercron %s: which fleet? set LEADERCRON_SERVICE or pass -service NAME (and CONSUL_HTTP_ADDR)\n%s\n", cmd, fleetUsage[cmd])
		return config.Config{}, nil, ExitConfig
	}
	cfg, consul, code := load(ctx, sub, stderr)
	if code != ExitOK {
		return cfg, nil, code
	}
	if cfg.Lock != config.LockConsul {
		fmt.Fprintf(stderr, "leadercron %s: LEADERCRON_LOCK=%s: fleet commands work through Consul KV, which standalone mode does not use; set LEADERCRON_LOCK=consul and CONSUL_HTTP_ADDR\n", cmd, cfg.Lock)
		return cfg, nil, ExitConfig
	}
	return cfg, consul, ExitOK
}

// checkJob refuses a job the fleet does not have, with ExitConfig and the
// list of the jobs it has. The fleet's job table in Consul decides; only
// while there is none (no leader of this version has led yet), or when it
// cannot be read, do this environment's LEADERCRON_JOB_* variables, and
// the command says so.
func checkJob(ctx context.Context, cmd string, store *ledger.Store, cfg config.Config, job string, stderr io.Writer) int {
	t, err := store.JobTable(ctx)
	switch {
	case err != nil && len(cfg.Jobs) == 0:
		fmt.Fprintf(stderr, "leadercron %s: %v\n", cmd, err)
		return ExitFailure
	case err != nil:
		fmt.Fprintf(stderr, "leadercron %s: warning: cannot read the fleet's job table (%v); checking %q against this environment's LEADERCRON_JOB_* variables\n", cmd, err, job)
	case t != nil:
		names := make([]string, len(t.Jobs))
		for i, j := range t.Jobs {
			names[i] = j.Name
		}
		if slices.Contains(names, job) {
			return ExitOK
		}
		known := strings.Join(names, ", ")
		if known == "" {
			known = "none"
		}
		fmt.Fprintf(stderr, "leadercron %s: unknown job %q; known jobs: %s (the fleet's job table %s, published by %s, version %s, at %s)\n",
			cmd, job, known, cfg.Keys().JobTable(), t.Publisher, t.Version, stamp(t.PublishedAt))
		return ExitConfig
	case len(cfg.Jobs) > 0:
		fmt.Fprintf(stderr, "leadercron %s: note: no job table in Consul yet (%s: no leader of this version has led); checking %q against this environment's LEADERCRON_JOB_* variables\n",
			cmd, cfg.Keys().JobTable(), job)
	default:
		fmt.Fprintf(stderr, "leadercron %s: unknown job %q; known jobs: none: no job table in Consul yet (%s: no leader of this version has led) and no LEADERCRON_JOB_<NAME> variables are set here\n",
			cmd, job, cfg.Keys().JobTable())
		return ExitConfig
	}
	if !slices.ContainsFunc(cfg.Jobs, func(j config.Job) bool { return j.Name == job }) {
		fmt.Fprintf(stderr, "leadercron %s: unknown job %q; known jobs: %s\n", cmd, job, knownJobs(cfg))
		return ExitConfig
	}
	return ExitOK
}

// fleetArgs are a fleet command's job and flags.
type fleetArgs struct {
	job, reason, by string
	service         string
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
	service := fs.String("service", "", "the fleet's service name (default LEADERCRON_SERVICE)")
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
	allowed := append([]string{"service"}, map[string][]string{"pause": {"reason", "by"}, "run": {"by"}, "status": {"json", "history"}}[cmd]...)
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
	return fleetArgs{job: job, reason: *reason, by: *byFlag, service: *service, json: *asJSON, history: max(*history, 0)}, true
}

const serviceUsage = "\n  -service NAME: the fleet (default LEADERCRON_SERVICE); Consul from CONSUL_HTTP_ADDR and the other CONSUL_* variables"

var fleetUsage = map[string]string{
	"pause":  "usage: leadercron pause [-by NAME] [-reason TEXT] <job>" + serviceUsage,
	"resume": "usage: leadercron resume <job>" + serviceUsage,
	"run":    "usage: leadercron run [-by NAME] <job>" + serviceUsage,
	"status": "usage: leadercron status [-json] [-history N]" + serviceUsage,
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
	tables, _, err := store.Tables(ctx, 0, 0)
	if err != nil {
		fmt.Fprintf(stderr, "leadercron status: warning: cannot read the fleet's job tables (%v); showing this environment's jobs\n", err)
	}
	for _, p := range tables.Problems {
		fmt.Fprintf(stderr, "leadercron status: warning: cannot decode %s\n", p)
	}
	st := newStatusView(cfg, f, tables, time.Now())
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
