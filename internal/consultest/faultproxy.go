package consultest

import (
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"sync"
	"testing"
	"time"
)

// FaultProxy is an HTTP reverse proxy in front of a Consul agent's HTTP
// API that can misbehave the way an overloaded or failing agent does:
// Fail answers every new request with an error status (500 as during a
// leader election, 429 and 503 as from Consul's rate limiter), and Cut
// resets every open connection and every new one with a TCP RST, as a
// restarting agent or a load balancer does; Delay slows every request.
// Heal returns to forwarding.
// For a black hole (bytes stop, connections stay open) use Proxy.
//
// Guarantees: a request already forwarded when Fail starts is answered by
// the agent; Cut breaks it. The proxy is closed by t.Cleanup. Not
// guaranteed: that a request arriving at the instant of a mode change sees
// the new mode.
type FaultProxy struct {
	Addr string

	srv *http.Server
	ln  net.Listener

	mu       sync.Mutex
	status   int           // answer with this status; 0 forwards
	cut      bool          // reset connections
	delay    time.Duration // hold each request this long before forwarding
	conns    map[net.Conn]struct{}
	injected int
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
	p := &FaultProxy{Addr: ln.Addr().String(), ln: ln, conns: map[net.Conn]struct{}{}}
	rp := &httputil.ReverseProxy{
		Rewrite: func(r *httputil.ProxyRequest) { r.SetURL(u) },
		// Blocking queries answer once; nothing to flush early.
		Transport: &http.Transport{DisableCompression: true, MaxIdleConnsPerHost: 16},
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			http.Error(w, "fault proxy: "+err.Error(), http.StatusBadGateway)
		},
	}
	p.srv = &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			p.mu.Lock()
			status, cut, delay := p.status, p.cut, p.delay
			if status != 0 || cut {
				p.injected++
			}
			p.mu.Unlock()
			if delay > 0 && status == 0 && !cut {
				t := time.NewTimer(delay)
				select {
				case <-t.C:
				case <-r.Context().Done():
				}
				t.Stop()
			}
			switch {
			case cut:
				resetHijacked(w)
			case status != 0:
				http.Error(w, faultBody(status), status)
			default:
				rp.ServeHTTP(w, r)
			}
		}),
		ConnState: p.connState,
	}
	go func() { _ = p.srv.Serve(ln) }()
	t.Cleanup(p.Close)
	return p
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
	p.delay = d
}

// Heal returns to forwarding every request (after the Delay, if any).
func (p *FaultProxy) Heal() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.status, p.cut = 0, false
}

// Injected returns how many requests got an injected fault so far.
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
