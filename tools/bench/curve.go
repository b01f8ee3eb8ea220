package main

import (
	"bufio"
	"context"
	"fmt"
	"math"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// point is one scale point of the curve: a leader and its standbys, all
// configured with jobs jobs, each due every period seconds and spread
// evenly over the seconds (`<i mod period>/period * * * * *`), so that
// jobs/period slots are due each second; measured over dur, a multiple of
// period.
type point struct {
	jobs, standbys, period int
	dur                    time.Duration
}

// perSecond is how many slots are due each second.
func (p point) perSecond() int { return p.jobs / p.period }

// expected is how many slots are due in a window of dur that starts on a
// multiple of period.
func (p point) expected() int { return p.jobs * int(p.dur/time.Second) / p.period }

// short names the point in a column header: "1,000 jobs".
func (p point) short() string { return thousands(p.jobs) + " jobs" }

func (p point) String() string {
	every := "every second"
	if p.period > 1 {
		every = fmt.Sprintf("every %d s (`<i mod %d>/%d * * * * *`)", p.period, p.period, p.period)
	}
	sb := "standbys"
	if p.standbys == 1 {
		sb = "standby"
	}
	return fmt.Sprintf("%s jobs %s + %d %s, %s → %s slots", thousands(p.jobs), every, p.standbys, sb,
		p.dur, thousands(p.expected()))
}

func (p point) specs() map[string]string {
	jobs := map[string]string{}
	for i := range p.jobs {
		spec := "* * * * * *"
		if p.period > 1 {
			spec = fmt.Sprintf("%d/%d * * * * *", i%p.period, p.period)
		}
		jobs[fmt.Sprintf("j%04d", i)] = spec
	}
	return jobs
}

// thousands writes n with a comma every three digits.
func thousands(n int) string {
	s := strconv.Itoa(n)
	for i := len(s) - 3; i > 0; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	return s
}

// ck is the figure key of name at scale point i.
func ck(i int, name string) string { return fmt.Sprintf("c%d_%s", i, name) }

// snap is what the window's bounds read: the leader's and each standby's
// /proc usage, every proxy's counts, the leader's requests by kind and the
// agent's Raft commit index.
type snap struct {
	at     time.Time
	usage  []usage  // leader first, then the standbys
	counts []counts // likewise
	kinds  map[string]int64
	raft   uint64
}

func (e *env) snapshot(ms []*member) (snap, error) {
	s := snap{at: time.Now(), kinds: ms[0].px.kinds()}
	for _, m := range ms {
		u, err := readUsage(m.p.Pid())
		if err != nil {
			return s, fmt.Errorf("%s: %w", m.name, err)
		}
		s.usage = append(s.usage, u)
		s.counts = append(s.counts, m.px.counts())
	}
	var err error
	s.raft, err = e.raftIndex()
	return s, err
}

// raftIndex is the agent's Raft commit index (/v1/agent/self, Stats.raft),
// which grows by one for every entry written to the Raft log: every write
// of the whole agent, whoever sent it.
//
// Why not the consul.raft.apply counter of /v1/agent/metrics: its JSON
// form shows only the last complete 10 s interval of the in-memory sink,
// not a running total (checked on Consul v1.22.5: 30 KV PUTs showed up as
// consul.raft.apply 30 only in the next interval's snapshot), so there is
// no delta over an arbitrary window without enabling the Prometheus sink.
// The commit index is a running total of the same applies. Checked on the
// same dev agent: 100 KV PUTs moved it by 100, 20 refused CAS PUTs by 20
// (a refused CAS or Txn is still a Raft write; the FSM refuses it), 50
// session renewals and 20 reads by 0, and 20 idle seconds by 1 (the agent's
// own anti-entropy): a renewal is not a Raft write, a claim Txn is one
// whether or not it wins.
func (e *env) raftIndex() (uint64, error) {
	self, err := e.consul.Agent().Self()
	if err != nil {
		return 0, fmt.Errorf("read the Raft commit index: %w", err)
	}
	raft, _ := self["Stats"]["raft"].(map[string]any)
	s, _ := raft["commit_index"].(string)
	n, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("read the Raft commit index: /v1/agent/self has Stats.raft.commit_index %q", s)
	}
	return n, nil
}

