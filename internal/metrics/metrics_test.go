package metrics

import (
	"io"
	"math"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/leadercron/leadercron/internal/scheduler"
)

// The consumers' interfaces are satisfied.
var (
	_ scheduler.Observer = (*Metrics)(nil)
)

type fakeTerm struct {
	mu    sync.Mutex
	token uint64
	rem   time.Duration
}

func (f *fakeTerm) Token() uint64 { return f.token }

func (f *fakeTerm) Remaining() time.Duration {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.rem
}

func (f *fakeTerm) set(d time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.rem = d
}

type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

func newMetrics(t *testing.T, opts Options) (*Metrics, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	m, err := New(reg, opts)
	if err != nil {
		t.Fatal(err)
	}
	return m, reg
}

func compare(t *testing.T, reg prometheus.Gatherer, want string, names ...string) {
	t.Helper()
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), names...); err != nil {
		t.Error(err)
	}
}

func TestSlotsPrecreatedAtZero(t *testing.T) {
	m, reg := newMetrics(t, Options{Version: "v1.2.3", Jobs: []string{"report", "tick"}})
	compare(t, reg, `
# HELP leadercron_build_info Always 1; the version label is the sidecar's version.
# TYPE leadercron_build_info gauge
leadercron_build_info{version="v1.2.3"} 1
`, "leadercron_build_info")

	if n := testutil.CollectAndCount(m.slots, "leadercron_slots_total"); n != 8 {
		t.Errorf("slots_total has %d series before any slot, want 2 jobs x 4 outcomes = 8", n)
	}
	m.SlotDone("tick", "fired", "")
	m.SlotDone("tick", "fired", "")
	m.SlotDone("tick", "missed", "lease_short")
	m.SlotDone("report", "failed", "")
	for _, c := range []struct {
		job, outcome string
		want         float64
	}{
		{"tick", "fired", 2}, {"tick", "missed", 1}, {"tick", "failed", 0}, {"tick", "skipped", 0},
		{"report", "failed", 1}, {"report", "fired", 0},
	} {
		if got := testutil.ToFloat64(m.slots.WithLabelValues(c.job, c.outcome)); got != c.want {
			t.Errorf("slots_total{job=%q,outcome=%q} = %v, want %v", c.job, c.outcome, got, c.want)
		}
	}
	if n := testutil.CollectAndCount(m.consulErrors); n != len(ConsulOps()) {
		t.Errorf("consul_errors_total has %d series before any error, want %d", n, len(ConsulOps()))
	}
	m.ConsulError("renew")
	m.ConsulError("renew")
	m.ConsulError("some_new_op")
	if got := testutil.ToFloat64(m.consulErrors.WithLabelValues("renew")); got != 2 {
		t.Errorf("consul_errors_total{op=renew} = %v, want 2", got)
	}
	if got := testutil.ToFloat64(m.consulErrors.WithLabelValues("some_new_op")); got != 1 {
		t.Errorf("consul_errors_total{op=some_new_op} = %v, want 1", got)
	}
}

