package main

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/leadercron/leadercron/internal/consultest"
	"github.com/leadercron/leadercron/internal/testkit"
)

const (
	implLC    = "leadercron"
	implNaive = "naive"
)

// figures are one implementation's measurements in one run, by key.
type figures map[string]float64

// env is what every scenario shares: the agent, the binaries, settings.
type env struct {
	agent        *consultest.Agent
	consul       *api.Client // straight to the agent, for the lock watchers
	lcBin, nvBin string
	tr           *http.Transport
	ttl, delay   time.Duration
	verbose      bool

	mu  sync.Mutex
	seq int
}

// fleet is the sidecars of one implementation in one scenario, sharing a
// lock key, each with its own recording app and counting proxy.
type fleet struct {
	e       *env
	impl    string
	prefix  string
	rec     *testkit.History // the triggers the apps received
	locks   *testkit.History // the lock key's holders
	stopW   context.CancelFunc
	members []*member
}

type member struct {
	name  string
	p     *testkit.Process
	px    *proxy
	app   *testkit.App
	admin string // leadercron's admin address (LEADERCRON_LISTEN), serving /metrics
}

func (e *env) newFleet(impl, scenario string) *fleet {
	e.mu.Lock()
	e.seq++
	prefix := fmt.Sprintf("bench/%s-%s-%d", scenario, impl, e.seq)
	e.mu.Unlock()
	f := &fleet{e: e, impl: impl, prefix: prefix, rec: testkit.NewHistory(), locks: testkit.NewHistory()}
	ctx, cancel := context.WithCancel(context.Background())
	done := testkit.WatchLock(ctx, f.locks, prefix+"/leader", e.consul)
	f.stopW = func() { cancel(); <-done }
	return f
}

// add starts one sidecar (with its app and proxy) running jobs.
func (f *fleet) add(name string, jobs map[string]string) (*member, error) {
	a, err := testkit.NewApp(name, f.rec, testkit.StampArrival())
	if err != nil {
		return nil, err
	}
	px, err := startProxy(f.e.agent.Addr, f.e.tr)
	if err != nil {
		a.Down()
		return nil, err
	}
	m := &member{name: name, px: px, app: a}
	base := []string{"PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME"), "CONSUL_HTTP_ADDR=" + px.addr}
	id := f.impl + "-" + name
	if f.impl == implLC {
		var ports []int
		ports, err = testkit.FreePorts(1)
		if err != nil {
			m.close()
			return nil, err
		}
		m.admin = fmt.Sprintf("127.0.0.1:%d", ports[0])
		envv := append(base,
			"LEADERCRON_SERVICE=bench", "LEADERCRON_KV_PREFIX="+f.prefix, "LEADERCRON_ID="+id,
			"LEADERCRON_APP_URL="+a.URL, "LEADERCRON_LISTEN="+m.admin,
			"LEADERCRON_SESSION_TTL="+f.e.ttl.String(), "LEADERCRON_LOCK_DELAY="+f.e.delay.String(),
			"LEADERCRON_LOG_LEVEL=warn")
		for job, spec := range jobs {
			envv = append(envv, "LEADERCRON_JOB_"+strings.ToUpper(job)+"="+spec)
		}
		m.p, err = testkit.StartProcess(testkit.Command{Name: id, Path: f.e.lcBin, Env: envv, Keep: 64 << 10})
	} else {
		args := []string{"-key", f.prefix + "/leader", "-id", id, "-ttl", f.e.ttl.String(), "-lock-delay", f.e.delay.String(),
			"-app-url", a.URL, "-log-level", "warn"}
		for job, spec := range jobs {
			args = append(args, "-job", job+"="+spec)
		}
		m.p, err = testkit.StartProcess(testkit.Command{Name: id, Path: f.e.nvBin, Args: args, Env: base, Keep: 64 << 10})
	}
	if err != nil {
		m.close()
		return nil, err
	}
	f.members = append(f.members, m)
	return m, nil
}

