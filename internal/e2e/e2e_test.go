package e2e

import (
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/leadercron/leadercron/internal/consultest"
	"github.com/leadercron/leadercron/internal/testkit"
)

const (
	lockKey   = "leadercron/e2e/leader"
	ttl       = 2 * time.Second
	lockDelay = 2 * time.Second
)

func consulEnv(agent *consultest.Agent, app *testkit.App) map[string]string {
	return map[string]string{
		"CONSUL_HTTP_ADDR":           agent.Addr,
		"LEADERCRON_APP_URL":         app.URL,
		"LEADERCRON_SESSION_TTL":     ttl.String(),
		"LEADERCRON_LOCK_DELAY":      lockDelay.String(),
		"LEADERCRON_DRAIN_INTERVAL":  "100ms",
		"LEADERCRON_DRAIN_TIMEOUT":   "10s",
		"LEADERCRON_JOB_TICK":        "* * * * * *",
		"LEADERCRON_JOB_EVERY_TWO":   "@every 2s timeout=5s",
		"LEADERCRON_TRIGGER_TIMEOUT": "5s",
	}
}

// fleet starts two sidecars, each with its own recording app, sharing one
// history and one Consul agent.
func fleet(t *testing.T, busyPolls int) (*history, map[string]*sidecar, *consultest.Agent) {
	t.Helper()
	agent := consultest.Start(t)
	c := consultest.Client(t, agent.Addr)
	h := newHistory()
	testkit.StartLockWatch(t, h, lockKey, c)
	sidecars := map[string]*sidecar{}
	for _, id := range []string{"a", "b"} {
		app := startApp(t, "app-"+id, h, c, lockKey, busyPolls)
		sidecars[id] = startSidecar(t, id, consulEnv(agent, app))
	}
	return h, sidecars, agent
}

// triggersBy counts triggers per sidecar.
func triggersBy(evs []event) map[string]int {
	n := map[string]int{}
	for _, e := range filter(evs, "trigger") {
		n[e.Sidecar]++
	}
	return n
}

// soleLeader returns the one sidecar that triggered in evs and another
// one of sidecars; it fails the test if triggers came from more than one.
func soleLeader(t *testing.T, evs []event, sidecars map[string]*sidecar) (string, *sidecar) {
	t.Helper()
	by := triggersBy(evs)
	if len(by) != 1 {
		t.Fatalf("triggers came from %d sidecars, want exactly 1: %v", len(by), by)
	}
	var leaderID string
	for id := range by {
		leaderID = id
	}
	var standby *sidecar
	for id, s := range sidecars {
		if id != leaderID {
			standby = s
		}
	}
	return leaderID, standby
}

// checkTokensGrow fails the test unless every trigger from a sidecar
// other than the old leader carries a higher fencing token than all of
// the old leader's.
func checkTokensGrow(t *testing.T, evs []event, oldLeader string) {
	t.Helper()
	var oldMax, newMin uint64
	for _, e := range filter(evs, "trigger") {
		if e.Sidecar == oldLeader {
			oldMax = max(oldMax, e.Token)
		} else if newMin == 0 || e.Token < newMin {
			newMin = e.Token
		}
	}
	if newMin <= oldMax {
		t.Errorf("new leader's token %d is not above the old leader's %d", newMin, oldMax)
	}
}

// sigtermHandover sends SIGTERM to the leader old, which must exit 0, and
// waits for a trigger from standby. It returns when the signal was sent
// and the history then, checked for slots triggered twice.
func sigtermHandover(t *testing.T, h *history, old, standby *sidecar) (time.Time, []event) {
	t.Helper()
	term := time.Now()
	old.Signal(t, syscall.SIGTERM)
	if code := old.Wait(t, 15*time.Second); code != 0 {
		t.Fatalf("leader exited %d after SIGTERM, want 0", code)
	}
	evs := h.WaitFor(t, 10*time.Second, "a trigger from the new leader", func(evs []event) bool {
		return triggersBy(evs)[standby.ID] > 0
	})
	checkNoDuplicateSlots(t, evs)
	return term, evs
}

func TestGracefulHandover(t *testing.T) {
	h, sidecars, _ := fleet(t, 2)

	evs := h.WaitFor(t, 20*time.Second, "4 triggers", func(evs []event) bool { return len(filter(evs, "trigger")) >= 4 })
	leaderID, standby := soleLeader(t, evs, sidecars)
	old := sidecars[leaderID]

	term, evs := sigtermHandover(t, h, old, standby)
	logSlotDelays(t, evs)

	// The old leader's app was drained while the old leader still held
	// the lock, and polled until it reported nothing running.
	drains := filter(evs, "drain")
	if len(drains) < 3 {
		t.Fatalf("app saw %d /drain calls, want 3 (two busy answers, then drained)", len(drains))
	}
	var oldSession string
	for _, e := range filter(evs, "lock") {
		if e.At.Before(term) && e.Session != "" {
			oldSession = e.Session
		}
	}
	for _, d := range drains {
		if d.App != "app-"+leaderID || d.Sidecar != leaderID {
			t.Errorf("drain reached %s from %s, want app-%s from %s", d.App, d.Sidecar, leaderID, leaderID)
		}
		if d.Held == "" || d.Held != oldSession {
			t.Errorf("app saw /drain while the lock was held by %q, want the old leader's session %q", d.Held, oldSession)
		}
	}

	// Takeover: from the release (key free) to the standby holding it.
	var released, acquired time.Time
	for _, e := range filter(evs, "lock") {
		if e.At.After(term) && e.Session == "" && released.IsZero() {
			released = e.At
		}
		if !released.IsZero() && e.Session != "" && acquired.IsZero() {
			acquired = e.At
		}
	}
	if released.IsZero() || acquired.IsZero() {
		t.Fatalf("lock release or takeover not seen:\n%s", dump(evs))
	}
	lastDrain := drains[len(drains)-1].At
	if released.Before(lastDrain) {
		t.Errorf("lock released at %s, before the last /drain at %s", released.Format(time.StampMilli), lastDrain.Format(time.StampMilli))
	}
	t.Logf("SIGTERM to release: %s; release to standby holding the lock: %s", released.Sub(term), acquired.Sub(released))
	if d := acquired.Sub(released); d > time.Second {
		t.Errorf("standby took %s to take the released lock, want under 1s", d)
	}

	// Fencing tokens grow with the new leadership.
	checkTokensGrow(t, evs, leaderID)
}

