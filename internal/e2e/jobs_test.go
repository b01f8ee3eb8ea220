package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/leadercron/leadercron/internal/consultest"
	"github.com/leadercron/leadercron/internal/fate"
	"github.com/leadercron/leadercron/internal/kvlayout"
	"github.com/leadercron/leadercron/internal/ledger"
	"github.com/leadercron/leadercron/internal/testkit"
)

// This file tests issue 4's job semantics end to end: the built binary,
// a real Consul, and a scriptable app.

const jobsPrefix = "leadercron/e2e"

func jobsEnv(agent *consultest.Agent, app *testkit.App, jobs map[string]string) map[string]string {
	env := map[string]string{
		"CONSUL_HTTP_ADDR":           agent.Addr,
		"LEADERCRON_APP_URL":         app.URL,
		"LEADERCRON_SESSION_TTL":     ttl.String(),
		"LEADERCRON_LOCK_DELAY":      lockDelay.String(),
		"LEADERCRON_DRAIN_INTERVAL":  "100ms",
		"LEADERCRON_DRAIN_TIMEOUT":   "15s",
		"LEADERCRON_TRIGGER_TIMEOUT": "5s",
	}
	for k, v := range jobs {
		env["LEADERCRON_JOB_"+k] = v
	}
	return env
}

// statusOf reads a sidecar's /status.
func statusOf(t *testing.T, s *sidecar) map[string]any {
	t.Helper()
	resp, err := http.Get("http://" + s.Listen + "/status")
	if err != nil {
		t.Fatalf("status of %s: %v", s.ID, err)
	}
	defer resp.Body.Close()
	var v map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&v); err != nil {
		t.Fatalf("status of %s: %v", s.ID, err)
	}
	return v
}

func waitStatus(t *testing.T, s *sidecar, timeout time.Duration, what string, cond func(map[string]any) bool) map[string]any {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		if resp, err := http.Get("http://" + s.Listen + "/status"); err == nil {
			var v map[string]any
			err := json.NewDecoder(resp.Body).Decode(&v)
			resp.Body.Close()
			if err == nil && cond(v) {
				return v
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: timed out after %s waiting for %s", s.ID, timeout, what)
		}
		time.Sleep(50 * time.Millisecond) // polling another process's endpoint
	}
}

func isLeader(v map[string]any) bool { b, _ := v["leader"].(bool); return b }

func historyOf(t *testing.T, c *api.Client, job string) []kvlayout.Entry {
	t.Helper()
	list, err := ledger.New(c, jobsPrefix).History(context.Background(), job)
	if err != nil {
		t.Fatalf("history of %s: %v", job, err)
	}
	return list
}

func waitHistory(t *testing.T, c *api.Client, job string, timeout time.Duration, what string, cond func([]kvlayout.Entry) bool) []kvlayout.Entry {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		list := historyOf(t, c, job)
		if cond(list) {
			return list
		}
		if time.Now().After(deadline) {
			t.Fatalf("history of %s: timed out after %s waiting for %s: %+v", job, timeout, what, list)
		}
		time.Sleep(100 * time.Millisecond) // polling Consul KV
	}
}

func hasEntry(list []kvlayout.Entry, outcome fate.Outcome, reason fate.Reason) bool {
	for _, e := range list {
		if e.Outcome == outcome && e.Reason == reason {
			return true
		}
	}
	return false
}