func TestLeadershipGauges(t *testing.T) {
	m, reg := newMetrics(t, Options{})
	gauges := func(leader, token, lease float64, changes int) string {
		return `
# HELP leadercron_is_leader 1 while this sidecar leads with a valid lease, else 0.
# TYPE leadercron_is_leader gauge
leadercron_is_leader ` + ftoa(leader) + `
# HELP leadercron_fencing_token Fencing token of the current leadership (the lock key's ModifyIndex at acquire); 0 when not leading.
# TYPE leadercron_fencing_token gauge
leadercron_fencing_token ` + ftoa(token) + `
# HELP leadercron_lease_remaining_seconds Time left on the local lease while leading (+Inf in standalone mode); 0 when not leading.
# TYPE leadercron_lease_remaining_seconds gauge
leadercron_lease_remaining_seconds ` + ftoa(lease) + `
# HELP leadercron_leadership_changes_total Times this sidecar became the leader (each is a new term with a new fencing token). Summed over the fleet: the number of leaderships.
# TYPE leadercron_leadership_changes_total counter
leadercron_leadership_changes_total ` + ftoa(float64(changes)) + `
`
	}
	names := []string{"leadercron_is_leader", "leadercron_fencing_token", "leadercron_lease_remaining_seconds", "leadercron_leadership_changes_total"}

	compare(t, reg, gauges(0, 0, 0, 0), names...)

	term := &fakeTerm{token: 4711, rem: 12500 * time.Millisecond}
	m.LeadershipStarted(term)
	compare(t, reg, gauges(1, 4711, 12.5, 1), names...)

	// The lease runs out with no event: the next scrape shows it.
	term.set(0)
	compare(t, reg, gauges(0, 0, 0, 1), names...)

	m.LeadershipEnded()
	compare(t, reg, gauges(0, 0, 0, 1), names...)

	m.LeadershipStarted(&fakeTerm{token: 4800, rem: time.Duration(math.MaxInt64)})
	compare(t, reg, gauges(1, 4800, math.Inf(1), 2), names...)
}

// ftoa formats f as the text exposition format does.
func ftoa(f float64) string { return strconv.FormatFloat(f, 'g', -1, 64) }

func TestDrainDuration(t *testing.T) {
	clock := &fakeClock{now: time.Unix(1_700_000_000, 0)}
	m, reg := newMetrics(t, Options{DrainTimeout: 25 * time.Second, Now: clock.Now})
	want := func(d string) string {
		return `
# HELP leadercron_drain_duration_seconds How long the running drain has taken so far (it grows during the drain), else how long the last one took; 0 before any drain.
# TYPE leadercron_drain_duration_seconds gauge
leadercron_drain_duration_seconds ` + d + `
# HELP leadercron_drain_timeout_seconds LEADERCRON_DRAIN_TIMEOUT: the longest a drain may take before the sidecar exits 3 without releasing the lock.
# TYPE leadercron_drain_timeout_seconds gauge
leadercron_drain_timeout_seconds 25
`
	}
	names := []string{"leadercron_drain_duration_seconds", "leadercron_drain_timeout_seconds"}
	compare(t, reg, want("0"), names...)
	m.DrainDone() // without a start: no effect
	compare(t, reg, want("0"), names...)

	m.DrainStarted()
	clock.advance(1500 * time.Millisecond)
	compare(t, reg, want("1.5"), names...) // grows while it runs
	clock.advance(2 * time.Second)
	m.DrainDone()
	clock.advance(time.Minute)
	compare(t, reg, want("3.5"), names...) // frozen once done
}