func (m *member) close() {
	if m.p != nil {
		m.p.Stop(10 * time.Second)
	}
	m.px.close()
	m.app.Down()
}

// close stops every sidecar, gracefully, all at once.
func (f *fleet) close() {
	var wg sync.WaitGroup
	for _, m := range f.members {
		wg.Add(1)
		go func() { defer wg.Done(); m.close() }()
	}
	wg.Wait()
	f.stopW()
	if f.e.verbose {
		for _, m := range f.members {
			if out := m.p.Output(); out != "" {
				fmt.Fprintf(os.Stderr, "--- %s output:\n%s\n", m.p.Name, out)
			}
		}
	}
}

// diag says what the fleet's processes printed, for error messages.
func (f *fleet) diag() string {
	var b strings.Builder
	for _, m := range f.members {
		out := m.p.Output()
		if len(out) > 2000 {
			out = out[len(out)-2000:]
		}
		fmt.Fprintf(&b, "\n--- %s (exit %d):\n%s", m.p.Name, m.p.ExitCode(), out)
	}
	return b.String()
}

// awaitHolder waits for the lock to be held by a session; returns it.
func (f *fleet) awaitHolder(ctx context.Context) (string, error) {
	c, _, err := awaitLock(ctx, f.locks, "a lock holder", 0, func(c lockChange) bool { return c.Session != "" })
	if err != nil {
		return "", fmt.Errorf("%s: %w%s", f.impl, err, f.diag())
	}
	return c.Session, nil
}

// awaitStandby waits until each member has a blocking query in flight.
func (f *fleet) awaitStandby(ctx context.Context, ms ...*member) error {
	for _, m := range ms {
		for m.px.waiting.Load() == 0 {
			select {
			case <-ctx.Done():
				return fmt.Errorf("%s: standby %s never sent a blocking query%s", f.impl, m.name, f.diag())
			case <-m.p.Exited():
				return fmt.Errorf("%s: standby %s exited%s", f.impl, m.name, f.diag())
			case <-time.After(20 * time.Millisecond): // polling a counter of another process's requests
			}
		}
	}
	return nil
}

func (f *fleet) awaitTrigger(ctx context.Context, from string, after time.Time) (trigger, error) {
	ts, err := awaitTriggers(ctx, f.rec, "a trigger from "+from, func(ts []trigger) bool {
		return slices.ContainsFunc(ts, func(t trigger) bool { return t.App == from && t.At.After(after) })
	})
	if err != nil {
		return trigger{}, fmt.Errorf("%s: %w%s", f.impl, err, f.diag())
	}
	i := slices.IndexFunc(ts, func(t trigger) bool { return t.App == from && t.At.After(after) })
	return ts[i], nil
}

// tickJob is one job due every second.
var tickJob = map[string]string{"tick": "* * * * * *"}

// sleepUntil waits for a wall-clock instant that bounds a measurement window.
func sleepUntil(ctx context.Context, t time.Time) error {
	select {
	case <-time.After(time.Until(t)):
		return nil
	case <-ctx.Done():
		return context.Cause(ctx)
	}
}

// delays summarises the triggers whose slot lies in [from, to): delay
// percentiles in ms, slot count, and missing and duplicate slots given the
// expected count.
func delays(ts []trigger, from, to time.Time, expected int, fig figures, prefix string) error {
	seen := map[string]bool{}
	first := map[time.Time]float64{} // per slot instant: the earliest delay among the jobs due then
	var ds []float64
	dupes := 0
	for _, t := range ts {
		if t.Slot.Before(from) || !t.Slot.Before(to) {
			continue
		}
		k := t.Job + "@" + t.Slot.String()
		if seen[k] {
			dupes++
			continue
		}
		seen[k] = true
		d := float64(t.At.Sub(t.Slot).Microseconds()) / 1000
		ds = append(ds, d)
		if f, ok := first[t.Slot]; !ok || d < f {
			first[t.Slot] = d
		}
	}
	if len(ds) == 0 {
		return errors.New("no trigger arrived in the measurement window")
	}
	slices.Sort(ds)
	fig[prefix+"p50"] = quantile(ds, 0.5)
	fig[prefix+"p99"] = quantile(ds, 0.99)
	fig[prefix+"max"] = ds[len(ds)-1]
	fig[prefix+"slots"] = float64(len(ds))
	fig[prefix+"missing"] = float64(expected - len(ds))
	fig[prefix+"dupes"] = float64(dupes)
	fs := slices.Sorted(maps.Values(first))
	fig[prefix+"first_p50"] = quantile(fs, 0.5)
	fig[prefix+"first_p99"] = quantile(fs, 0.99)
	return nil
}