// TestRetriesOverlapAndGroups: retries resend a 503 with growing attempt
// numbers for the same slot; overlap=forbid skips slots while a run is in
// flight; jobs of one group never run at the same time. Every fate lands
// in the KV history.
func TestRetriesOverlapAndGroups(t *testing.T) {
	agent := consultest.Start(t)
	c := consultest.Client(t, agent.Addr)
	h := newHistory()
	app := testkit.StartApp(t, "app", h)
	app.Script("flaky", func(n int) (int, time.Duration) {
		if n <= 2 {
			return http.StatusServiceUnavailable, 0
		}
		return http.StatusNoContent, 0
	})
	app.Script("slow", func(int) (int, time.Duration) { return http.StatusNoContent, 2500 * time.Millisecond })
	app.Script("ga", func(int) (int, time.Duration) { return http.StatusNoContent, 600 * time.Millisecond })
	app.Script("gb", func(int) (int, time.Duration) { return http.StatusNoContent, 600 * time.Millisecond })
	app.SetGroup("ga", "g")
	app.SetGroup("gb", "g")
	startSidecar(t, "a", jobsEnv(agent, app, map[string]string{
		"FLAKY": "@every 30s retries=3 backoff=200ms",
		"SLOW":  "* * * * * *",
		"GA":    "* * * * * * group=g timeout=3s",
		"GB":    "* * * * * * group=g timeout=3s",
	}))

	evs := h.WaitFor(t, 45*time.Second, "flaky's third attempt and 4 runs of each group job", func(evs []event) bool {
		n := map[string]int{}
		for _, e := range filter(evs, "trigger") {
			n[e.Job]++
		}
		return n["flaky"] >= 3 && n["ga"] >= 4 && n["gb"] >= 4
	})
	var flaky []event
	for _, e := range filter(evs, "trigger") {
		if e.Job == "flaky" {
			flaky = append(flaky, e)
		}
	}
	for i, e := range flaky[:3] {
		if e.Attempt != i+1 || !e.Slot.Equal(flaky[0].Slot) {
			t.Errorf("flaky trigger %d: attempt %d for slot %s; want attempt %d for %s", i+1, e.Attempt, e.Slot, i+1, flaky[0].Slot)
		}
	}
	if gap := flaky[1].At.Sub(flaky[0].At); gap < 200*time.Millisecond {
		t.Errorf("first retry %s after the first attempt, want at least the 200ms backoff", gap)
	}
	if gap := flaky[2].At.Sub(flaky[1].At); gap < 400*time.Millisecond {
		t.Errorf("second retry %s after the first retry, want at least the doubled 400ms backoff", gap)
	}
	if v := app.Violations(); len(v) != 0 {
		t.Errorf("the app saw overlapping runs: %v", v)
	}
	waitHistory(t, c, "flaky", 10*time.Second, "a fired entry after 3 attempts", func(l []kvlayout.Entry) bool {
		return len(l) > 0 && l[0].Outcome == "fired" && l[0].Attempts == 3
	})
	waitHistory(t, c, "slow", 10*time.Second, "a slot skipped for overlap", func(l []kvlayout.Entry) bool {
		return hasEntry(l, "skipped", "overlap")
	})
	checkNoDuplicateSlots(t, evs)
}

// run runs a fleet subcommand of the binary against agent.
func runCmd(t *testing.T, agent *consultest.Agent, jobs map[string]string, args ...string) string {
	t.Helper()
	cmd := exec.Command(binary, args...)
	cmd.Env = []string{"CONSUL_HTTP_ADDR=" + agent.Addr, "LEADERCRON_SERVICE=e2e", "LEADERCRON_ID=operator"}
	for k, v := range jobs {
		cmd.Env = append(cmd.Env, "LEADERCRON_JOB_"+k+"="+v)
	}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		t.Fatalf("leadercron %s: %v\n%s", strings.Join(args, " "), err, out.String())
	}
	return out.String()
}

