// Package metrics is the sidecar's Prometheus instrumentation, served at
// GET /metrics in the text exposition format. Every metric is named
// leadercron_*; docs/metrics.md lists them with the alerts worth setting.
//
// Guarantees: the metrics live in their own registry, never in the
// client library's global default one, so two sidecars in one process (as
// in tests) do not collide. leadercron_slots_total has a zero series for
// every configured job and each outcome (fired, failed, skipped, missed)
// from the start, so rate() and increase() see the first slot of each kind.
// The leadership gauges (is_leader, fencing_token, lease_remaining_seconds)
// are read from the current term at scrape time, so a lease that ran out
// between two events shows as such at the next scrape. Every method is safe
// for concurrent use and never blocks on I/O.
//
// Not guaranteed: that a scrape sees every state. A leadership shorter than
// the scrape interval, or a drain at shutdown that ends just before the
// process exits, may never be scraped; the counters and the logs carry
// them. Counters restart from zero with the process. The metrics are this
// sidecar's own view: only a sum over the fleet says whether there is
// exactly one leader.
package metrics

import (
	"fmt"
	"math"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/leadercron/leadercron/internal/fate"
)

// ConsulOp names a Consul request in leadercron_consul_errors_total. Every
// op is declared here, so that each has a zero series from the start.
type ConsulOp string

// The Consul operations that report errors.
const (
	OpWatch         ConsulOp = "watch"          // a standby's blocking read of the lock key
	OpSessionCreate ConsulOp = "session_create" // a new session before an acquire
	OpAcquire       ConsulOp = "acquire"        // the lock acquire Txn
	OpRenew         ConsulOp = "renew"          // a session renew
	OpMonitor       ConsulOp = "monitor"        // the leader's consistent read of the lock key
	OpReadSlot      ConsulOp = "read_slot"      // a read of a job's claim record
	OpClaim         ConsulOp = "claim"          // a slot claim Txn
	OpTakeRequest   ConsulOp = "take_request"   // a run-now take Txn
	OpTxnRefused    ConsulOp = "txn_refused"    // a Txn Consul refused for a reason other than a race
	OpRelease       ConsulOp = "release"        // the lock release at a graceful end
	OpDestroy       ConsulOp = "destroy"        // the session destroy at the end of a campaign
	OpWatchRequests ConsulOp = "watch_requests" // the leader's blocking list of run-now requests
	OpPublishFleet  ConsulOp = "publish_fleet"  // a write of the job table or of a member record (P/fleet/)
	OpWatchFleet    ConsulOp = "watch_fleet"    // the leader's blocking list of P/fleet/
)

// ConsulOps lists every ConsulOp.
func ConsulOps() []ConsulOp {
	return []ConsulOp{OpWatch, OpSessionCreate, OpAcquire, OpRenew, OpMonitor, OpReadSlot, OpClaim, OpTakeRequest,
		OpTxnRefused, OpRelease, OpDestroy, OpWatchRequests, OpPublishFleet, OpWatchFleet}
}

// Term is the leadership the gauges are read from; *leader.Term is one.
type Term interface {
	Token() uint64
	// Remaining is how long the lease still runs: zero or less once it
	// has ended, math.MaxInt64 for a lease that never ends (standalone).
	Remaining() time.Duration
}

// Options configures Metrics.
type Options struct {
	// Version is exported as leadercron_build_info{version}.
	Version string
	// Jobs are the configured job names; each gets zero series in
	// leadercron_slots_total.
	Jobs []string
	// DrainTimeout is exported as leadercron_drain_timeout_seconds, so
	// that alerts can compare the drain duration with it.
	DrainTimeout time.Duration
	// Now is the clock for the drain duration; default time.Now.
	Now func() time.Time
	// Runtime adds the Go runtime and process collectors (go_*,
	// process_*).
	Runtime bool
}

// Metrics records the sidecar's metrics. It implements scheduler.Observer
// and leader.Metrics.
type Metrics struct {
	reg     *prometheus.Registry
	now     func() time.Time
	version string

	slots          *prometheus.CounterVec
	triggerSeconds *prometheus.HistogramVec
	slotDelay      prometheus.Histogram
	changes        prometheus.Counter
	consulErrors   *prometheus.CounterVec
	tableMismatch  prometheus.Gauge
	claimLead      prometheus.Gauge

	mu         sync.Mutex
	term       Term      // nil while not leading
	drainStart time.Time // zero unless a drain runs
	drainLast  time.Duration
}

