package sidecar

import (
	"context"
	"maps"
	"strings"
	"time"

	"github.com/cenkalti/backoff/v5"

	"github.com/leadercron/leadercron/internal/kvlayout"
	"github.com/leadercron/leadercron/internal/ledger"
	"github.com/leadercron/leadercron/internal/metrics"
)

// fleetLedger is the part of the ledger (ledger.Store) that keeps P/fleet/:
// the job table and the member records (see package ledger). A Ledger
// without it, such as a test's fake, publishes nothing.
type fleetLedger interface {
	PublishJobTable(ctx context.Context, t kvlayout.JobTable) (bool, error)
	PublishMember(ctx context.Context, m kvlayout.Member) error
	RemoveMember(ctx context.Context, m kvlayout.Member) (bool, error)
	Tables(ctx context.Context, waitIndex uint64, wait time.Duration) (ledger.Tables, uint64, error)
}

// Publishing's pacing: at most one list of P/fleet/ per fleetMinInterval
// (a blocking list wakes on every write under P/fleet/), and after a
// failed request a pause from fleetRetryMin doubling to fleetRetryMax, ±20 %
// (cenkalti/backoff, like the elector's; so
// a token that may not write P/fleet/ costs a warning every few minutes,
// not a stream of them).
const (
	fleetMinInterval = time.Second
	fleetRetryMin    = time.Second
	fleetRetryMax    = ledger.MemberRefresh
	// fleetRemoveTimeout bounds the delete of the member record when the
	// sidecar stops. It runs beside the history flush, so it must not
	// exceed HistoryFlushTimeout, whose place in the shutdown budget it
	// shares.
	fleetRemoveTimeout = time.Second
)

// publishJobTable runs while this sidecar leads: it publishes the job
// table (P/fleet/table), keeps it there, and compares every live member's table with its own, reporting those
// that differ with a warning and leadercron_job_table_mismatch. It returns
// when ctx ends.
//
// Consul writes are few: the table once per leadership (again only if the
// key stops holding it) and a delete per member record found stale (every
// sidecar keeps its own record: keepMember). None is per slot. A failed request is logged, counted in
// leadercron_consul_errors_total (op publish_fleet or watch_fleet) and
// retried later; nothing else waits on it. Every write is an idempotent
// put or check-and-set, so one whose outcome is unknown is harmless.
func (s *Sidecar) publishJobTable(ctx context.Context, term Term) {
	store, ok := s.ledger.(fleetLedger)
	if !ok {
		return
	}
	m := s.member()
	p := &fleetPublisher{s: s, store: store, token: term.Token(), specs: m.Jobs, digest: m.Digest,
		version: m.Version, reported: map[string]string{}}
	defer s.m.JobTableMismatch(0)
	p.run(ctx)
}

// keepMember keeps this sidecar's member record (P/fleet/members/<id>:
// its job table and version) while it runs, leader or standby, so that the
// leader sees a replica whose table differs even before it ever leads (a
// deploy half done): written at start and every ledger.MemberRefresh,
// retried after a failure, and deleted when the sidecar stops. The record
// is a plain put, so one whose outcome is unknown is harmless; a delete
// that fails leaves a record the leader removes once it is stale
// (ledger.MemberTTL).
func (s *Sidecar) keepMember(ctx context.Context) {
	store, ok := s.ledger.(fleetLedger)
	if !ok {
		return
	}
	m := s.member()
	retry := &backoff.ExponentialBackOff{InitialInterval: fleetRetryMin, RandomizationFactor: 0.2,
		Multiplier: 2, MaxInterval: fleetRetryMax}
	for wait := time.Duration(0); sleep(ctx, wait); {
		m.At = time.Now()
		if err := store.PublishMember(ctx, m); err != nil {
			if ctx.Err() != nil {
				break
			}
			s.m.ConsulError(metrics.OpPublishFleet)
			s.log.Warn("publish the member record failed; retrying", "error", err)
			wait = retry.NextBackOff()
			continue
		}
		retry.Reset()
		wait = ledger.MemberRefresh
	}
	rctx, cancel := context.WithTimeout(context.Background(), fleetRemoveTimeout)
	defer cancel()
	if _, err := store.RemoveMember(rctx, kvlayout.Member{ID: s.cfg.ID}); err != nil {
		s.m.ConsulError(metrics.OpPublishFleet)
		s.log.Warn("remove member record failed; the leader removes it once stale", "error", err,
			"stale_after", ledger.MemberTTL)
	}
}

// member is this sidecar's member record, without its time.
func (s *Sidecar) member() kvlayout.Member {
	specs := ledger.JobSpecs(s.jobs)
	return kvlayout.Member{ID: s.cfg.ID, Version: s.m.Version(), Digest: ledger.Digest(specs), Jobs: specs}
}

type fleetPublisher struct {
	s       *Sidecar
	store   fleetLedger
	token   uint64
	specs   []kvlayout.JobSpec
	digest  string
	version string

	tableDone bool              // P/fleet/table holds this table, or a later leader's
	reported  map[string]string // the differing members last reported: ID -> digest
}

