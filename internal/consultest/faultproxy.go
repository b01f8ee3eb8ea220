package consultest

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// FaultProxy is an HTTP reverse proxy in front of a Consul agent's HTTP
// API that can misbehave the way an overloaded or failing agent does:
// Fail answers every new request with an error status (500 as during a
// leader election, 429 and 503 as from Consul's rate limiter), and Cut
// resets every open connection and every new one with a TCP RST, as a
// restarting agent or a load balancer does; Delay and DelayBetween slow
// every request. LoseAnswers makes writes ambiguous: a matching request
// is forwarded, the agent applies it and answers, and then the answer is
// lost (the client connection reset, or a 500 "rpc error making call"
// sent instead, as Consul does when its Raft leader changes while it
// commits), optionally after holding it a while. Heal returns to
// forwarding.
// For a black hole (bytes stop, connections stay open) use Proxy.
//
// Guarantees: a request already forwarded when Fail starts is answered by
// the agent; Cut breaks it. Fail and Cut take precedence over LoseAnswers.
// A request selected by a LoseAnswers rule is forwarded in full and its
// answer read to the end before it is lost, and its forwarding is not
// cancelled when the client gives up, so the agent has applied it (or
// refused it) when the loss is counted; Lost tells the two apart by the
// agent's answer. Every Nth selection counts matching requests in arrival
// order, per rule; a Probability selection replays with the same Seed and
// the same order of matching requests. Delays apply to every request,
// before anything else, and are kept by Heal. The proxy is closed by
// t.Cleanup. Not guaranteed: that a request arriving at the instant of a
// mode change sees the new mode.
type FaultProxy struct {
	Addr string

	srv *http.Server
	ln  net.Listener
	rp  *httputil.ReverseProxy

	mu       sync.Mutex
	status   int           // answer with this status; 0 forwards
	cut      bool          // reset connections
	delay    time.Duration // hold each request this long before forwarding
	delayHi  time.Duration // with delayRng: hold each request a random [delay, delayHi)
	delayRng *rand.Rand
	conns    map[net.Conn]struct{}
	injected int
	rules    []*ruleState
	lost     map[Op]LostAnswers
}

// Op is the kind of a Consul request, as FaultProxy tells them apart for
// LoseAnswers.
type Op string

// The operations leadercron sends (and a few others).
const (
	// OpClaim is a slot claim: PUT /v1/txn whose ops hold a cas on a
	// key ending in /last ([check-session, cas <prefix>/jobs/<job>/last,
	// get-tree]).
	OpClaim Op = "claim"
	// OpTake takes a run-now request: PUT /v1/txn with a delete-cas
	// ([check-session, check-index, delete-cas <prefix>/requests/<job>]).
	OpTake Op = "take"
	// OpAcquire takes the lock: PUT /v1/txn with a lock verb, or PUT
	// /v1/kv/<key>?acquire=<session> (api.Lock).
	OpAcquire Op = "acquire"
	// OpTxn is any other PUT /v1/txn.
	OpTxn Op = "txn"
	// OpRenew is PUT /v1/session/renew/<session>.
	OpRenew Op = "renew"
	// OpRelease is PUT /v1/kv/<key>?release=<session>.
	OpRelease Op = "release"
	// OpSessionCreate is PUT /v1/session/create.
	OpSessionCreate Op = "session_create"
	// OpSessionDestroy is PUT /v1/session/destroy/<session>.
	OpSessionDestroy Op = "session_destroy"
	// OpWrite is any other PUT or DELETE under /v1/kv/.
	OpWrite Op = "write"
	// OpRead is any GET.
	OpRead Op = "read"
	// OpOther is anything else.
	OpOther Op = "other"
)

// Request is what a Match sees of a request: its operation, its method,
// path and query, and its body (the request's own body is restored for
// forwarding).
type Request struct {
	Op     Op
	Method string
	Path   string
	Query  url.Values
	Body   []byte
}

// Match selects requests for LoseAnswers.
type Match func(Request) bool

// Ops matches requests of any of the operations ops.
func Ops(ops ...Op) Match {
	return func(r Request) bool {
		for _, o := range ops {
			if r.Op == o {
				return true
			}
		}
		return false
	}
}

