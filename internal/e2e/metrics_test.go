package e2e

import (
	"fmt"
	"math"
	"net/http"
	"syscall"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/leadercron/leadercron/internal/consultest"
)

// scrape is one parsed GET /metrics of a sidecar.
type scrape map[string]*dto.MetricFamily

// scrapeMetrics fetches and parses a sidecar's /metrics with the
// Prometheus text parser; it retries until the admin server answers.
func scrapeMetrics(t *testing.T, s *sidecar) scrape {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		fams, err := fetchMetrics(s.Listen)
		if err == nil {
			return fams
		}
		if time.Now().After(deadline) {
			t.Fatalf("scrape sidecar %s: %v", s.ID, err)
		}
		time.Sleep(50 * time.Millisecond) // polling another process's port
	}
}

func fetchMetrics(addr string) (scrape, error) {
	c := &http.Client{Timeout: 2 * time.Second}
	res, err := c.Get("http://" + addr + "/metrics")
	if err != nil {
		return nil, err
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET /metrics: status %d", res.StatusCode)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(res.Body)
	if err != nil {
		return nil, fmt.Errorf("parse /metrics: %w", err)
	}
	return fams, nil
}

// series returns the metric of family name whose labels include labels.
func (sc scrape) series(t *testing.T, name string, labels map[string]string) *dto.Metric {
	t.Helper()
	fam, ok := sc[name]
	if !ok {
		t.Fatalf("no metric family %s in the scrape", name)
	}
next:
	for _, m := range fam.GetMetric() {
		have := map[string]string{}
		for _, l := range m.GetLabel() {
			have[l.GetName()] = l.GetValue()
		}
		for k, v := range labels {
			if have[k] != v {
				continue next
			}
		}
		return m
	}
	t.Fatalf("no series %s%v in the scrape", name, labels)
	return nil
}

// value is a gauge's or a counter's value.
func (sc scrape) value(t *testing.T, name string, labels map[string]string) float64 {
	t.Helper()
	m := sc.series(t, name, labels)
	switch {
	case m.Gauge != nil:
		return m.GetGauge().GetValue()
	case m.Counter != nil:
		return m.GetCounter().GetValue()
	}
	t.Fatalf("%s is neither a gauge nor a counter", name)
	return 0
}

func (sc scrape) histogramCount(t *testing.T, name string, labels map[string]string) uint64 {
	t.Helper()
	return sc.series(t, name, labels).GetHistogram().GetSampleCount()
}

var (
	tickFired   = map[string]string{"job": "tick", "outcome": "fired"}
	outcomeList = []string{"fired", "failed", "skipped", "missed"}
)

// TestMetricsScrape scrapes the /metrics of a running fleet of two: the
// leader's gauges agree with Consul and its counters with what its app
// saw; the standby shows zeros; after a graceful handover the standby
// counts a leadership change and reports the new term.
func TestMetricsScrape(t *testing.T) {
	h, sidecars, agent := fleet(t, 0)
	c := consultest.Client(t, agent.Addr)

	evs := h.WaitFor(t, 20*time.Second, "3 tick triggers", func(evs []event) bool { return countTicks(evs, "") >= 3 })
	by := triggersBy(evs)
	if len(by) != 1 {
		t.Fatalf("triggers came from %d sidecars, want exactly 1: %v", len(by), by)
	}
	var lead, standby *sidecar
	for id, s := range sidecars {
		if by[id] > 0 {
			lead = s
		} else {
			standby = s
		}
	}

	// Exactly one sidecar says it leads, and its token is the lock key's
	// ModifyIndex (the key is written only by the acquire while held).
	ls, ss := scrapeMetrics(t, lead), scrapeMetrics(t, standby)
	if got := ls.value(t, "leadercron_is_leader", nil); got != 1 {
		t.Errorf("leader %s: is_leader %v, want 1", lead.ID, got)
	}
	if got := ss.value(t, "leadercron_is_leader", nil); got != 0 {
		t.Errorf("standby %s: is_leader %v, want 0", standby.ID, got)
	}
	pair, _, err := c.KV().Get(lockKey, nil)
	if err != nil || pair == nil {
		t.Fatalf("read lock key: %v (pair %v)", err, pair)
	}
	token := ls.value(t, "leadercron_fencing_token", nil)
	if uint64(token) != pair.ModifyIndex {
		t.Errorf("leader's fencing_token %v, want the lock key's ModifyIndex %d", token, pair.ModifyIndex)
	}
	for _, e := range filter(evs, "trigger") {
		if e.Token != pair.ModifyIndex {
			t.Errorf("app got token %d, want %d", e.Token, pair.ModifyIndex)
		}
	}
	if rem := ls.value(t, "leadercron_lease_remaining_seconds", nil); rem <= 0 || rem > ttl.Seconds() {
		t.Errorf("leader's lease_remaining_seconds %v, want in (0, %v]", rem, ttl.Seconds())
	}
	if n := ls.value(t, "leadercron_leadership_changes_total", nil); n != 1 {
		t.Errorf("leader's leadership_changes_total %v, want 1", n)
	}
	if n := ls.histogramCount(t, "leadercron_slot_delay_seconds", nil); n == 0 {
		t.Error("leader's slot_delay_seconds has no observations after 3 triggers")
	}
	if n := ls.histogramCount(t, "leadercron_trigger_duration_seconds", map[string]string{"job": "tick"}); n == 0 {
		t.Error("leader's trigger_duration_seconds{job=tick} has no observations after 3 triggers")
	}
	if v := ls.value(t, "leadercron_slots_total", map[string]string{"job": "tick", "outcome": "failed"}); v != 0 {
		t.Errorf("leader's slots_total{tick,failed} %v, want 0: the app answers 204", v)
	}
	if v := ls.value(t, "leadercron_build_info", nil); v != 1 {
		t.Errorf("build_info %v, want 1", v)
	}

	// The standby has every series, at zero.
	for _, name := range []string{"leadercron_fencing_token", "leadercron_lease_remaining_seconds", "leadercron_leadership_changes_total"} {
		if v := ss.value(t, name, nil); v != 0 {
			t.Errorf("standby's %s %v, want 0", name, v)
		}
	}
	for _, job := range []string{"tick", "every-two"} {
		for _, o := range outcomeList {
			if v := ss.value(t, "leadercron_slots_total", map[string]string{"job": job, "outcome": o}); v != 0 {
				t.Errorf("standby's slots_total{%s,%s} %v, want 0", job, o, v)
			}
		}
	}
	if n := ss.histogramCount(t, "leadercron_slot_delay_seconds", nil); n != 0 {
		t.Errorf("standby's slot_delay_seconds count %d, want 0", n)
	}
	ss.series(t, "leadercron_consul_errors_total", map[string]string{"op": "renew"})

	// slots_total{fired} counts what the app saw. The app records a
	// trigger before it answers and the sidecar counts it after, so the
	// counter may trail the app by the triggers in flight, never lead it;
	// it matches between two ticks.
	first := waitFiredMatches(t, h, lead, 0)
	second := waitFiredMatches(t, h, lead, first)
	t.Logf("leader's slots_total{tick,fired}: %d, then %d, each equal to its app's count", first, second)

	// Graceful handover: the standby becomes the leader with a new term.
	lead.Signal(t, syscall.SIGTERM)
	if code := lead.Wait(t, 15*time.Second); code != 0 {
		t.Fatalf("leader exited %d after SIGTERM, want 0", code)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		ss = scrapeMetrics(t, standby)
		if ss.value(t, "leadercron_is_leader", nil) == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the standby's is_leader is still 0 10s after the leader's graceful exit")
		}
		time.Sleep(100 * time.Millisecond) // polling another process
	}
	if n := ss.value(t, "leadercron_leadership_changes_total", nil); n != 1 {
		t.Errorf("new leader's leadership_changes_total %v, want 1 (was 0)", n)
	}
	pair, _, err = c.KV().Get(lockKey, nil)
	if err != nil || pair == nil {
		t.Fatalf("read lock key: %v (pair %v)", err, pair)
	}
	newToken := ss.value(t, "leadercron_fencing_token", nil)
	if uint64(newToken) != pair.ModifyIndex || newToken <= token {
		t.Errorf("new leader's fencing_token %v, want the lock key's ModifyIndex %d, above the old %v", newToken, pair.ModifyIndex, token)
	}
}

