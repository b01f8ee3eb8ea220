package cli

import (
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/leadercron/leadercron/internal/config"
	"github.com/leadercron/leadercron/internal/kvlayout"
	"github.com/leadercron/leadercron/internal/ledger"
	"github.com/leadercron/leadercron/internal/scheduler"
)

// statusView is what `leadercron status -json` prints.
type statusView struct {
	Service  string         `json:"service"`
	KVPrefix string         `json:"kv_prefix"`
	ReadAt   time.Time      `json:"read_at"`
	Leader   *ledger.Leader `json:"leader"` // null: no sidecar holds the lock
	// JobSource is where Jobs come from: "fleet", the job table the
	// leader published (JobTable); "local", this environment's
	// LEADERCRON_JOB_* variables, while no table is published.
	JobSource string             `json:"job_source"`
	JobTable  *kvlayout.JobTable `json:"job_table"` // null while none is published
	Jobs      []jobView          `json:"jobs"`
	// Replicas are the sidecars' member records, live or not, sorted by
	// ID.
	Replicas []replicaView `json:"replicas"`
	// TablesDisagree: a live replica runs a job table other than the
	// fleet's (without a fleet table: two live replicas differ).
	TablesDisagree bool `json:"tables_disagree"`
	// OtherJobs have state in Consul but are not in Jobs (renamed or
	// removed jobs, or a replica with another configuration).
	OtherJobs map[string]*ledger.JobState `json:"other_jobs,omitempty"`
	Problems  []string                    `json:"problems,omitempty"`
}

type jobView struct {
	kvlayout.JobSpec            // name, schedule, tz and every option
	NextSlot         *time.Time `json:"next_slot"` // computed locally; null when the schedule has no further slot or does not parse here
	ledger.JobState
}

// replicaView is one sidecar's member record.
type replicaView struct {
	ID      string    `json:"id"`
	Version string    `json:"version"`
	Digest  string    `json:"digest"`
	At      time.Time `json:"at"`   // when the record was last written
	Live    bool      `json:"live"` // written within the last ledger.MemberTTL
	Leader  bool      `json:"leader"`
	// MatchesTable: its job table is the fleet's (false without one).
	MatchesTable bool `json:"matches_table"`
	// Differences from the fleet's table, one line per job.
	Differences []string `json:"differences,omitempty"`
}

const (
	sourceFleet = "fleet"
	sourceLocal = "local"
)