// Loss is what becomes of an answer the agent gave to a selected request.
type Loss int

const (
	// ResetAnswer resets the client connection (TCP RST) instead of
	// answering: the client sees a transport error.
	ResetAnswer Loss = iota + 1
	// Answer500 answers 500 "rpc error making call: leadership lost
	// while committing log" instead of the agent's answer.
	Answer500
	// LateAnswer delivers the agent's own answer, after Rule.Hold: a
	// client whose timeout is shorter sees a timeout.
	LateAnswer
)

func (l Loss) String() string {
	switch l {
	case ResetAnswer:
		return "reset"
	case Answer500:
		return "500"
	case LateAnswer:
		return "late"
	}
	return "loss(" + strconv.Itoa(int(l)) + ")"
}

// Rule selects matching requests whose answers are lost. Exactly one of
// Every and Probability should be set; with neither, every matching
// request is selected.
type Rule struct {
	Match Match // nil matches every request
	Loss  Loss  // zero means ResetAnswer
	// Every selects the Nth, 2Nth, ... matching request (1: each one).
	Every int
	// Probability selects each matching request with this probability,
	// drawn from a source seeded with Seed.
	Probability float64
	Seed        uint64
	// Max stops selecting after this many selections; 0: no limit.
	Max int
	// Hold keeps the agent's answer this long before losing (or, with
	// LateAnswer, delivering) it; the hold ends early if the client
	// gives up.
	Hold time.Duration
	// OnApplied, if set, is called with each selected request the agent
	// applied, as soon as its answer came and before it is lost. It runs
	// on the proxy's handler goroutine and must not block.
	OnApplied func(Request)
}

type ruleState struct {
	Rule
	matched, selected int
	rng               *rand.Rand
}

// LostAnswers counts, for one operation, the answers LoseAnswers lost or
// held.
type LostAnswers struct {
	Lost    int // answers lost (reset, replaced by a 500, or the client gone while held)
	Applied int // of those, the ones the agent had applied: 2xx, and not "false"
	// Late counts LateAnswer answers delivered after Hold (to a client
	// still waiting), applied or not.
	Late int
}

// NewFaultProxy listens on a free loopback port and forwards to the agent
// whose HTTP API is at target (host:port).
func NewFaultProxy(t testing.TB, target string) *FaultProxy {
	t.Helper()
	u := &url.URL{Scheme: "http", Host: target}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("fault proxy listen: %v", err)
	}
	p := &FaultProxy{Addr: ln.Addr().String(), ln: ln, conns: map[net.Conn]struct{}{}, lost: map[Op]LostAnswers{}}
	p.rp = &httputil.ReverseProxy{
		Rewrite: func(r *httputil.ProxyRequest) { r.SetURL(u) },
		// Blocking queries answer once; nothing to flush early.
		Transport: &http.Transport{DisableCompression: true, MaxIdleConnsPerHost: 16},
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			http.Error(w, "fault proxy: "+err.Error(), http.StatusBadGateway)
		},
	}
	p.srv = &http.Server{Handler: http.HandlerFunc(p.serve), ConnState: p.connState}
	go func() { _ = p.srv.Serve(ln) }()
	t.Cleanup(p.Close)
	return p
}

func (p *FaultProxy) serve(w http.ResponseWriter, r *http.Request) {
	p.mu.Lock()
	status, cut, delay := p.status, p.cut, p.delay
	if p.delayRng != nil && p.delayHi > delay {
		delay += time.Duration(p.delayRng.Int64N(int64(p.delayHi - delay)))
	}
	if status != 0 || cut {
		p.injected++
	}
	hasRules := len(p.rules) > 0
	p.mu.Unlock()
	if delay > 0 && status == 0 && !cut {
		if !wait(r.Context(), delay) {
			return
		}
		// A mode may have changed while the request was held.
		p.mu.Lock()
		status, cut = p.status, p.cut
		if status != 0 || cut {
			p.injected++
		}
		p.mu.Unlock()
	}
	switch {
	case cut:
		resetHijacked(w)
		return
	case status != 0:
		http.Error(w, faultBody(status), status)
		return
	}
	if hasRules {
		if req, ok := readRequest(r); ok {
			if rule := p.selectRule(req); rule != nil {
				p.loseAnswer(w, r, req, rule)
				return
			}
		}
	}
	p.rp.ServeHTTP(w, r)
}