func (p *fleetPublisher) run(ctx context.Context) {
	var (
		index uint64
		last  time.Time
		retry = &backoff.ExponentialBackOff{InitialInterval: fleetRetryMin, RandomizationFactor: 0.2,
			Multiplier: 2, MaxInterval: fleetRetryMax}
	)
	for ctx.Err() == nil {
		failed := !p.publish(ctx)
		if ctx.Err() != nil {
			return
		}
		wait := ledger.MemberRefresh
		if failed {
			wait = retry.NextBackOff()
		} else {
			retry.Reset()
		}
		if !sleep(ctx, fleetMinInterval-time.Since(last)) {
			return
		}
		last = time.Now()
		wait = max(wait, fleetMinInterval)
		lctx, cancel := context.WithTimeout(ctx, wait+wait/16+5*time.Second)
		t, next, err := p.store.Tables(lctx, index, wait)
		cancel()
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			p.s.m.ConsulError(metrics.OpWatchFleet)
			p.s.log.Warn("read the fleet's job tables failed; retrying", "error", err)
			index = 0
			if !sleep(ctx, retry.NextBackOff()) {
				return
			}
			continue
		}
		index = next
		p.check(ctx, t)
	}
}

// publish writes the table if it is due, and reports whether the write, if
// tried, succeeded.
func (p *fleetPublisher) publish(ctx context.Context) bool {
	ok := true
	if !p.tableDone {
		t := kvlayout.JobTable{Digest: p.digest, Jobs: p.specs, Publisher: p.s.cfg.ID, Version: p.version,
			FencingToken: p.token, PublishedAt: time.Now()}
		wrote, err := p.store.PublishJobTable(ctx, t)
		switch {
		case err != nil && ctx.Err() == nil:
			ok = false
			p.s.m.ConsulError(metrics.OpPublishFleet)
			p.s.log.Warn("publish the job table failed; retrying", "error", err)
		case err == nil:
			p.tableDone = true
			if wrote {
				p.s.log.Info("published the job table", "digest", ledger.ShortDigest(p.digest), "jobs", len(p.specs),
					"fencing_token", p.token)
			}
		}
	}
	return ok
}

// check compares what P/fleet/ holds with this leader's table: it marks
// the table for a rewrite when it is gone or changed, removes stale member records, and reports live members whose
// table differs.
func (p *fleetPublisher) check(ctx context.Context, t ledger.Tables) {
	for _, pr := range t.Problems {
		p.s.log.Warn("undecodable value under the fleet's job tables", "problem", pr)
	}
	switch tb := t.Table; {
	case tb == nil:
		p.tableDone = false
	case tb.FencingToken > p.token:
		p.tableDone = true // a later leader's: this term is ending
	default:
		p.tableDone = tb.FencingToken == p.token && tb.Publisher == p.s.cfg.ID && tb.Digest == p.digest
	}
	now := time.Now()
	differ := map[string]string{}
	var lines []string
	for _, m := range t.Members {
		switch {
		case m.ID == p.s.cfg.ID:
		case !ledger.Live(m, now):
			p.removeStale(ctx, m)
		case m.Digest != p.digest:
			differ[m.ID] = m.Digest
			diff := ledger.DiffJobs(p.specs, m.Jobs, "this leader", m.ID)
			lines = append(lines, m.ID+" (version "+m.Version+", digest "+ledger.ShortDigest(m.Digest)+"): "+
				strings.Join(diff, "; "))
		}
	}
	p.s.m.JobTableMismatch(len(differ))
	if maps.Equal(differ, p.reported) {
		return
	}
	if len(differ) > 0 {
		p.s.log.Warn("replicas of this fleet run a different job table (a deploy half done?)", "replicas", len(differ),
			"digest", ledger.ShortDigest(p.digest), "differences", strings.Join(lines, " | "))
	} else {
		p.s.log.Info("every live replica runs this leader's job table again", "digest", ledger.ShortDigest(p.digest))
	}
	p.reported = differ
}

// removeStale deletes a member record older than ledger.MemberTTL, unless
// it was rewritten since it was read (delete-cas).
func (p *fleetPublisher) removeStale(ctx context.Context, m kvlayout.Member) {
	removed, err := p.store.RemoveMember(ctx, m)
	switch {
	case err != nil && ctx.Err() == nil:
		p.s.m.ConsulError(metrics.OpPublishFleet)
		p.s.log.Warn("remove a stale member record failed", "member", m.ID, "error", err)
	case removed:
		p.s.log.Info("removed a stale member record", "member", m.ID, "written_at", m.At.UTC(),
			"stale_after", ledger.MemberTTL)
	}
}

// sleep waits d or until ctx ends, and reports whether ctx is still live.
func sleep(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	select {
	case <-ctx.Done():
		return false
	case <-time.After(d):
		return true
	}
}