func TestTriggerHistograms(t *testing.T) {
	m, reg := newMetrics(t, Options{Jobs: []string{"tick"}})
	// Binary fractions of a second, so that the sum is exact.
	m.TriggerSent("tick", time.Second/256)
	m.TriggerSent("tick", time.Second/32)
	m.TriggerSent("tick", -time.Millisecond) // a clock that stepped back counts as 0
	m.TriggerDone("tick", 200*time.Millisecond)
	m.TriggerDone("tick", 7*time.Second)

	compare(t, reg, `
# HELP leadercron_slot_delay_seconds Time from a slot's scheduled instant to its trigger being sent (claim included).
# TYPE leadercron_slot_delay_seconds histogram
leadercron_slot_delay_seconds_bucket{le="0.001"} 1
leadercron_slot_delay_seconds_bucket{le="0.0025"} 1
leadercron_slot_delay_seconds_bucket{le="0.005"} 2
leadercron_slot_delay_seconds_bucket{le="0.01"} 2
leadercron_slot_delay_seconds_bucket{le="0.025"} 2
leadercron_slot_delay_seconds_bucket{le="0.05"} 3
leadercron_slot_delay_seconds_bucket{le="0.1"} 3
leadercron_slot_delay_seconds_bucket{le="0.25"} 3
leadercron_slot_delay_seconds_bucket{le="0.5"} 3
leadercron_slot_delay_seconds_bucket{le="1"} 3
leadercron_slot_delay_seconds_bucket{le="2.5"} 3
leadercron_slot_delay_seconds_bucket{le="5"} 3
leadercron_slot_delay_seconds_bucket{le="10"} 3
leadercron_slot_delay_seconds_bucket{le="30"} 3
leadercron_slot_delay_seconds_bucket{le="60"} 3
leadercron_slot_delay_seconds_bucket{le="+Inf"} 3
leadercron_slot_delay_seconds_sum 0.03515625
leadercron_slot_delay_seconds_count 3
`, "leadercron_slot_delay_seconds")

	if n := testutil.CollectAndCount(m.triggerSeconds); n != 1 {
		t.Errorf("trigger_duration_seconds has %d series, want 1 (job tick)", n)
	}
	count, sum := histogram(t, reg, "leadercron_trigger_duration_seconds")
	if count != 2 || math.Abs(sum-7.2) > 1e-9 {
		t.Errorf("trigger_duration_seconds count %d sum %v, want 2 and 7.2", count, sum)
	}
}

func histogram(t *testing.T, g prometheus.Gatherer, name string) (uint64, float64) {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			h := mf.GetMetric()[0].GetHistogram()
			return h.GetSampleCount(), h.GetSampleSum()
		}
	}
	t.Fatalf("no metric %s", name)
	return 0, 0
}

func TestHandlerServesTextFormat(t *testing.T) {
	m, _ := newMetrics(t, Options{Version: "dev", Jobs: []string{"tick"}, Runtime: true})
	m.SlotDone("tick", "fired", "")
	srv := httptest.NewServer(m.Handler())
	defer srv.Close()
	res, err := srv.Client().Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	body, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	if res.StatusCode != 200 || !strings.HasPrefix(res.Header.Get("Content-Type"), "text/plain") {
		t.Fatalf("GET /metrics: %d %q", res.StatusCode, res.Header.Get("Content-Type"))
	}
	for _, want := range []string{
		`leadercron_slots_total{job="tick",outcome="fired"} 1`,
		`leadercron_build_info{version="dev"} 1`,
		"go_goroutines ",
		"process_start_time_seconds ",
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("scrape lacks %q", want)
		}
	}
}

func TestOwnRegistryAndDuplicates(t *testing.T) {
	// A nil registry means a new one each time, so two instances coexist.
	if _, err := New(nil, Options{Runtime: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := New(nil, Options{Runtime: true}); err != nil {
		t.Fatalf("second instance with its own registry: %v", err)
	}
	reg := prometheus.NewRegistry()
	if _, err := New(reg, Options{}); err != nil {
		t.Fatal(err)
	}
	if _, err := New(reg, Options{}); err == nil {
		t.Fatal("registering twice in one registry succeeded, want an error")
	}
}

func TestConcurrentUse(t *testing.T) {
	m, reg := newMetrics(t, Options{Jobs: []string{"tick"}})
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 100 {
				m.SlotDone("tick", "fired", "")
				m.TriggerSent("tick", time.Millisecond)
				m.TriggerDone("tick", time.Millisecond)
				if i%2 == 0 {
					m.LeadershipStarted(&fakeTerm{token: 1, rem: time.Second})
					m.DrainStarted()
				} else {
					m.LeadershipEnded()
					m.DrainDone()
				}
				if _, err := reg.Gather(); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if got := testutil.ToFloat64(m.slots.WithLabelValues("tick", "fired")); got != 800 {
		t.Errorf("slots_total fired = %v, want 800", got)
	}
	if got := testutil.ToFloat64(m.changes); got != 400 {
		t.Errorf("leadership_changes_total = %v, want 400", got)
	}
}