// readRequest reads r's body (restoring it) and classifies r.
func readRequest(r *http.Request) (Request, bool) {
	req := Request{Method: r.Method, Path: r.URL.Path, Query: r.URL.Query()}
	if r.Body != nil && r.Body != http.NoBody {
		b, err := io.ReadAll(r.Body)
		_ = r.Body.Close()
		if err != nil {
			return req, false
		}
		req.Body = b
		r.Body = io.NopCloser(bytes.NewReader(b))
		r.ContentLength = int64(len(b))
	}
	req.Op = classify(req)
	return req, true
}

// classify names the operation of a request.
func classify(r Request) Op {
	if r.Method == http.MethodGet {
		return OpRead
	}
	switch {
	case r.Path == "/v1/txn" && r.Method == http.MethodPut:
		var ops []struct {
			KV *struct{ Verb, Key string }
		}
		if json.Unmarshal(r.Body, &ops) != nil {
			return OpTxn
		}
		op := OpTxn
		for _, o := range ops {
			if o.KV == nil {
				continue
			}
			switch {
			case o.KV.Verb == "lock":
				return OpAcquire
			case o.KV.Verb == "delete-cas":
				op = OpTake
			case o.KV.Verb == "cas" && strings.HasSuffix(o.KV.Key, "/last"):
				op = OpClaim
			}
		}
		return op
	case strings.HasPrefix(r.Path, "/v1/session/renew/"):
		return OpRenew
	case r.Path == "/v1/session/create":
		return OpSessionCreate
	case strings.HasPrefix(r.Path, "/v1/session/destroy/"):
		return OpSessionDestroy
	case strings.HasPrefix(r.Path, "/v1/kv/"):
		switch {
		case r.Query.Has("release"):
			return OpRelease
		case r.Query.Has("acquire"):
			return OpAcquire
		}
		return OpWrite
	}
	return OpOther
}

// selectRule returns the first rule that matches req, if it selects req.
func (p *FaultProxy) selectRule(req Request) *ruleState {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, rs := range p.rules {
		if rs.Match != nil && !rs.Match(req) {
			continue
		}
		rs.matched++
		if rs.Max > 0 && rs.selected >= rs.Max {
			return nil
		}
		var sel bool
		switch {
		case rs.Every > 0:
			sel = rs.matched%rs.Every == 0
		case rs.Probability > 0:
			sel = rs.rng.Float64() < rs.Probability
		default:
			sel = true
		}
		if !sel {
			return nil
		}
		rs.selected++
		return rs
	}
	return nil
}

// loseAnswer forwards r, lets the agent answer in full, and then loses
// the answer as rule says.
func (p *FaultProxy) loseAnswer(w http.ResponseWriter, r *http.Request, req Request, rule *ruleState) {
	rec := &recorder{header: http.Header{}}
	// The agent applies the request whatever the client does meanwhile.
	fctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), time.Minute)
	p.rp.ServeHTTP(rec, r.WithContext(fctx))
	cancel()
	status := rec.status
	if status == 0 {
		status = http.StatusOK
	}
	applied := status >= 200 && status < 300 && strings.TrimSpace(rec.body.String()) != "false"
	if applied && rule.OnApplied != nil {
		rule.OnApplied(req)
	}
	if rule.Hold > 0 {
		wait(r.Context(), rule.Hold)
	}
	loss := rule.Loss
	if loss == 0 {
		loss = ResetAnswer
	}
	if loss == LateAnswer && r.Context().Err() == nil {
		// Delivered after all: late, not lost.
		p.mu.Lock()
		c := p.lost[req.Op]
		c.Late++
		p.lost[req.Op] = c
		p.mu.Unlock()
		for k, v := range rec.header {
			w.Header()[k] = v
		}
		w.WriteHeader(status)
		_, _ = w.Write(rec.body.Bytes())
		return
	}
	p.mu.Lock()
	c := p.lost[req.Op]
	c.Lost++
	if applied {
		c.Applied++
	}
	p.lost[req.Op] = c
	p.mu.Unlock()
	switch loss {
	case Answer500:
		http.Error(w, "rpc error making call: leadership lost while committing log", http.StatusInternalServerError)
	case LateAnswer:
		// The client is gone.
	default:
		resetHijacked(w)
	}
}