// countTicks counts tick triggers sent by sidecar id ("" = any).
func countTicks(evs []event, id string) int {
	n := 0
	for _, e := range filter(evs, "trigger") {
		if e.Job == "tick" && (id == "" || e.Sidecar == id) {
			n++
		}
	}
	return n
}

// waitFiredMatches polls the leader's slots_total{tick,fired} until it
// equals the number of tick triggers its app received and exceeds above,
// checking on every scrape that it never runs ahead of the app.
func waitFiredMatches(t *testing.T, h *history, s *sidecar, above int) int {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		fired := int(scrapeMetrics(t, s).value(t, "leadercron_slots_total", tickFired))
		evs, _ := h.Snapshot() // after the scrape: includes every counted trigger
		app := countTicks(evs, s.ID)
		if fired > app {
			t.Fatalf("slots_total{tick,fired} %d is ahead of the %d tick triggers the app received", fired, app)
		}
		if fired == app && fired > above {
			return fired
		}
		if time.Now().After(deadline) {
			t.Fatalf("slots_total{tick,fired} %d never matched the app's %d above %d within 10s", fired, app, above)
		}
		time.Sleep(100 * time.Millisecond) // polling another process
	}
}

// TestMetricsStandalone scrapes a sidecar in standalone mode: it always
// leads, its lease never ends, and it counts what its app received.
func TestMetricsStandalone(t *testing.T) {
	h := newHistory()
	app := startApp(t, "app", h, nil, "", 0)
	s := startSidecar(t, "solo", map[string]string{
		"LEADERCRON_LOCK":     "none",
		"LEADERCRON_APP_URL":  app.URL,
		"LEADERCRON_JOB_TICK": "* * * * * *",
	})
	h.WaitFor(t, 10*time.Second, "a tick trigger", func(evs []event) bool { return countTicks(evs, "") >= 1 })
	sc := scrapeMetrics(t, s)
	if v := sc.value(t, "leadercron_is_leader", nil); v != 1 {
		t.Errorf("standalone is_leader %v, want 1", v)
	}
	if v := sc.value(t, "leadercron_lease_remaining_seconds", nil); !math.IsInf(v, 1) {
		t.Errorf("standalone lease_remaining_seconds %v, want +Inf", v)
	}
	if v := sc.value(t, "leadercron_fencing_token", nil); v <= 0 {
		t.Errorf("standalone fencing_token %v, want > 0", v)
	}
	waitFiredMatches(t, h, s, 0)
	s.Signal(t, syscall.SIGTERM)
	if code := s.Wait(t, 10*time.Second); code != 0 {
		t.Fatalf("exit code %d after SIGTERM, want 0", code)
	}
}
