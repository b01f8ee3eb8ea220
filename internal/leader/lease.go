package leader

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"

	"github.com/leadercron/leadercron/internal/metrics"
)

// ErrLockLost is wrapped by every cause that ends a leadership.
var ErrLockLost = errors.New("lock lost")

// ErrSessionRejected means Consul refused the session settings themselves
// (such as a TTL below the server's session_ttl_min); retrying cannot help.
var ErrSessionRejected = errors.New("consul rejected the session settings")

var (
	errLeaseExpired = fmt.Errorf("%w: lease expired with no successful renew", ErrLockLost)
	errSessionGone  = fmt.Errorf("%w: session no longer exists (renew answered 404)", ErrLockLost)
)

// session is one Consul session with its renew loop and local lease.
type session struct {
	id     string
	client *api.Client
	opts   *Options
	log    hclog.Logger

	mu         sync.Mutex
	leaseUntil time.Time // carries a monotonic reading
	cause      error     // why the session is dead; nil while alive
	dead       chan struct{}
	onLost     func(error)

	stop    context.CancelFunc
	stopped chan struct{}
}

// newSession creates a TTL-only session (no node or service checks,
// behavior release, explicit lock-delay) and starts renewing it.
func newSession(ctx context.Context, client *api.Client, opts *Options, log hclog.Logger) (*session, error) {
	entry := &api.SessionEntry{
		Name:      opts.SessionName,
		TTL:       opts.TTL.String(),
		LockDelay: opts.LockDelay,
		Behavior:  api.SessionBehaviorRelease,
	}
	sent := time.Now()
	rctx, cancel := context.WithTimeout(ctx, opts.renewTimeout())
	defer cancel()
	id, _, err := client.Session().CreateNoChecks(entry, (&api.WriteOptions{}).WithContext(rctx))
	if err != nil {
		if strings.Contains(err.Error(), "Invalid Session TTL") || strings.Contains(err.Error(), "Invalid Session Behavior") {
			return nil, fmt.Errorf("create session with ttl %s: %w: %v", opts.TTL, ErrSessionRejected, err)
		}
		return nil, fmt.Errorf("create session: %w", err)
	}
	rctx2, stop := context.WithCancel(context.Background())
	s := &session{
		id:         id,
		client:     client,
		opts:       opts,
		log:        log.With("session", id),
		leaseUntil: sent.Add(opts.leaseLength()),
		dead:       make(chan struct{}),
		stop:       stop,
		stopped:    make(chan struct{}),
	}
	go s.renewLoop(rctx2)
	return s, nil
}

// remaining is how long the local lease still runs; zero or less once it
// has ended or the session is known to be gone.
func (s *session) remaining() time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cause != nil {
		return 0
	}
	return leaseLeft(s.leaseUntil, time.Now())
}

// leaseLeft is how long a lease ending at until still runs at now, by the
// monotonic clock and by the wall clock, whichever ends it first. The
// monotonic clock alone stops while a host or VM is suspended, so after a
// resume the lease would still look valid although Consul's timers ran
// on; the wall clock alone may be stepped back by NTP. Both readings come
// from the same send time, so neither can lengthen the lease.
func leaseLeft(until, now time.Time) time.Duration {
	return min(until.Sub(now), until.Round(0).Sub(now.Round(0)))
}

func (s *session) lostCause() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cause
}

// setOnLost registers f to be called once when the session is lost; if it
// is lost already, f is called at once.
func (s *session) setOnLost(f func(error)) {
	s.mu.Lock()
	cause := s.cause
	s.onLost = f
	s.mu.Unlock()
	if cause != nil && f != nil {
		f(cause)
	}
}

// lose marks the session dead with cause; only the first cause counts.
func (s *session) lose(cause error) {
	s.mu.Lock()
	if s.cause != nil {
		s.mu.Unlock()
		return
	}
	s.cause = cause
	f := s.onLost
	close(s.dead)
	ended := time.Now()
	if s.leaseUntil.Before(ended) {
		ended = s.leaseUntil
	}
	s.mu.Unlock()
	// ended_at is when this sidecar stopped being allowed to act: the
	// lease's end, or now if the loss came first. The fault suite judges
	// stale triggers against it.
	s.log.Warn("leadership lease ended", "cause", cause, "ended_at", ended.UTC().Format(time.RFC3339Nano))
	if f != nil {
		f(cause)
	}
}