func TestLeaderKilled(t *testing.T) {
	h, sidecars, _ := fleet(t, 0)
	evs := h.WaitFor(t, 20*time.Second, "3 triggers", func(evs []event) bool { return len(filter(evs, "trigger")) >= 3 })
	var leaderID string
	for id := range triggersBy(evs) {
		leaderID = id
	}
	var standby *sidecar
	for id, s := range sidecars {
		if id != leaderID {
			standby = s
		}
	}
	killed := time.Now()
	sidecars[leaderID].Signal(t, syscall.SIGKILL)
	sidecars[leaderID].Wait(t, 5*time.Second)

	evs = h.WaitFor(t, 2*ttl+lockDelay+5*time.Second, "a trigger from the standby", func(evs []event) bool {
		return triggersBy(evs)[standby.ID] > 0
	})
	checkNoDuplicateSlots(t, evs)
	var acquired time.Time
	for _, e := range filter(evs, "lock") {
		if e.At.After(killed) && e.Session != "" {
			acquired = e.At
			break
		}
	}
	if acquired.IsZero() {
		t.Fatalf("no new lock holder seen:\n%s", dump(evs))
	}
	took := acquired.Sub(killed)
	t.Logf("SIGKILL to standby holding the lock: %s (TTL %s, lock-delay %s, bound 2xTTL+lock-delay+1s = %s)", took, ttl, lockDelay, 2*ttl+lockDelay+time.Second)
	if took < lockDelay {
		t.Errorf("standby took the lock %s after the kill, before the lock-delay (%s) could have passed", took, lockDelay)
	}
	if took > 2*ttl+lockDelay+time.Second {
		t.Errorf("standby took the lock %s after the kill, over the bound 2xTTL+lock-delay+1s", took)
	}
}

func TestDrainTimeoutExits3WithoutRelease(t *testing.T) {
	agent := consultest.Start(t)
	c := consultest.Client(t, agent.Addr)
	h := newHistory()
	app := startApp(t, "app", h, c, lockKey, -1) // never drains
	env := consulEnv(agent, app)
	env["LEADERCRON_DRAIN_TIMEOUT"] = "1s"
	s := startSidecar(t, "a", env)
	h.WaitFor(t, 20*time.Second, "a trigger", func(evs []event) bool { return len(filter(evs, "trigger")) > 0 })

	s.Signal(t, syscall.SIGTERM)
	if code := s.Wait(t, 10*time.Second); code != 3 {
		t.Fatalf("exit code %d after a drain timeout, want 3", code)
	}
	pair, _, err := c.KV().Get(lockKey, nil)
	if err != nil || pair == nil || pair.Session == "" {
		t.Fatalf("lock key after a drain timeout: %+v, %v; want still held until the session expires", pair, err)
	}
}

func TestStandaloneTriggersAndDrains(t *testing.T) {
	h := newHistory()
	app := startApp(t, "app", h, nil, "", 0)
	s := startSidecar(t, "solo", map[string]string{
		"LEADERCRON_LOCK":          "none",
		"LEADERCRON_APP_URL":       app.URL,
		"LEADERCRON_JOB_TICK":      "* * * * * *",
		"LEADERCRON_DRAIN_TIMEOUT": "5s",
	})
	h.WaitFor(t, 10*time.Second, "2 triggers", func(evs []event) bool { return len(filter(evs, "trigger")) >= 2 })
	s.Signal(t, syscall.SIGTERM)
	if code := s.Wait(t, 10*time.Second); code != 0 {
		t.Fatalf("exit code %d, want 0", code)
	}
	evs, _ := h.Snapshot()
	if len(filter(evs, "drain")) == 0 {
		t.Error("app was not drained on SIGTERM")
	}
	checkNoDuplicateSlots(t, evs)
}

func TestBadConfigurationExits2(t *testing.T) {
	s := startSidecar(t, "bad", map[string]string{
		"LEADERCRON_SERVICE":     "",
		"LEADERCRON_SESSION_TTL": "0s",
		"LEADERCRON_APP_URL":     "localhost:8080",
		"LEADERCRON_JOB_A":       "61 * * * *",
		"LEADERCRON_JOB_B":       "@hourly colour=blue",
	})
	if code := s.Wait(t, 10*time.Second); code != 2 {
		t.Fatalf("exit code %d, want 2", code)
	}
	out := s.Output()
	for _, want := range []string{
		"LEADERCRON_SERVICE",
		`LEADERCRON_SESSION_TTL="0s"`,
		`LEADERCRON_APP_URL="localhost:8080"`,
		`LEADERCRON_JOB_A="61 * * * *"`,
		`LEADERCRON_JOB_B="@hourly colour=blue": unknown option "colour"`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
}