// recorder keeps an answer instead of sending it.
type recorder struct {
	header http.Header
	status int
	body   bytes.Buffer
}

func (r *recorder) Header() http.Header { return r.header }

func (r *recorder) WriteHeader(status int) {
	if r.status == 0 {
		r.status = status
	}
}

func (r *recorder) Write(b []byte) (int, error) {
	if r.status == 0 {
		r.status = http.StatusOK
	}
	return r.body.Write(b)
}

// wait sleeps d, or until ctx ends; it reports whether d passed.
func wait(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

func faultBody(status int) string {
	switch status {
	case http.StatusInternalServerError:
		return "rpc error making call: No cluster leader"
	case http.StatusTooManyRequests:
		return "rpc error making call: rate limit exceeded, try again later"
	case http.StatusServiceUnavailable:
		return "rpc error making call: rate limit exceeded, try a different server"
	}
	return http.StatusText(status)
}

func (p *FaultProxy) connState(c net.Conn, st http.ConnState) {
	p.mu.Lock()
	defer p.mu.Unlock()
	switch st {
	case http.StateNew:
		if p.cut {
			reset(c)
			return
		}
		p.conns[c] = struct{}{}
	case http.StateClosed, http.StateHijacked:
		delete(p.conns, c)
	}
}

// Fail answers every new request with status (500, 429, 503, ...) until
// Heal.
func (p *FaultProxy) Fail(status int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.status = status
}

// Cut resets every open client connection with a TCP RST, and every new
// one, until Heal.
func (p *FaultProxy) Cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut = true
	for c := range p.conns {
		reset(c)
		delete(p.conns, c)
	}
}

// Delay holds every new request for d before forwarding it: a slow
// agent or a long network path. It stays until Delay(0); Heal keeps it.
func (p *FaultProxy) Delay(d time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.delay, p.delayHi, p.delayRng = d, 0, nil
}

// DelayBetween holds every new request for a duration drawn uniformly
// from [lo, hi) before forwarding it, from a source seeded with seed. It
// stays until Delay(0); Heal keeps it.
func (p *FaultProxy) DelayBetween(lo, hi time.Duration, seed uint64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.delay, p.delayHi, p.delayRng = lo, hi, rand.New(rand.NewPCG(seed, seed^0x5eed))
}

// LoseAnswers replaces the ambiguous-write rules: each request goes to
// the first rule that matches it, which counts it and may select it;
// a selected request is forwarded and applied, and its answer lost. With
// no rules, answers are delivered again. Heal clears the rules too.
func (p *FaultProxy) LoseAnswers(rules ...Rule) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.rules = p.rules[:0]
	for _, r := range rules {
		rs := &ruleState{Rule: r}
		if r.Probability > 0 {
			rs.rng = rand.New(rand.NewPCG(r.Seed, r.Seed^0xa5a5))
		}
		p.rules = append(p.rules, rs)
	}
}

// Lost returns, per operation, how many answers LoseAnswers lost so far,
// and how many of those the agent had applied.
func (p *FaultProxy) Lost() map[Op]LostAnswers {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make(map[Op]LostAnswers, len(p.lost))
	for k, v := range p.lost {
		out[k] = v
	}
	return out
}

// Heal returns to forwarding every request (after the Delay, if any),
// and to delivering every answer.
func (p *FaultProxy) Heal() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.status, p.cut = 0, false
	p.rules = nil
}

// Injected returns how many requests got an injected fault from Fail or
// Cut so far (LoseAnswers is counted by Lost).
func (p *FaultProxy) Injected() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.injected
}

// Close stops the proxy and closes every connection.
func (p *FaultProxy) Close() { _ = p.srv.Close() }

// reset closes c with SO_LINGER 0, so the peer gets a TCP RST rather than
// a FIN.
func reset(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	_ = c.Close()
}

func resetHijacked(w http.ResponseWriter) {
	hj, ok := w.(http.Hijacker)
	if !ok {
		return
	}
	c, _, err := hj.Hijack()
	if err != nil {
		return
	}
	reset(c)
}