// renewLoop sends a renew every renewPeriod (TTL/4), counted from the
// previous renew's send rather than its answer, so that a slow agent does
// not stretch the period: with agent latency L each renew still extends the
// lease to its send time + TTL - TTL/5. A renew may take up to renewTimeout
// (TTL/2), longer than the period, so renews overlap; the lease is extended
// by whichever answer carries the latest send time. The lease stays
// continuous while answers come within the timeout: the next renew is sent
// TTL/4 after one whose lease lasts 0.8 TTL, and is answered within TTL/2,
// so 0.05 TTL is left over for scheduling delays (more for faster answers:
// 0.15 TTL at 0.4 TTL of latency). A renew that
// fails is retried sooner; it never extends the lease, which ends on its
// own timer (see checkExpiry) however long a request hangs.
func (s *session) renewLoop(ctx context.Context) {
	defer close(s.stopped)
	expiry := time.AfterFunc(s.remaining(), s.checkExpiry)
	defer expiry.Stop()
	every := s.opts.renewPeriod()
	retry := min(s.opts.RetryInterval, s.opts.TTL/6)
	results := make(chan renewResult, maxRenewsInFlight)
	var inflight sync.WaitGroup
	defer inflight.Wait() // each renew ends with ctx at the latest
	running := 0
	// The first renew goes at once: the lease counts from the create's
	// send, and an acquire follows the create, so with a slow agent the
	// create's lease alone would end about when the leadership begins.
	nextAt := time.Now()
	next := time.NewTimer(0)
	defer next.Stop()
	schedule := func(at time.Time) {
		nextAt = at
		next.Reset(time.Until(at))
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.dead:
			return
		case <-next.C:
			schedule(time.Now().Add(every))
			if running == maxRenewsInFlight {
				continue // both still waiting: a third adds only load
			}
			running++
			inflight.Go(func() { results <- s.renew(ctx) })
		case r := <-results:
			running--
			if ctx.Err() != nil {
				return
			}
			if !s.renewed(r, expiry) {
				return
			}
			if at := time.Now().Add(retry); r.err != nil && at.Before(nextAt) {
				schedule(at)
			}
		}
	}
}

// maxRenewsInFlight bounds concurrent renews: a renew lasts at most
// renewTimeout (TTL/2), two renew periods, so at most two are in flight
// when the next is due, and a third slot covers a timer that fires a
// little early.
const maxRenewsInFlight = 3

type renewResult struct {
	sent  time.Time
	entry *api.SessionEntry
	err   error
}

func (s *session) renew(ctx context.Context) renewResult {
	sent := time.Now()
	rctx, cancel := context.WithTimeout(ctx, s.opts.renewTimeout())
	defer cancel()
	entry, _, err := s.client.Session().Renew(s.id, (&api.WriteOptions{}).WithContext(rctx))
	return renewResult{sent: sent, entry: entry, err: err}
}

// renewed applies one renew's answer; false means the session is gone.
func (s *session) renewed(r renewResult, expiry *time.Timer) bool {
	switch {
	case r.err != nil:
		// Unknown: Consul may have renewed it or not. The lease
		// stays as it was and ends on its own timer.
		s.opts.Metrics.ConsulError(metrics.OpRenew)
		s.log.Warn("session renew failed", "error", r.err, "lease_remaining", s.remaining().Round(time.Millisecond))
		return true
	case r.entry == nil:
		s.lose(errSessionGone)
		return false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if until := r.sent.Add(s.opts.leaseLength()); s.cause == nil && until.After(s.leaseUntil) {
		s.leaseUntil = until
		expiry.Reset(time.Until(until))
	}
	return true
}

// checkExpiry runs when the lease timer fires: it ends the session's
// leadership if no renew has moved the lease on meanwhile.
func (s *session) checkExpiry() {
	if s.remaining() <= 0 && s.lostCause() == nil {
		s.lose(errLeaseExpired)
	}
}

// halt stops renewing without touching the session in Consul: it then
// expires by TTL, after which the lock-delay applies.
func (s *session) halt() {
	s.stop()
	<-s.stopped
}

// destroy stops renewing and destroys the session, best effort. Keys it
// still holds are released by Consul and get the lock-delay.
func (s *session) destroy() {
	s.halt()
	ctx, cancel := context.WithTimeout(context.Background(), FinalRequestTimeout)
	defer cancel()
	if _, err := s.client.Session().Destroy(s.id, (&api.WriteOptions{}).WithContext(ctx)); err != nil {
		s.opts.Metrics.ConsulError(metrics.OpDestroy)
		s.log.Warn("session destroy failed", "error", err)
	}
}
