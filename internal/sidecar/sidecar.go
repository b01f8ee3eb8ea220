package sidecar

import (
	"context"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/leadercron/leadercron/internal/admin"
	"github.com/leadercron/leadercron/internal/appclient"
	"github.com/leadercron/leadercron/internal/config"
	"github.com/leadercron/leadercron/internal/kvlayout"
	"github.com/leadercron/leadercron/internal/ledger"
	"github.com/leadercron/leadercron/internal/metrics"
	"github.com/leadercron/leadercron/internal/scheduler"
)

// Elector runs elections and calls lead while this sidecar holds the lock
// (leader.Elector with Consul, leader.Standalone without).
//
// Run must not call lead again, nor return, while lead runs; it cancels
// lead's context when leadership is lost or ctx ends. When lead returns
// nil after ctx ended, Run hands the lock on and returns nil; when lead
// returns an error, Run leaves the lock to expire and returns the error.
type Elector interface {
	Run(ctx context.Context, lead func(context.Context, Term) error) error
}

// Term is one leadership: what the scheduler needs, and the take of a
// run-now request. TakeRequest reports true for exactly one caller
// fleet-wide; its errors follow Claim's (scheduler.NotApplied tells a
// refusal from an unknown outcome).
type Term interface {
	scheduler.Term
	TakeRequest(ctx context.Context, job string, index uint64) (bool, error)
}

// Ledger is the fleet's shared state outside the lock: slot history,
// run-now requests, and the snapshot /status shows.
type Ledger interface {
	// AppendAll records slot fates, by job; idempotent.
	AppendAll(ctx context.Context, entries map[string][]kvlayout.Entry) error
	// History is job's recorded slot fates, newest slot first.
	History(ctx context.Context, job string) ([]kvlayout.Entry, error)
	// Requests lists pending run-now requests; with waitIndex > 0 it
	// blocks until they change or about ledger.RequestsWait passes.
	Requests(ctx context.Context, waitIndex uint64) ([]kvlayout.Request, uint64, error)
	// MarkRequests makes sure a blocking Requests wakes only for the
	// requests (see kvlayout.Layout.Requests); idempotent.
	MarkRequests(ctx context.Context) error
	Snapshot(ctx context.Context) (ledger.Fleet, error)
}

// Deps are the parts the sidecar runs on; package cli builds them.
type Deps struct {
	Elector   Elector
	Ledger    Ledger // nil in standalone mode: no history, no run-now requests
	AppClient *appclient.Client
	Metrics   *metrics.Metrics
	Clock     scheduler.Clock // the scheduler's; scheduler.SystemClock{} in production
	Log       hclog.Logger
}

// Sidecar ties the elector, the scheduler, the app client and the status
// together.
type Sidecar struct {
	cfg       config.Config
	log       hclog.Logger
	elector   Elector
	appClient *appclient.Client
	jobs      []scheduler.Job // cfg.Jobs, as the scheduler runs them
	sched     *scheduler.Scheduler
	m         *metrics.Metrics

	ledger  Ledger         // nil in standalone mode
	history *historyWriter // nil in standalone mode
	gate    *healthGate    // nil without LEADERCRON_APP_HEALTH_URL

	mu             sync.Mutex
	term           Term // nil while not leading
	campaignCtx    context.Context
	cancelCampaign context.CancelCauseFunc
	campaignDone   chan struct{}
	campaignErr    error
	handedOver     bool
	lostTerms      int             // leaderships that ended by a loss, not a drain
	unknownReqs    map[string]bool // run requests for jobs this sidecar does not know, logged once
}

// New builds the sidecar for cfg from its dependencies.
func New(cfg config.Config, d Deps) *Sidecar {
	jobs := make([]scheduler.Job, len(cfg.Jobs))
	for i, j := range cfg.Jobs {
		jobs[i] = j.Job
	}
	s := &Sidecar{cfg: cfg, log: d.Log, elector: d.Elector, appClient: d.AppClient, m: d.Metrics, ledger: d.Ledger,
		jobs: jobs, unknownReqs: map[string]bool{}}
	opts := scheduler.Options{
		// Renewals come every TTL/4 and the lease is TTL*4/5 long, so
		// a healthy leader always has more than TTL/5 left; less means
		// renewals are failing and the lease is about to end.
		LeaseMargin: cfg.SessionTTL / 5,
		Observer:    d.Metrics,
	}
	if d.Ledger != nil {
		s.history = newHistoryWriter(d.Ledger, cfg.ID, d.Log.Named("history"))
		opts.Recorder = s.history
		opts.Fates = historyFates{d.Ledger}
	}
	if cfg.AppHealthURL != nil {
		s.gate = newHealthGate(d.AppClient, cfg, d.Log.Named("health"))
	}
	s.sched = scheduler.New(jobs, triggerer{d.AppClient}, d.Clock, d.Log.Named("scheduler"), opts)
	return s
}

// Run serves the admin endpoints on ln and campaigns until ctx ends and
// the shutdown sequence is done (see lifecycle.go). It closes ln.
func (s *Sidecar) Run(ctx context.Context, ln net.Listener) error {
	if !admin.LoopbackOnly(ln.Addr()) && !s.cfg.AdminToken.IsSet() {
		s.log.Warn("admin port reachable beyond loopback and no admin token: POST /handover answers 401 to non-loopback callers",
			"listen", ln.Addr().String(), "variable", "LEADERCRON_ADMIN_TOKEN")
	}
	// The admin server stays up through the drain, so it has its own
	// context; if it fails, the sidecar shuts down gracefully.
	serveCtx, stopServe := context.WithCancel(context.Background())
	defer stopServe()
	runCtx, cancelRun := context.WithCancel(ctx)
	defer cancelRun()
	served := make(chan struct{})
	var serveErr error
	go func() {
		h := admin.Handler(admin.Endpoints{Status: s.status, Metrics: s.m.Handler(), Handover: s.handover,
			Token: s.cfg.AdminToken.Bytes(), Log: s.log.Named("admin")})
		serveErr = admin.Serve(serveCtx, ln, h, s.log.Named("admin"))
		close(served)
	}()
	go func() {
		select {
		case <-served:
			cancelRun()
		case <-runCtx.Done():
		}
	}()

	if s.gate != nil {
		gateCtx, stopGate := context.WithCancel(context.Background())
		defer stopGate()
		go s.gate.run(gateCtx)
	}
	memberCtx, stopMember := context.WithCancel(context.Background())
	memberDone := make(chan struct{})
	go func() {
		defer close(memberDone)
		s.keepMember(memberCtx)
	}()
	runErr := s.campaign(runCtx)
	stopMember() // its delete runs beside the history flush
	if s.history != nil {
		s.history.close(HistoryFlushTimeout)
	}
	<-memberDone
	stopServe()
	<-served
	if runErr != nil {
		return runErr
	}
	if serveErr != nil {
		return fmt.Errorf("admin server: %w", serveErr)
	}
	s.log.Info("leadercron stopped")
	return nil
}

func (s *Sidecar) setTerm(t Term) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.term = t
}

// HistoryFlushTimeout bounds the wait, at exit, for slot fates still queued
// for the ledger: one batch Txn (milliseconds on a healthy agent) for the
// last second's slots. What is not written by then is logged as lost.
const HistoryFlushTimeout = time.Second