func quantile(sorted []float64, q float64) float64 {
	i := int(math.Ceil(q*float64(len(sorted)))) - 1
	return sorted[max(i, 0)]
}

func perMin(n int64, d time.Duration) float64 { return float64(n) / d.Minutes() }

// idle runs an idle leader and standby (one hourly job) and measures
// their memory, CPU and Consul requests over dur.
func (e *env) idle(ctx context.Context, impl string, dur time.Duration, fig figures) error {
	f := e.newFleet(impl, "idle")
	defer f.close()
	ctx, cancel := context.WithTimeoutCause(ctx, dur+60*time.Second, errors.New("idle scenario timed out"))
	defer cancel()
	a, b, _, err := f.leaderAndStandby(ctx, map[string]string{"hourly": "0 0 * * * *"}, false)
	if err != nil {
		return err
	}
	if err := sleepUntil(ctx, time.Now().Add(time.Second)); err != nil { // let start-up work finish
		return err
	}
	start := time.Now()
	ua, err1 := readUsage(a.p.Pid())
	ub, err2 := readUsage(b.p.Pid())
	ca, cb := a.px.counts(), b.px.counts()
	if err := errors.Join(err1, err2); err != nil {
		return fmt.Errorf("%s idle: %w", impl, err)
	}
	if err := sleepUntil(ctx, start.Add(dur)); err != nil {
		return err
	}
	el := time.Since(start)
	ua2, err1 := readUsage(a.p.Pid())
	ub2, err2 := readUsage(b.p.Pid())
	if err := errors.Join(err1, err2); err != nil {
		return fmt.Errorf("%s idle: %w%s", impl, err, f.diag())
	}
	da, db := a.px.counts().sub(ca), b.px.counts().sub(cb)
	fig["idle_rss_leader"] = float64(ua2.rssKB) / 1024
	fig["idle_rss_standby"] = float64(ub2.rssKB) / 1024
	fig["idle_cpu_leader"] = float64(ua2.ticks-ua.ticks) / clockTicks / el.Seconds() * 100
	fig["idle_cpu_standby"] = float64(ub2.ticks-ub.ticks) / clockTicks / el.Seconds() * 100
	fig["idle_load_leader"] = perMin(da.total, el)
	fig["idle_load_standby"] = perMin(db.total, el)
	if db.blocking > 0 {
		fig["standby_per_wait"] = float64(db.total) / float64(db.blocking)
	}
	return nil
}

// leaderAndStandby starts "a" running jobs and waits until it holds the
// lock (returning its session), then starts "b", waits (if fires) for a
// trigger from "a", and waits until "b" is a standby.
func (f *fleet) leaderAndStandby(ctx context.Context, jobs map[string]string, fires bool) (a, b *member, session string, err error) {
	a, bs, session, err := f.leaderAndStandbys(ctx, jobs, 1, fires)
	if err != nil {
		return nil, nil, "", err
	}
	return a, bs[0], session, nil
}