// TestPauseResumeAndRunNow drives the fleet commands of the binary against
// a running leader.
func TestPauseResumeAndRunNow(t *testing.T) {
	agent := consultest.Start(t)
	c := consultest.Client(t, agent.Addr)
	h := newHistory()
	app := testkit.StartApp(t, "app", h)
	jobs := map[string]string{"TICK": "* * * * * *", "NIGHTLY": "0 0 3 * * *"}
	s := startSidecar(t, "a", jobsEnv(agent, app, jobs))
	h.WaitFor(t, 20*time.Second, "tick firing", func(evs []event) bool { return len(filter(evs, "trigger")) >= 2 })

	runCmd(t, agent, jobs, "pause", "-reason", "e2e", "tick")
	paused := time.Now()
	waitHistory(t, c, "tick", 10*time.Second, "a slot skipped as paused", func(l []kvlayout.Entry) bool {
		return hasEntry(l, "skipped", "paused")
	})
	// /status shows the pause and the KV history too.
	waitStatus(t, s, 5*time.Second, "tick paused with its history in /status", func(v map[string]any) bool {
		jobs, _ := v["jobs"].([]any)
		for _, j := range jobs {
			m, _ := j.(map[string]any)
			hist, _ := m["history"].([]any)
			if m["name"] == "tick" && m["paused"] == true && len(hist) > 0 {
				first, _ := hist[0].(map[string]any)
				return first["outcome"] == "skipped" && first["reason"] == "paused"
			}
		}
		return false
	})
	// A slot claimed before the pause was written may still be in
	// flight; after two more seconds nothing fires.
	time.Sleep(2 * time.Second) // let slots pass while paused: time is the subject here
	quiet := time.Now()
	time.Sleep(2 * time.Second)
	for _, e := range filter(func() []event { evs, _ := h.Snapshot(); return evs }(), "trigger") {
		if e.Job == "tick" && e.At.After(quiet) {
			t.Errorf("tick fired at %s while paused (paused at %s)", e.At.Format("15:04:05.000"), paused.Format("15:04:05.000"))
		}
	}

	runCmd(t, agent, jobs, "resume", "tick")
	resumed := time.Now()
	h.WaitFor(t, 10*time.Second, "tick firing again", func(evs []event) bool {
		for _, e := range filter(evs, "trigger") {
			if e.Job == "tick" && e.At.After(resumed) {
				return true
			}
		}
		return false
	})

	out := runCmd(t, agent, jobs, "run", "nightly")
	h.WaitFor(t, 10*time.Second, "the run-now of nightly", func(evs []event) bool {
		for _, e := range filter(evs, "trigger") {
			if e.Job == "nightly" {
				return true
			}
		}
		return false
	})
	// It fires once: give the leader time to fire it twice if it would.
	time.Sleep(2 * time.Second)
	evs, _ := h.Snapshot()
	n := 0
	for _, e := range filter(evs, "trigger") {
		if e.Job == "nightly" {
			n++
		}
	}
	if n != 1 {
		t.Errorf("nightly fired %d times for one run request (%s), want 1", n, strings.TrimSpace(out))
	}
	waitHistory(t, c, "nightly", 10*time.Second, "the run-now recorded", func(l []kvlayout.Entry) bool {
		return len(l) == 1 && l[0].RunNow && l[0].Outcome == "fired"
	})

	var status struct {
		Jobs []struct {
			Name    string           `json:"name"`
			History []kvlayout.Entry `json:"history"`
		} `json:"jobs"`
	}
	raw := runCmd(t, agent, jobs, "status", "-json")
	if err := json.Unmarshal([]byte(raw), &status); err != nil {
		t.Fatalf("status -json: %v\n%s", err, raw)
	}
	found := false
	for _, j := range status.Jobs {
		if j.Name == "tick" && hasEntry(j.History, "skipped", "paused") {
			found = true
		}
	}
	if !found {
		t.Errorf("status -json shows no paused slot of tick:\n%s", raw)
	}
}

func postHandover(t *testing.T, s *sidecar) (map[string]any, time.Duration) {
	t.Helper()
	start := time.Now()
	resp, err := http.Post("http://"+s.Listen+"/handover", "", nil)
	if err != nil {
		t.Fatalf("handover %s: %v", s.ID, err)
	}
	defer resp.Body.Close()
	var v map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&v); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("handover %s: %d %v %v", s.ID, resp.StatusCode, v, err)
	}
	return v, time.Since(start)
}

