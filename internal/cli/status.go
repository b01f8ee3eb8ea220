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
)

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