// leaderAndStandbys is leaderAndStandby with n standbys: "b" when n is 1,
// else "b00", "b01", ….
func (f *fleet) leaderAndStandbys(ctx context.Context, jobs map[string]string, n int, fires bool) (a *member, bs []*member, session string, err error) {
	if a, err = f.add("a", jobs); err != nil {
		return nil, nil, "", err
	}
	if session, err = f.awaitHolder(ctx); err != nil {
		return nil, nil, "", err
	}
	for i := range n {
		name := "b"
		if n > 1 {
			name = fmt.Sprintf("b%02d", i)
		}
		b, err := f.add(name, jobs)
		if err != nil {
			return nil, nil, "", err
		}
		bs = append(bs, b)
	}
	if fires {
		if _, err := f.awaitTrigger(ctx, "a", time.Time{}); err != nil {
			return nil, nil, "", err
		}
	}
	if err := f.awaitStandby(ctx, bs...); err != nil {
		return nil, nil, "", err
	}
	return a, bs, session, nil
}

// handover measures a graceful handover: SIGTERM of an idle leader, until
// the standby holds the lock and fires its first trigger.
func (e *env) handover(ctx context.Context, impl string, fig figures) error {
	f := e.newFleet(impl, "handover")
	defer f.close()
	ctx, cancel := context.WithTimeoutCause(ctx, 90*time.Second, errors.New("handover scenario timed out"))
	defer cancel()
	a, _, sa, err := f.leaderAndStandby(ctx, tickJob, true)
	if err != nil {
		return err
	}
	// Half-way between two slots of the 1 s job, so that neither the
	// old leader's last slot nor the new one's first is in the race.
	if err := sleepUntil(ctx, time.Now().Truncate(time.Second).Add(1500*time.Millisecond)); err != nil {
		return err
	}
	from := len(f.locks.Events())
	t0 := time.Now()
	if err := a.p.Signal(syscall.SIGTERM); err != nil {
		return fmt.Errorf("%s handover: signal: %w", impl, err)
	}
	rel, i, err := awaitLock(ctx, f.locks, "the release", from, func(c lockChange) bool { return c.Session != sa })
	if err != nil {
		return fmt.Errorf("%s handover: %w%s", impl, err, f.diag())
	}
	held, _, err := awaitLock(ctx, f.locks, "the standby holding the lock", i, func(c lockChange) bool { return c.Session != "" && c.Session != sa })
	if err != nil {
		return fmt.Errorf("%s handover: %w%s", impl, err, f.diag())
	}
	if _, err := f.awaitTrigger(ctx, "b", t0); err != nil {
		return err
	}
	select {
	case <-a.p.Exited():
	case <-ctx.Done():
		return fmt.Errorf("%s handover: old leader did not exit%s", impl, f.diag())
	}
	if a.p.ExitCode() != 0 {
		return fmt.Errorf("%s handover: old leader exited %d%s", impl, a.p.ExitCode(), f.diag())
	}
	fig["handover_term_release"] = ms(rel.At.Sub(t0))
	fig["handover_release_held"] = ms(held.At.Sub(rel.At))
	fig["handover_term_held"] = ms(held.At.Sub(t0))
	ts := triggers(f.rec)
	fig["handover_missed"] = slotGap(ts)
	return nil
}

// failover measures SIGKILL of the leader until the standby holds the lock.
func (e *env) failover(ctx context.Context, impl string, fig figures) error {
	f := e.newFleet(impl, "failover")
	defer f.close()
	bound := 2*e.ttl + e.delay
	ctx, cancel := context.WithTimeoutCause(ctx, bound+90*time.Second, errors.New("failover scenario timed out"))
	defer cancel()
	a, _, sa, err := f.leaderAndStandby(ctx, tickJob, true)
	if err != nil {
		return err
	}
	from := len(f.locks.Events())
	t0 := time.Now()
	a.p.Kill()
	held, _, err := awaitLock(ctx, f.locks, "the standby holding the lock", from, func(c lockChange) bool { return c.Session != "" && c.Session != sa })
	if err != nil {
		return fmt.Errorf("%s failover: %w%s", impl, err, f.diag())
	}
	tr, err := f.awaitTrigger(ctx, "b", t0)
	if err != nil {
		return err
	}
	fig["failover_held"] = held.At.Sub(t0).Seconds()
	fig["failover_trigger"] = tr.At.Sub(t0).Seconds()
	ts := triggers(f.rec)
	fig["failover_missed"] = slotGap(ts)
	return nil
}