// curvePoint runs scale point i for impl: a leader "a" and pt.standbys
// standbys, measured over a window of pt.dur that starts on a multiple of
// the period. Requests, CPU and Raft writes are counted between two
// snapshots half a second before the window's first and last second, so
// that each holds the claims just before a slot and the work just after
// it. A standby that fires is a harness failure.
func (e *env) curvePoint(ctx context.Context, impl string, i int, pt point, fig figures) error {
	f := e.newFleet(impl, fmt.Sprintf("curve%d", pt.jobs))
	defer f.close()
	p := time.Duration(pt.period) * time.Second
	ctx, cancel := context.WithTimeoutCause(ctx, pt.dur+2*p+2*time.Minute, fmt.Errorf("scale point %s timed out", pt.short()))
	defer cancel()
	a, bs, _, err := f.leaderAndStandbys(ctx, pt.specs(), pt.standbys, true)
	if err != nil {
		return err
	}
	ms := append([]*member{a}, bs...)
	// At least a second after the standbys are in place, on a period.
	start := time.Now().Add(time.Second).Truncate(p).Add(p)
	end := start.Add(pt.dur)
	const edge = 500 * time.Millisecond
	if err := sleepUntil(ctx, start.Add(-edge)); err != nil {
		return err
	}
	s0, err := e.snapshot(ms)
	if err != nil {
		return fmt.Errorf("%s %s: %w", impl, pt.short(), err)
	}
	if err := sleepUntil(ctx, end.Add(-edge)); err != nil {
		return err
	}
	s1, err := e.snapshot(ms)
	if err != nil {
		return fmt.Errorf("%s %s: %w%s", impl, pt.short(), err, f.diag())
	}
	// The window's last slots normally arrived already; wait at most 2 s
	// more for late ones (a late one that never comes counts as missing).
	wctx, wcancel := context.WithDeadline(ctx, end.Add(2*time.Second))
	ts, _ := awaitTriggers(wctx, f.rec, "the window's slots", func(ts []trigger) bool { return inWindow(ts, start, end) >= pt.expected() })
	wcancel()
	if ctx.Err() != nil {
		return context.Cause(ctx)
	}
	for _, t := range ts {
		if t.App != a.name {
			return fmt.Errorf("%s %s: standby %s triggered %s at slot %s", impl, pt.short(), t.App, t.Job, t.Slot)
		}
	}
	k := ck(i, "")
	if err := delays(ts, start, end, pt.expected(), fig, k); err != nil {
		return fmt.Errorf("%s %s: %w%s", impl, pt.short(), err, f.diag())
	}
	windowFigures(s0, s1, fig[k+"slots"], fig, k)
	logKinds(fmt.Sprintf("%s leader, %s, Consul requests per slot fired, by kind", impl, pt.short()), s0.kinds, s1.kinds, fig[k+"slots"])
	if impl == implLC {
		lead, err := claimLead(ctx, a.admin)
		if err != nil {
			logf("  warning: %s %s: %v (the lead time shows as —)", impl, pt.short(), err)
		}
		fig[k+"lead_ms"] = lead * 1000
	}
	return nil
}

// inWindow counts the distinct slots in [from, to) among ts.
func inWindow(ts []trigger, from, to time.Time) int {
	seen := map[string]bool{}
	for _, t := range ts {
		if !t.Slot.Before(from) && t.Slot.Before(to) {
			seen[t.Job+"@"+t.Slot.String()] = true
		}
	}
	return len(seen)
}

// windowFigures sets the figures read between the two snapshots; fired is
// the slots fired in the window.
func windowFigures(s0, s1 snap, fired float64, fig figures, k string) {
	el := s1.at.Sub(s0.at)
	lead := s1.counts[0].sub(s0.counts[0]).total
	fig[k+"req_per_slot"] = float64(lead) / fired
	fig[k+"raft_per_slot"] = float64(s1.raft-s0.raft) / fired
	fig[k+"cpu"] = float64(s1.usage[0].ticks-s0.usage[0].ticks) / clockTicks / el.Seconds() * 100
	fig[k+"rss"] = float64(s1.usage[0].rssKB) / 1024
	fig[k+"load_leader"] = perMin(lead, el)
	var rss, load []float64
	total := lead
	for j := 1; j < len(s1.usage); j++ {
		rss = append(rss, float64(s1.usage[j].rssKB)/1024)
		d := s1.counts[j].sub(s0.counts[j]).total
		load = append(load, perMin(d, el))
		total += d
	}
	fig[k+"rss_standby"] = median(rss)
	fig[k+"load_standby"] = median(load)
	fig[k+"load_total"] = perMin(total, el)
}

// leadMetric is the gauge in which leadercron reports the early-claim
// lead time it uses: how long before a slot is due it sends the claim.
const leadMetric = "leadercron_claim_lead_seconds"

// claimLead scrapes a leadercron sidecar's admin /metrics for leadMetric
// and returns its value in seconds, or NaN when the sidecar does not
// export it (a build before the early claim). Should the gauge ever carry
// labels (one series per job, say), the largest value is returned.
func claimLead(ctx context.Context, admin string) (float64, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+admin+"/metrics", nil)
	if err != nil {
		return math.NaN(), fmt.Errorf("scrape /metrics: %w", err)
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		return math.NaN(), fmt.Errorf("scrape /metrics: %w", err)
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		return math.NaN(), fmt.Errorf("scrape /metrics: %s", res.Status)
	}
	v, err := parseGauge(bufio.NewScanner(res.Body), leadMetric)
	if err != nil {
		return math.NaN(), fmt.Errorf("scrape /metrics: %w", err)
	}
	return v, nil
}

// parseGauge returns the largest sample of metric name in a Prometheus
// text exposition, or NaN when there is none.
func parseGauge(sc *bufio.Scanner, name string) (float64, error) {
	v := math.NaN()
	for sc.Scan() {
		line := sc.Text()
		rest, ok := strings.CutPrefix(line, name)
		if !ok || (rest != "" && rest[0] != ' ' && rest[0] != '{') {
			continue // a comment, another metric, or one whose name only starts with name
		}
		if strings.HasPrefix(rest, "{") {
			j := strings.LastIndexByte(rest, '}')
			if j < 0 {
				return math.NaN(), fmt.Errorf("malformed sample %q", line)
			}
			rest = rest[j+1:]
		}
		fs := strings.Fields(rest)
		if len(fs) == 0 {
			return math.NaN(), fmt.Errorf("sample without a value %q", line)
		}
		x, err := strconv.ParseFloat(fs[0], 64)
		if err != nil {
			return math.NaN(), fmt.Errorf("sample %q: %w", line, err)
		}
		if math.IsNaN(v) || x > v {
			v = x
		}
	}
	if err := sc.Err(); err != nil {
		return math.NaN(), fmt.Errorf("read the exposition: %w", err)
	}
	return v, nil
}
