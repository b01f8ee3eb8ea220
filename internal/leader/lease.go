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
	rctx, cancel := context.WithTimeout(ctx, opts.requestTimeout())
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
	return time.Until(s.leaseUntil)
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
	s.mu.Unlock()
	s.log.Warn("leadership lease ended", "cause", cause)
	if f != nil {
		f(cause)
	}
}

// renewLoop renews about every TTL/3 with a per-request timeout. A renew
// that fails is retried sooner; it never extends the lease, which ends on
// its own timer (see watchExpiry) however long a request hangs.
func (s *session) renewLoop(ctx context.Context) {
	defer close(s.stopped)
	expiry := time.AfterFunc(s.remaining(), s.checkExpiry)
	defer expiry.Stop()
	every := s.opts.TTL / 3
	retry := min(s.opts.RetryInterval, s.opts.TTL/6)
	renew := time.NewTimer(every)
	defer renew.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.dead:
			return
		case <-renew.C:
		}
		sent := time.Now()
		rctx, cancel := context.WithTimeout(ctx, s.opts.requestTimeout())
		entry, _, err := s.client.Session().Renew(s.id, (&api.WriteOptions{}).WithContext(rctx))
		cancel()
		switch {
		case ctx.Err() != nil:
			return
		case err != nil:
			s.opts.Metrics.ConsulError("renew")
			s.log.Warn("session renew failed", "error", err, "lease_remaining", s.remaining().Round(time.Millisecond))
			renew.Reset(retry)
		case entry == nil:
			s.lose(errSessionGone)
			return
		default:
			s.mu.Lock()
			if s.cause == nil {
				s.leaseUntil = sent.Add(s.opts.leaseLength())
				expiry.Reset(time.Until(s.leaseUntil))
			}
			s.mu.Unlock()
			renew.Reset(every)
		}
	}
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
	ctx, cancel := context.WithTimeout(context.Background(), s.opts.requestTimeout())
	defer cancel()
	if _, err := s.client.Session().Destroy(s.id, (&api.WriteOptions{}).WithContext(ctx)); err != nil {
		s.opts.Metrics.ConsulError("destroy")
		s.log.Warn("session destroy failed", "error", err)
	}
}
