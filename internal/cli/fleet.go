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
	"text/tabwriter"
	"time"

	"github.com/leadercron/leadercron/internal/config"
	"github.com/leadercron/leadercron/internal/kvlayout"
	"github.com/leadercron/leadercron/internal/ledger"
)

// fleetTimeout bounds one fleet command's Consul requests.
const fleetTimeout = 15 * time.Second

// fleet runs the fleet-wide operations: pause, resume, run and status. They
// read the sidecar's own environment, talk only to Consul KV, and work from
// any replica (ECS Exec, kubectl exec).
func fleet(ctx context.Context, cmd string, args []string, env map[string]string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("leadercron "+cmd, flag.ContinueOnError)
	fs.SetOutput(stderr)
	reason := fs.String("reason", "", "why the job is paused (shown by status)")
	asJSON := fs.Bool("json", false, "print the full state as JSON")
	history := fs.Int("history", 5, "history entries per job to show (text output)")
	byFlag := fs.String("by", "", "who is asking (default LEADERCRON_ID, else the hostname)")
	wantJob := cmd != "status"
	switch cmd {
	case "pause":
		fs.Usage = func() { fmt.Fprintln(stderr, "usage: leadercron pause [-by NAME] [-reason TEXT] <job>") }
	case "run":
		fs.Usage = func() { fmt.Fprintln(stderr, "usage: leadercron run [-by NAME] <job>") }
	case "status":
		fs.Usage = func() { fmt.Fprintln(stderr, "usage: leadercron status [-json] [-history N]") }
	default:
		fs.Usage = func() { fmt.Fprintf(stderr, "usage: leadercron %s <job>\n", cmd) }
	}
	// Flags may come before or after the job name.
	if err := fs.Parse(args); err != nil {
		return ExitConfig
	}
	var job string
	if rest := fs.Args(); wantJob && len(rest) > 0 {
		job = rest[0]
		if err := fs.Parse(rest[1:]); err != nil {
			return ExitConfig
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
		return ExitConfig
	}
	if fs.NArg() > 0 || wantJob && job == "" {
		fs.Usage()
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
	if wantJob && !slices.ContainsFunc(cfg.Jobs, func(j config.Job) bool { return j.Name == job }) {
		fmt.Fprintf(stderr, "leadercron %s: unknown job %q; known jobs: %s\n", cmd, job, knownJobs(cfg))
		return ExitConfig
	}

	ctx, cancel := context.WithTimeout(ctx, fleetTimeout)
	defer cancel()
	store := ledger.New(consul, cfg.KVPrefix)
	by := *byFlag
	if by == "" {
		by = operator(env)
	}
	var err error
	switch cmd {
	case "pause":
		var p kvlayout.Paused
		var created bool
		if p, created, err = store.Pause(ctx, job, by, *reason); err == nil {
			if created {
				fmt.Fprintf(stdout, "paused %s (by %s%s): the leader skips its slots until `leadercron resume %s`\n", job, by, reasonSuffix(p.Reason), job)
			} else {
				fmt.Fprintf(stdout, "%s was already paused by %s at %s%s; left unchanged\n", job, p.By, stamp(p.At), reasonSuffix(p.Reason))
			}
		}
	case "resume":
		var p kvlayout.Paused
		var was bool
		if p, was, err = store.Resume(ctx, job); err == nil {
			if was {
				fmt.Fprintf(stdout, "resumed %s (paused by %s at %s%s)\n", job, p.By, stamp(p.At), reasonSuffix(p.Reason))
			} else {
				fmt.Fprintf(stdout, "%s was not paused; nothing changed\n", job)
			}
		}
	case "run":
		var r kvlayout.Request
		var created bool
		if r, created, err = store.RequestRun(ctx, job, by); err == nil {
			if created {
				fmt.Fprintf(stdout, "run-now request for %s queued (id %s, by %s): the leader fires it once\n", job, r.ID, by)
			} else {
				fmt.Fprintf(stdout, "a run-now request for %s is already pending (id %s, by %s at %s); not queued again\n", job, r.ID, r.By, stamp(r.At))
			}
		}
	case "status":
		var f ledger.Fleet
		if f, err = store.Snapshot(ctx); err == nil {
			for _, p := range f.Problems {
				fmt.Fprintf(stderr, "leadercron status: warning: cannot decode %s\n", p)
			}
			st := newStatusView(cfg, f, time.Now())
			if *asJSON {
				enc := json.NewEncoder(stdout)
				enc.SetIndent("", "  ")
				err = enc.Encode(st)
			} else {
				st.print(stdout, max(*history, 0))
			}
		}
	}
	if err != nil {
		fmt.Fprintf(stderr, "leadercron %s: %v\n", cmd, err)
		return ExitFailure
	}
	return ExitOK
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

// statusView is what `leadercron status -json` prints.
type statusView struct {
	Service  string         `json:"service"`
	KVPrefix string         `json:"kv_prefix"`
	ReadAt   time.Time      `json:"read_at"`
	Leader   *ledger.Leader `json:"leader"` // null: no sidecar holds the lock
	Jobs     []jobView      `json:"jobs"`
	// OtherJobs have state in Consul but are not in this configuration
	// (renamed or removed jobs, or a replica with another configuration).
	OtherJobs map[string]*ledger.JobState `json:"other_jobs,omitempty"`
	Problems  []string                    `json:"problems,omitempty"`
}

type jobView struct {
	Name     string     `json:"name"`
	Schedule string     `json:"schedule"`
	TZ       string     `json:"tz"`
	NextSlot *time.Time `json:"next_slot"` // computed locally; null when the schedule has no further slot
	ledger.JobState
}

func newStatusView(cfg config.Config, f ledger.Fleet, now time.Time) statusView {
	st := statusView{Service: cfg.Service, KVPrefix: cfg.KVPrefix, ReadAt: now.UTC(), Leader: f.Leader, Problems: f.Problems}
	for _, j := range cfg.Jobs {
		v := jobView{Name: j.Name, Schedule: j.Spec, TZ: j.Location.String()}
		if next := j.Schedule.Next(now.In(j.Location)); !next.IsZero() {
			next = next.In(j.Location)
			v.NextSlot = &next
		}
		if s := f.Jobs[j.Name]; s != nil {
			v.JobState = *s
			delete(f.Jobs, j.Name)
		}
		if v.History == nil {
			v.History = []kvlayout.Entry{}
		}
		st.Jobs = append(st.Jobs, v)
	}
	if len(f.Jobs) > 0 {
		st.OtherJobs = f.Jobs
	}
	return st
}

func (st statusView) print(w io.Writer, history int) {
	fmt.Fprintf(w, "service %s (KV prefix %s)\n", st.Service, st.KVPrefix)
	if l := st.Leader; l != nil {
		fmt.Fprintf(w, "leader  %s (session %s, fencing token %d", l.ID, l.Session, l.FencingToken)
		if l.Since != nil {
			fmt.Fprintf(w, ", since %s", stamp(*l.Since))
		}
		if l.TTL != "" {
			fmt.Fprintf(w, ", ttl %s, node %s", l.TTL, l.Node)
		}
		fmt.Fprintln(w, ")")
	} else {
		fmt.Fprintln(w, "leader  none: no sidecar holds the lock, so no job fires")
	}

	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "JOB\tSCHEDULE\tTZ\tNEXT SLOT\tLAST CLAIMED\tPAUSED\tRUN-NOW")
	for _, j := range st.Jobs {
		next := "none"
		if j.NextSlot != nil {
			next = fmt.Sprintf("%s (in %s)", j.NextSlot.Format(time.RFC3339), j.NextSlot.Sub(st.ReadAt).Round(time.Second))
		}
		last, paused, req := "-", "-", "-"
		if j.Last != nil {
			last = stamp(j.Last.Slot)
		}
		if j.Paused != nil {
			paused = fmt.Sprintf("by %s at %s%s", j.Paused.By, stamp(j.Paused.At), reasonSuffix(j.Paused.Reason))
		}
		if j.Request != nil {
			req = fmt.Sprintf("pending, by %s at %s", j.Request.By, stamp(j.Request.At))
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", j.Name, j.Schedule, j.TZ, next, last, paused, req)
	}
	_ = tw.Flush()

	if history > 0 {
		for _, j := range st.Jobs {
			fmt.Fprintf(w, "\n%s: recent slots, newest first (at most %d; -history N)\n", j.Name, history)
			if len(j.History) == 0 {
				fmt.Fprintln(w, "  (none recorded)")
				continue
			}
			tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
			fmt.Fprintln(tw, "  SLOT\tOUTCOME\tREASON\tHTTP\tDURATION\tATTEMPTS\tBY")
			for _, e := range j.History[:min(history, len(j.History))] {
				slot := stamp(e.Slot)
				if e.RunNow {
					slot += " (run-now)"
				}
				status, took, attempts := "-", "-", "-"
				if e.HTTPStatus != 0 {
					status = fmt.Sprint(e.HTTPStatus)
				}
				if e.Attempts > 0 {
					took, attempts = (time.Duration(e.DurationMS) * time.Millisecond).String(), fmt.Sprint(e.Attempts)
				}
				fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s\t%s\t%s\n", slot, e.Outcome, dash(string(e.Reason)), status, took, attempts, dash(e.ID))
			}
			_ = tw.Flush()
		}
	}

	if len(st.OtherJobs) > 0 {
		names := make([]string, 0, len(st.OtherJobs))
		for n := range st.OtherJobs {
			names = append(names, n)
		}
		slices.Sort(names)
		fmt.Fprintf(w, "\nalso in Consul, not in this configuration: %s (see -json)\n", strings.Join(names, ", "))
	}
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