// TestHandoverEndpoint: POST /handover on a standby answers at once and
// keeps it out of elections; on the leader it drains, releases, and
// answers after; the remaining standby takes over.
func TestHandoverEndpoint(t *testing.T) {
	agent := consultest.Start(t)
	c := consultest.Client(t, agent.Addr)
	h := newHistory()
	testkit.StartLockWatch(t, h, lockKey, c)
	apps := map[string]*testkit.App{}
	sidecars := map[string]*sidecar{}
	for _, id := range []string{"a", "b", "c"} {
		apps[id] = testkit.StartApp(t, "app-"+id, h)
		sidecars[id] = startSidecar(t, id, jobsEnv(agent, apps[id], map[string]string{"TICK": "* * * * * *"}))
	}
	evs := h.WaitFor(t, 20*time.Second, "2 triggers", func(evs []event) bool { return len(filter(evs, "trigger")) >= 2 })
	leaderID := filter(evs, "trigger")[0].Sidecar
	var standbys []string
	for id := range sidecars {
		if id != leaderID {
			standbys = append(standbys, id)
		}
	}
	quitter, heir := sidecars[standbys[0]], sidecars[standbys[1]]

	res, took := postHandover(t, quitter)
	if res["outcome"] != "standby" || took > time.Second {
		t.Errorf("handover of a standby = %v after %s, want standby at once", res, took)
	}
	if st := statusOf(t, quitter); st["handed_over"] != true || st["campaigning"] != false {
		t.Errorf("standby after handover: handed_over %v campaigning %v", st["handed_over"], st["campaigning"])
	}

	apps[leaderID].BusyUntil(time.Now().Add(500 * time.Millisecond))
	res, took = postHandover(t, sidecars[leaderID])
	answered := time.Now()
	t.Logf("POST /handover on the leader answered after %s (app busy for 500ms)", took.Round(time.Millisecond))
	if res["outcome"] != "released" {
		t.Fatalf("handover of the leader = %v, want released", res)
	}
	evs, _ = h.Snapshot()
	drained := false
	for _, e := range filter(evs, "drain") {
		if e.App == "app-"+leaderID && e.At.Before(answered) {
			drained = true
		}
	}
	if !drained || took < 500*time.Millisecond {
		t.Errorf("leader answered the handover after %s; drained before answering: %v", took, drained)
	}
	waitStatus(t, heir, 10*time.Second, "the heir leading", isLeader)
	t.Logf("the heir led %s after the handover answered", time.Since(answered).Round(time.Millisecond))
	old := statusOf(t, sidecars[leaderID])
	if isLeader(old) || old["handed_over"] != true || old["campaigning"] != false {
		t.Errorf("old leader after handover: %v", old)
	}
	if st := statusOf(t, quitter); isLeader(st) {
		t.Errorf("the standby that handed over leads")
	}
	if res, _ := postHandover(t, sidecars[leaderID]); res["outcome"] != "already" {
		t.Errorf("second handover = %v, want already", res)
	}
	// The handed-over sidecars still run until their stop signal, and
	// then exit 0.
	sidecars[leaderID].Signal(t, syscall.SIGTERM)
	if code := sidecars[leaderID].Wait(t, 10*time.Second); code != 0 {
		t.Errorf("handed-over sidecar exited %d, want 0", code)
	}
	checkNoDuplicateSlots(t, evs)
}

// TestCatchUpAcrossDrainingHandover: a slot that falls due while the old
// leader drains is fired late by the new leader, with its own slot time;
// no slot in the run is lost or doubled.
func TestCatchUpAcrossDrainingHandover(t *testing.T) {
	agent := consultest.Start(t)
	c := consultest.Client(t, agent.Addr)
	h := newHistory()
	testkit.StartLockWatch(t, h, lockKey, c)
	apps := map[string]*testkit.App{}
	sidecars := map[string]*sidecar{}
	for _, id := range []string{"a", "b"} {
		apps[id] = testkit.StartApp(t, "app-"+id, h)
		sidecars[id] = startSidecar(t, id, jobsEnv(agent, apps[id], map[string]string{"EVERY3": "*/3 * * * * * catchup=20s"}))
	}
	evs := h.WaitFor(t, 20*time.Second, "2 triggers", func(evs []event) bool { return len(filter(evs, "trigger")) >= 2 })
	leaderID := filter(evs, "trigger")[0].Sidecar
	heirID := "a"
	if leaderID == "a" {
		heirID = "b"
	}
	// The old leader's app keeps reporting a running job for 4s: at
	// least one slot falls due during the drain.
	apps[leaderID].BusyUntil(time.Now().Add(4 * time.Second))
	sidecars[leaderID].Signal(t, syscall.SIGTERM)
	if code := sidecars[leaderID].Wait(t, 15*time.Second); code != 0 {
		t.Fatalf("old leader exited %d", code)
	}
	evs = h.WaitFor(t, 15*time.Second, "3 triggers from the heir", func(evs []event) bool { return triggersBy(evs)[heirID] >= 3 })

	var slots []time.Time
	late := false
	for _, e := range filter(evs, "trigger") {
		s := e.Slot
		slots = append(slots, s)
		if e.Sidecar == heirID && e.At.Sub(s) > time.Second {
			late = true
			t.Logf("heir fired slot %s late by %s", e.Slot, e.At.Sub(s).Round(time.Millisecond))
		}
	}
	for i := 1; i < len(slots); i++ {
		if gap := slots[i].Sub(slots[i-1]); gap != 3*time.Second {
			t.Errorf("slots %s then %s: a gap of %s, want every 3s slot exactly once\n%s", slots[i-1].Format(time.TimeOnly), slots[i].Format(time.TimeOnly), gap, dump(evs))
		}
	}
	if !late {
		t.Errorf("no slot fired late by the heir: the drain did not cover a slot?\n%s", dump(evs))
	}
}