func newStatusView(cfg config.Config, f ledger.Fleet, t ledger.Tables, now time.Time) statusView {
	st := statusView{Service: cfg.Service, KVPrefix: cfg.KVPrefix, ReadAt: now.UTC(), Leader: f.Leader, Problems: f.Problems,
		JobTable: t.Table, Jobs: []jobView{}, Replicas: []replicaView{}}
	type sched struct {
		s   scheduler.Schedule
		loc *time.Location
	}
	schedules := map[string]sched{}
	var specs []kvlayout.JobSpec
	if t.Table != nil {
		st.JobSource = sourceFleet
		specs = t.Table.Jobs
		for _, j := range specs {
			if s, loc, ok := tableSchedule(j); ok {
				schedules[j.Name] = sched{s, loc}
			}
		}
	} else {
		st.JobSource = sourceLocal
		jobs := make([]scheduler.Job, len(cfg.Jobs))
		for i, j := range cfg.Jobs {
			jobs[i] = j.Job
			schedules[j.Name] = sched{j.Schedule, j.Location}
		}
		specs = ledger.JobSpecs(jobs)
	}
	for _, j := range specs {
		v := jobView{JobSpec: j}
		if sc, ok := schedules[j.Name]; ok {
			if next := sc.s.Next(now.In(sc.loc)); !next.IsZero() {
				next = next.In(sc.loc)
				v.NextSlot = &next
			}
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

	digests := map[string]bool{}
	for _, m := range t.Members {
		r := replicaView{ID: m.ID, Version: m.Version, Digest: m.Digest, At: m.At.UTC(), Live: ledger.Live(m, now),
			Leader: f.Leader != nil && f.Leader.ID == m.ID}
		if t.Table != nil {
			r.MatchesTable = m.Digest == t.Table.Digest
			if !r.MatchesTable {
				r.Differences = ledger.DiffJobs(t.Table.Jobs, m.Jobs, "the fleet's table", m.ID)
			}
			st.TablesDisagree = st.TablesDisagree || r.Live && !r.MatchesTable
		}
		if r.Live {
			digests[m.Digest] = true
		}
		st.Replicas = append(st.Replicas, r)
	}
	if t.Table == nil && len(digests) > 1 {
		st.TablesDisagree = true
	}
	return st
}

// tableSchedule parses a job table's schedule and zone with the sidecar's
// own parser (config.Load of a one-job environment), so that the next slot
// shown is the one the leader computes. ok is false for a schedule this
// version does not parse (a table published by a newer one).
func tableSchedule(j kvlayout.JobSpec) (scheduler.Schedule, *time.Location, bool) {
	v := config.JobPrefix + strings.ToUpper(strings.ReplaceAll(j.Name, "-", "_"))
	cfg, err := config.Load(map[string]string{"LEADERCRON_SERVICE": "status", "LEADERCRON_ID": "status",
		v: j.Schedule + " tz=" + j.TZ}, config.Defaults{})
	if err != nil || len(cfg.Jobs) != 1 || cfg.Jobs[0].Name != j.Name {
		return nil, nil, false
	}
	return cfg.Jobs[0].Schedule, cfg.Jobs[0].Location, true
}

func (st statusView) print(w io.Writer, history int) {
	st.printHeader(w)
	st.printReplicas(w)
	st.printJobs(w)
	if history > 0 {
		st.printHistory(w, history)
	}
	st.printOtherJobs(w)
}

// printHeader is the service, the leader and where the job list comes from.
func (st statusView) printHeader(w io.Writer) {
	fmt.Fprintf(w, "service %s (KV prefix %s)\n", st.Service, st.KVPrefix)
	if l := st.Leader; l != nil {
		fmt.Fprintf(w, "leader  %s (session %s, fencing token %d", l.ID, l.Session, l.FencingToken)
		if l.Since != nil {
			fmt.Fprintf(w, ", since %s", stamp(*l.Since))
		}
		if l.TTL != "" {
			fmt.Fprintf(w, ", lease: session ttl %s, node %s", l.TTL, l.Node)
		}
		fmt.Fprintln(w, ")")
	} else {
		fmt.Fprintln(w, "leader  none: no sidecar holds the lock, so no job fires")
	}
	if t := st.JobTable; t != nil {
		fmt.Fprintf(w, "jobs    the fleet's job table: published by %s (version %s) at %s, fencing token %d, digest %s\n",
			t.Publisher, t.Version, stamp(t.PublishedAt), t.FencingToken, ledger.ShortDigest(t.Digest))
	} else {
		fmt.Fprintf(w, "jobs    this environment's LEADERCRON_JOB_* variables: no job table in Consul yet (%s: no leader of this version has led)\n",
			kvlayout.New(st.KVPrefix).JobTable())
	}
}

// printJobs is one line per job: schedule, next slot, pause, last slot and
// its fate, pending run-now.
func (st statusView) printJobs(w io.Writer) {
	fmt.Fprintln(w)
	if len(st.Jobs) == 0 {
		fmt.Fprintln(w, "no jobs known")
	} else {
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "JOB\tSCHEDULE\tTZ\tNEXT SLOT\tPAUSED\tLAST SLOT\tOUTCOME\tREASON\tRUN-NOW")
		for _, j := range st.Jobs {
			next := "none"
			if j.NextSlot != nil {
				next = fmt.Sprintf("%s (in %s)", j.NextSlot.Format(time.RFC3339), j.NextSlot.Sub(st.ReadAt).Round(time.Second))
			} else if st.JobSource == sourceFleet {
				next = "?"
			}
			paused, req := "-", "-"
			last, outcome, reason := "-", "-", "-"
			if j.Paused != nil {
				paused = fmt.Sprintf("by %s at %s%s", j.Paused.By, stamp(j.Paused.At), reasonSuffix(j.Paused.Reason))
			}
			if len(j.History) > 0 {
				e := j.History[0]
				last, outcome, reason = stamp(e.Slot), string(e.Outcome), dash(string(e.Reason))
				if e.RunNow {
					last += " (run-now)"
				}
			}
			if j.Request != nil {
				req = fmt.Sprintf("pending, by %s at %s", j.Request.By, stamp(j.Request.At))
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", j.Name, j.Schedule, j.TZ, next, paused, last, outcome, reason, req)
		}
		_ = tw.Flush()
	}

}

// printHistory is each job's recent slots, newest first.
func (st statusView) printHistory(w io.Writer, history int) {
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

// printOtherJobs names the jobs with state in Consul that the job list
// does not have.
func (st statusView) printOtherJobs(w io.Writer) {
	if len(st.OtherJobs) > 0 {
		names := make([]string, 0, len(st.OtherJobs))
		for n := range st.OtherJobs {
			names = append(names, n)
		}
		slices.Sort(names)
		where := "not in this configuration"
		if st.JobSource == sourceFleet {
			where = "not in the fleet's job table"
		}
		fmt.Fprintf(w, "\nalso in Consul, %s: %s (see -json)\n", where, strings.Join(names, ", "))
	}
}

// printReplicas lists the member records, and warns when live replicas
// disagree on the job table.
func (st statusView) printReplicas(w io.Writer) {
	if len(st.Replicas) == 0 {
		return
	}
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "REPLICA\tVERSION\tJOB TABLE\tWRITTEN\tSTATE")
	var differ []string
	for _, r := range st.Replicas {
		var state []string
		if r.Leader {
			state = append(state, "leader")
		}
		switch {
		case !r.Live:
			state = append(state, fmt.Sprintf("gone? not rewritten for %s (the leader removes such records)", ledger.MemberTTL))
		case st.JobTable == nil:
		case r.MatchesTable:
			state = append(state, "the fleet's table")
		default:
			state = append(state, "DIFFERENT job table: "+strings.Join(r.Differences, "; "))
			differ = append(differ, r.ID)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", r.ID, dash(r.Version), ledger.ShortDigest(r.Digest), stamp(r.At), dash(strings.Join(state, ", ")))
	}
	_ = tw.Flush()
	if st.TablesDisagree {
		who := "live replicas run different job tables"
		if len(differ) > 0 {
			who = fmt.Sprintf("%s run%s a job table other than the fleet's", strings.Join(differ, ", "), map[bool]string{true: "s"}[len(differ) == 1])
		}
		fmt.Fprintf(w, "WARNING: %s (a deploy half done?): whichever sidecar leads fires its own table\n", who)
	}
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
