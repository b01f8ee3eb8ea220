package faults

import (
	"strconv"
	"testing"
	"time"

	"github.com/leadercron/leadercron/internal/consultest"
	"github.com/leadercron/leadercron/internal/testkit"
)

const (
	lockKey   = "leadercron/faults/leader"
	ttl       = 2 * time.Second
	lockDelay = 2 * time.Second
	// crashBound is the brief's takeover bound after a crash:
	// 2×TTL + lock-delay + a second.
	crashBound = 2*ttl + lockDelay + time.Second
)

// jobs are the schedules every process fleet runs: dozens of slots per
// scenario.
var jobs = map[string]string{"tick": "* * * * * *", "every-two": "*/2 * * * * *"}

// route is how the sidecars reach Consul.
type route int

const (
	direct    route = iota // straight to the agent
	blackhole              // through a TCP proxy each (Proxy: Blackhole/Heal)
	faulty                 // through an HTTP fault proxy each (FaultProxy)
	cluster                // to the servers of a 3-server cluster
)

// fleet is three sidecar processes with their apps, one Consul, and the
// history they share.
type fleet struct {
	t       *testing.T
	h       *history
	procs   []*proc
	apps    []*testkit.App
	proxies []*consultest.Proxy
	faults  []*consultest.FaultProxy
	cl      *consultest.Cluster
	envs    []map[string]string
	started time.Time
}

type fleetOpts struct {
	route route
	env   map[string]string // extra environment for every sidecar
	// addrs picks, for cluster fleets, the server each sidecar talks to.
	addrs func(cl *consultest.Cluster, i int) string
	// app configures every recording app before it serves.
	app []testkit.AppOption
}

func newFleet(t *testing.T, o fleetOpts) *fleet {
	t.Helper()
	f := &fleet{t: t, h: testkit.NewHistory()}
	var watch []string
	var agent string
	if o.route == cluster {
		f.cl = consultest.StartCluster(t)
		for _, s := range f.cl.Servers {
			watch = append(watch, s.Addr)
		}
	} else {
		agent = consultest.Start(t).Addr
		watch = []string{agent}
	}
	watchLock(t, watch, lockKey, f.h)
	for i := range 3 {
		id := string(rune('a' + i))
		app := testkit.StartApp(t, "app-"+id, f.h, o.app...)
		addr := agent
		switch o.route {
		case blackhole:
			p := consultest.NewProxy(t, agent)
			f.proxies = append(f.proxies, p)
			addr = p.Addr
		case faulty:
			p := consultest.NewFaultProxy(t, agent)
			f.faults = append(f.faults, p)
			addr = p.Addr
		case cluster:
			addr = o.addrs(f.cl, i)
		}
		env := map[string]string{
			"CONSUL_HTTP_ADDR":           addr,
			"LEADERCRON_APP_URL":         app.URL,
			"LEADERCRON_SESSION_TTL":     ttl.String(),
			"LEADERCRON_LOCK_DELAY":      lockDelay.String(),
			"LEADERCRON_DRAIN_INTERVAL":  "100ms",
			"LEADERCRON_DRAIN_TIMEOUT":   "10s",
			"LEADERCRON_TRIGGER_TIMEOUT": "5s",
		}
		for name, spec := range jobs {
			env["LEADERCRON_JOB_"+envName(name)] = spec
		}
		for k, v := range o.env {
			env[k] = v
		}
		f.apps = append(f.apps, app)
		f.envs = append(f.envs, env)
		f.procs = append(f.procs, startProc(t, f.h, id, env))
	}
	f.started = time.Now()
	return f
}

func envName(job string) string {
	b := []byte(job)
	for i, c := range b {
		switch {
		case c == '-':
			b[i] = '_'
		case c >= 'a' && c <= 'z':
			b[i] = c - 'a' + 'A'
		}
	}
	return string(b)
}

// leader waits until some sidecar has sent n triggers since since, and
// returns the index of the one that sent the latest.
func (f *fleet) leader(n int, since time.Time, timeout time.Duration) int {
	f.t.Helper()
	evs := f.h.WaitFor(f.t, timeout, strconv.Itoa(n)+" triggers", triggersSince(since, n))
	for i := len(evs) - 1; i >= 0; i-- {
		if evs[i].Kind == "trigger" {
			return int(evs[i].Sidecar[0] - 'a')
		}
	}
	return -1
}

// warm waits for a leader to trigger steadily and returns it and the time
// from which slots are expected.
func (f *fleet) warm() (int, time.Time) {
	f.t.Helper()
	l := f.leader(3, f.started, 30*time.Second)
	return l, time.Now()
}

// settle waits for n triggers from anyone after since (the fleet is back
// to work), then returns the time up to which slots are expected.
func (f *fleet) settle(since time.Time, n int, timeout time.Duration) time.Time {
	f.t.Helper()
	f.h.WaitFor(f.t, timeout, "the fleet to trigger again", triggersSince(since, n))
	return time.Now().Add(-slotLatency)
}

// spec returns the default check for a process fleet.
func (f *fleet) spec(from, to time.Time, faultAt time.Time, excused ...window) checkSpec {
	return checkSpec{jobs: jobs, from: from, to: to, faultAt: faultAt, excused: excused}
}

// sleep waits d; the scenario's faults are timed, nothing to await.
func sleep(d time.Duration) { time.Sleep(d) }

// restart starts sidecar i again, with the same identity and environment,
// after it exited.
func (f *fleet) restart(i int) {
	f.t.Helper()
	f.procs[i] = startProc(f.t, f.h, f.procs[i].id, f.envs[i])
}

// lockTakeover returns how long after at the lock watcher first saw a
// sidecar other than not take the lock, or -1.
func lockTakeover(evs []event, at time.Time, not string) time.Duration {
	for _, e := range evs {
		if e.Kind == "lock" && e.At.After(at) && e.Session != "" && e.Sidecar != not {
			return e.At.Sub(at)
		}
	}
	return -1
}

// lastTrigger returns the arrival of id's last trigger with token, or the
// zero time.
func lastTrigger(evs []event, id string, token uint64) time.Time {
	var t time.Time
	for _, e := range evs {
		if e.Kind == "trigger" && e.Sidecar == id && e.Token == token {
			t = e.At
		}
	}
	return t
}

// tokenOf returns the token of id's latest trigger before at.
func tokenOf(evs []event, id string, at time.Time) uint64 {
	var tok uint64
	for _, e := range evs {
		if e.Kind == "trigger" && e.Sidecar == id && e.At.Before(at) {
			tok = e.Token
		}
	}
	return tok
}