// New registers the metrics in reg and returns them. A nil reg means a new
// registry of their own (prometheus.NewRegistry, never the global one).
func New(reg *prometheus.Registry, opts Options) (*Metrics, error) {
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	m := &Metrics{
		reg:     reg,
		now:     opts.Now,
		version: opts.Version,
		slots: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "leadercron_slots_total",
			Help: "Slots this sidecar settled while leading, by job and outcome: fired (app answered 2xx), failed, skipped (app answered 409), missed (never triggered).",
		}, []string{"job", "outcome"}),
		triggerSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "leadercron_trigger_duration_seconds",
			Help:    "Time from sending a trigger to the app's answer, by job (short for apps that answer 202 and run in the background).",
			Buckets: []float64{0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800},
		}, []string{"job"}),
		slotDelay: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "leadercron_slot_delay_seconds",
			Help:    "Time from a slot's scheduled instant to its trigger being sent (claim included).",
			Buckets: []float64{0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60},
		}),
		changes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "leadercron_leadership_changes_total",
			Help: "Times this sidecar became the leader (each is a new term with a new fencing token). Summed over the fleet: the number of leaderships.",
		}),
		consulErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "leadercron_consul_errors_total",
			Help: "Failed Consul requests by operation.",
		}, []string{"op"}),
		claimLead: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "leadercron_claim_lead_seconds",
			Help: "How far ahead of a slot's instant the scheduler claims it: twice the 99th percentile of recent claim latencies, 10 ms to 500 ms.",
		}),
		tableMismatch: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "leadercron_job_table_mismatch",
			Help: "While leading: how many other live sidecars of the fleet run a job table that differs from this leader's (a deploy half done); 0 when all agree and when not leading.",
		}),
	}
	for _, op := range ConsulOps() {
		m.consulErrors.WithLabelValues(string(op))
	}
	for _, j := range opts.Jobs {
		for _, o := range fate.Outcomes() {
			m.slots.WithLabelValues(j, string(o))
		}
	}
	buildInfo := prometheus.NewGauge(prometheus.GaugeOpts{
		Name:        "leadercron_build_info",
		Help:        "Always 1; the version label is the sidecar's version.",
		ConstLabels: prometheus.Labels{"version": opts.Version},
	})
	buildInfo.Set(1)
	cs := []prometheus.Collector{
		m.slots, m.triggerSeconds, m.slotDelay, m.changes, m.consulErrors, m.tableMismatch, m.claimLead, buildInfo,
	}
	cs = append(cs, m.gauges(opts)...)
	if opts.Runtime {
		cs = append(cs, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	}
	for _, c := range cs {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register metrics: %w", err)
		}
	}
	return m, nil
}

// gauges are the metrics computed at scrape time from the current term and
// the drain.
func (m *Metrics) gauges(opts Options) []prometheus.Collector {
	return []prometheus.Collector{
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "leadercron_is_leader",
			Help: "1 while this sidecar leads with a valid lease, else 0.",
		}, func() float64 {
			if _, ok := m.leading(); ok {
				return 1
			}
			return 0
		}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "leadercron_fencing_token",
			Help: "Fencing token of the current leadership (the lock key's ModifyIndex at acquire); 0 when not leading.",
		}, func() float64 {
			if t, ok := m.leading(); ok {
				return float64(t.Token())
			}
			return 0
		}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "leadercron_lease_remaining_seconds",
			Help: "Time left on the local lease while leading (+Inf in standalone mode); 0 when not leading.",
		}, func() float64 {
			t, ok := m.leading()
			if !ok {
				return 0
			}
			if rem := t.Remaining(); rem != math.MaxInt64 {
				return rem.Seconds()
			}
			return math.Inf(1)
		}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "leadercron_drain_duration_seconds",
			Help: "How long the running drain has taken so far (it grows during the drain), else how long the last one took; 0 before any drain.",
		}, m.drainSeconds),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "leadercron_drain_timeout_seconds",
			Help: "LEADERCRON_DRAIN_TIMEOUT: the longest a drain may take before the sidecar exits 3 without releasing the lock.",
		}, func() float64 { return opts.DrainTimeout.Seconds() }),
	}
}

// Handler serves the registry in the Prometheus exposition formats.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{})
}

// LeadershipStarted records a new term: the leadership gauges follow it
// until LeadershipEnded, and leadercron_leadership_changes_total grows.
func (m *Metrics) LeadershipStarted(t Term) {
	m.mu.Lock()
	m.term = t
	m.mu.Unlock()
	m.changes.Inc()
}

// LeadershipEnded records that the term given to LeadershipStarted is over.
func (m *Metrics) LeadershipEnded() {
	m.mu.Lock()
	m.term = nil
	m.mu.Unlock()
}

func (m *Metrics) leading() (Term, bool) {
	m.mu.Lock()
	t := m.term
	m.mu.Unlock()
	if t == nil || t.Remaining() <= 0 {
		return nil, false
	}
	return t, true
}

// DrainStarted records the start of a drain (waiting for triggers in
// flight, then polling the app's /drain).
func (m *Metrics) DrainStarted() {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.drainStart = m.now()
}

// DrainDone records the end of the drain started last, however it ended.
func (m *Metrics) DrainDone() {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.drainStart.IsZero() {
		return
	}
	m.drainLast = m.now().Sub(m.drainStart)
	m.drainStart = time.Time{}
}

func (m *Metrics) drainSeconds() float64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.drainStart.IsZero() {
		return m.now().Sub(m.drainStart).Seconds()
	}
	return m.drainLast.Seconds()
}

// SlotDone counts a settled slot (scheduler.Observer). The reason is
// logged by the scheduler and not a label, to keep the series few.
func (m *Metrics) SlotDone(job string, outcome fate.Outcome, _ fate.Reason) {
	m.slots.WithLabelValues(job, string(outcome)).Inc()
}

// TriggerSent records how long after its slot a trigger was sent
// (scheduler.Observer).
func (m *Metrics) TriggerSent(_ string, delay time.Duration) {
	m.slotDelay.Observe(max(delay, 0).Seconds())
}

// TriggerDone records how long the app took to answer a trigger
// (scheduler.Observer).
func (m *Metrics) TriggerDone(job string, d time.Duration) {
	m.triggerSeconds.WithLabelValues(job).Observe(d.Seconds())
}

// ClaimLead sets the claim lead in use (scheduler.Observer).
func (m *Metrics) ClaimLead(d time.Duration) { m.claimLead.Set(d.Seconds()) }

// ConsulError counts a failed Consul request (leader.Metrics).
func (m *Metrics) ConsulError(op ConsulOp) {
	m.consulErrors.WithLabelValues(string(op)).Inc()
}

// Version is Options.Version: the sidecar's version, which it publishes
// with its job table.
func (m *Metrics) Version() string { return m.version }

// JobTableMismatch sets how many other live sidecars run a job table that
// differs from the leader's; the leader sets it, and 0 when its term ends.
func (m *Metrics) JobTableMismatch(n int) { m.tableMismatch.Set(float64(n)) }