// TestHealthGate: a sidecar whose app is unhealthy does not campaign; once
// healthy it leads; when the app fails its checks while leading it drains
// and releases, and leads again after recovery.
func TestHealthGate(t *testing.T) {
	agent := consultest.Start(t)
	c := consultest.Client(t, agent.Addr)
	h := newHistory()
	testkit.StartLockWatch(t, h, lockKey, c)
	app := testkit.StartApp(t, "app", h)
	app.SetHealthy(false)
	env := jobsEnv(agent, app, map[string]string{"TICK": "* * * * * *"})
	env["LEADERCRON_APP_HEALTH_URL"] = app.URL + "/healthz"
	env["LEADERCRON_APP_HEALTH_INTERVAL"] = "200ms"
	env["LEADERCRON_APP_HEALTH_FAILURES"] = "2"
	s := startSidecar(t, "a", env)

	st := waitStatus(t, s, 10*time.Second, "the first health verdict", func(v map[string]any) bool { return v["app_healthy"] == false })
	if isLeader(st) || st["campaigning"] != false {
		t.Fatalf("unhealthy app, yet leader=%v campaigning=%v", st["leader"], st["campaigning"])
	}
	if pair, _, err := c.KV().Get(lockKey, nil); err != nil || (pair != nil && pair.Session != "") {
		t.Fatalf("lock taken while the app is unhealthy: %+v %v", pair, err)
	}

	app.SetHealthy(true)
	waitStatus(t, s, 10*time.Second, "leading after the app turned healthy", isLeader)
	h.WaitFor(t, 10*time.Second, "a trigger", func(evs []event) bool { return len(filter(evs, "trigger")) >= 1 })

	app.SetHealthy(false)
	turned := time.Now()
	h.WaitFor(t, 10*time.Second, "drain, then the lock released", func(evs []event) bool {
		drained := false
		for _, e := range evs {
			if e.Kind == "drain" && e.At.After(turned) {
				drained = true
			}
			if drained && e.Kind == "lock" && e.Session == "" && e.At.After(turned) {
				return true
			}
		}
		return false
	})
	if st := statusOf(t, s); isLeader(st) || st["app_healthy"] != false {
		t.Errorf("after the app failed: %v", st)
	}
	app.SetHealthy(true)
	waitStatus(t, s, 10*time.Second, "leading again after recovery", isLeader)
}

// TestHandoverWaitsForRunsOfALostTerm: a leader cut off from Consul loses
// its lease while a run it sent is still going; POST /handover on it (now
// a standby) answers only after that run ended, so that a preStop hook
// waiting on it protects the run.
func TestHandoverWaitsForRunsOfALostTerm(t *testing.T) {
	// The app's work: well past the lease's end after the cut (1.6 s) and
	// the /status calls that see it (each waits up to 2 s for Consul).
	const runFor = 8 * time.Second
	agent := consultest.Start(t)
	proxy := consultest.NewProxy(t, agent.Addr)
	h := newHistory()
	app := testkit.StartApp(t, "app-a", h)
	app.Script("slow", func(n int) (int, time.Duration) {
		if n == 1 {
			return http.StatusNoContent, runFor
		}
		return http.StatusNoContent, 0
	})
	env := jobsEnv(agent, app, map[string]string{"SLOW": "* * * * * *"})
	env["CONSUL_HTTP_ADDR"] = proxy.Addr
	env["LEADERCRON_TRIGGER_TIMEOUT"] = "15s"
	s := startSidecar(t, "a", env)
	evs := h.WaitFor(t, 20*time.Second, "the slow run", func(evs []event) bool { return len(filter(evs, "trigger")) >= 1 })
	started := filter(evs, "trigger")[0].At
	proxy.Blackhole()
	defer proxy.Heal()
	waitStatus(t, s, 10*time.Second, "the lease to end", func(v map[string]any) bool { return !isLeader(v) })
	res, _ := postHandover(t, s)
	answered := time.Now()
	if res["outcome"] != "standby" {
		t.Errorf("handover after a lost lease = %v, want standby", res)
	}
	if ended := started.Add(runFor); answered.Before(ended) {
		t.Errorf("handover answered at %s, before the lost term's run ended at %s", answered.Format("15:04:05.000"), ended.Format("15:04:05.000"))
	}
}