// slotGap is how many slots of the 1 s job fell between the last one app
// "a" received and the first one app "b" received: slots nobody fired
// (negative when b fired slots a had fired too).
func slotGap(ts []trigger) float64 {
	var lastA, firstB time.Time
	for _, t := range ts {
		if t.App == "a" && t.Slot.After(lastA) {
			lastA = t.Slot
		}
		if t.App == "b" && (firstB.IsZero() || t.Slot.Before(firstB)) {
			firstB = t.Slot
		}
	}
	return firstB.Sub(lastA).Seconds() - 1
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func median(v []float64) float64 {
	if len(v) == 0 {
		return math.NaN()
	}
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// calibrate measures Consul itself, to explain the figures above: the
// round trip of one KV write transaction (like a slot claim) straight to
// the agent and through a counting proxy, and how long a burst of n
// concurrent ones takes to complete (n slots due in the same second).
func (e *env) calibrate(ctx context.Context, bursts map[string]int, fig figures) error {
	px, err := startProxy(e.agent.Addr, e.tr)
	if err != nil {
		return err
	}
	defer px.close()
	direct, err := pooledClient(e.agent.Addr)
	if err != nil {
		return err
	}
	proxied, err := pooledClient(px.addr)
	if err != nil {
		return err
	}
	write := func(c *api.Client, key string) (time.Duration, error) {
		start := time.Now()
		ok, _, _, err := c.Txn().Txn(api.TxnOps{{KV: &api.KVTxnOp{Verb: api.KVSet, Key: key, Value: []byte(start.String())}}},
			(&api.QueryOptions{}).WithContext(ctx))
		if err == nil && !ok {
			err = errors.New("transaction rolled back")
		}
		return time.Since(start), err
	}
	for name, c := range map[string]*api.Client{"cal_direct": direct, "cal_proxy": proxied} {
		var ds []float64
		for i := range 200 {
			d, err := write(c, fmt.Sprintf("bench/calibrate/%s/%d", name, i%10))
			if err != nil {
				return fmt.Errorf("calibrate: %w", err)
			}
			ds = append(ds, ms(d))
		}
		fig[name] = median(ds)
	}
	for name, n := range bursts {
		start := time.Now()
		errs := make([]error, n)
		var wg sync.WaitGroup
		for i := range n {
			wg.Add(1)
			go func() { defer wg.Done(); _, errs[i] = write(direct, fmt.Sprintf("bench/calibrate/burst/%d", i)) }()
		}
		wg.Wait()
		fig[name] = ms(time.Since(start))
		if err := errors.Join(errs...); err != nil {
			return fmt.Errorf("calibrate burst: %w", err)
		}
	}
	return nil
}

func pooledClient(addr string) (*api.Client, error) {
	cfg := api.DefaultConfig()
	cfg.Address, cfg.Token, cfg.TokenFile = addr, "", ""
	c, err := api.NewClient(cfg)
	if err != nil {
		return nil, fmt.Errorf("consul client: %w", err)
	}
	return c, nil
}

// logKinds prints the requests counted between two snapshots, by kind,
// per slot fired.
func logKinds(title string, before, after map[string]int64, slots float64) {
	keys := slices.Sorted(maps.Keys(after))
	var b strings.Builder
	for _, k := range keys {
		if n := after[k] - before[k]; n > 0 {
			fmt.Fprintf(&b, "\n    %-45s %6d  (%.2f per slot)", k, n, float64(n)/slots)
		}
	}
	logf("  %s:%s", title, b.String())
}
