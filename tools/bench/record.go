package main

import (
	"context"
	"fmt"
	"maps"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/leadercron/leadercron/internal/testkit"
)

// trigger is one POST /jobs/{name} an app received (Kind "trigger"),
// stamped with the instant it reached the app.
type trigger = testkit.Event

// triggers returns the triggers the apps recorded in rec, in order (rec
// also holds their /drain calls).
func triggers(rec *testkit.History) []trigger { return testkit.Filter(rec.Events(), "trigger") }

// awaitTriggers waits until cond holds over the triggers, or ctx ends.
func awaitTriggers(ctx context.Context, rec *testkit.History, what string, cond func([]trigger) bool) ([]trigger, error) {
	var ts []trigger
	_, err := rec.Wait(ctx, func(evs []testkit.Event) bool {
		ts = testkit.Filter(evs, "trigger")
		return cond(ts)
	})
	if err != nil {
		return ts, fmt.Errorf("waiting for %s: %w", what, err)
	}
	return ts, nil
}

// counts are the requests one proxy forwarded.
type counts struct {
	total    int64
	blocking int64 // GETs with ?index=, i.e. blocking queries
}

func (c counts) sub(o counts) counts {
	return counts{total: c.total - o.total, blocking: c.blocking - o.blocking}
}

// proxy is a counting HTTP reverse proxy in front of Consul, one per
// sidecar, so each sidecar's requests can be counted.
type proxy struct {
	addr     string
	srv      *http.Server
	total    atomic.Int64
	blocking atomic.Int64
	waiting  atomic.Int64 // blocking queries in flight

	mu     sync.Mutex
	byKind map[string]int64 // "GET /v1/kv/…/last", "PUT /v1/session/renew", …
}

// kind names a Consul request without its ids, job names and key prefix:
// method, API, the key under the fleet's prefix for KV (with <job> or <id>
// for the job's or member's segment), and whether it blocks.
func kind(r *http.Request) string {
	parts := strings.Split(strings.TrimPrefix(r.URL.Path, "/v1/"), "/")
	k := r.Method + " /v1/" + parts[0]
	switch {
	case parts[0] == "kv" && len(parts) > 3: // kv/bench/<fleet>/…
		k += "/…/" + kvKind(parts[3:])
	case parts[0] == "kv" && len(parts) > 1:
		k += "/…/" + parts[len(parts)-1]
	case len(parts) > 1:
		k += "/" + parts[1]
	}
	if r.URL.Query().Has("index") {
		k += " (blocking)"
	}
	return k
}

// kvKind is a key under a fleet's prefix (kvlayout) with the job's or
// member's segment replaced: jobs/<job>/last, history/<job>,
// requests/<job>, fleet/members/<id>; requests/ stays as it is.
func kvKind(rest []string) string {
	rest = slices.Clone(rest)
	switch {
	case rest[0] == "fleet" && len(rest) > 2 && rest[2] != "":
		rest[2] = "<id>"
	case rest[0] != "fleet" && len(rest) > 1 && rest[1] != "":
		rest[1] = "<job>"
	}
	return strings.Join(rest, "/")
}

// kinds returns the requests counted so far by kind.
func (p *proxy) kinds() map[string]int64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return maps.Clone(p.byKind)
}

func startProxy(consulAddr string, tr http.RoundTripper) (*proxy, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("listen proxy: %w", err)
	}
	rp := httputil.NewSingleHostReverseProxy(&url.URL{Scheme: "http", Host: consulAddr})
	rp.Transport = tr
	// A sidecar that stops cancels its blocking query: not worth a log line.
	rp.ErrorHandler = func(w http.ResponseWriter, _ *http.Request, _ error) { w.WriteHeader(http.StatusBadGateway) }
	p := &proxy{addr: l.Addr().String(), byKind: map[string]int64{}}
	p.srv = &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p.total.Add(1)
		k := kind(r)
		p.mu.Lock()
		p.byKind[k]++
		p.mu.Unlock()
		if r.Method == http.MethodGet && r.URL.Query().Has("index") {
			p.blocking.Add(1)
			p.waiting.Add(1)
			defer p.waiting.Add(-1)
		}
		rp.ServeHTTP(w, r)
	}), ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = p.srv.Serve(l) }()
	return p, nil
}

func (p *proxy) counts() counts { return counts{total: p.total.Load(), blocking: p.blocking.Load()} }

func (p *proxy) close() { _ = p.srv.Close() }

// lockChange is a change of the lock key's holder seen by the watcher
// (testkit.WatchLock, straight to Consul, not through a counting proxy):
// Session is the holder, "" when free.
type lockChange = testkit.Event

// awaitLock waits for the first change at or after index from that
// satisfies cond, and returns it with its index.
func awaitLock(ctx context.Context, locks *testkit.History, what string, from int, cond func(lockChange) bool) (lockChange, int, error) {
	var found lockChange
	at := -1
	_, err := locks.Wait(ctx, func(cs []lockChange) bool {
		for i := from; i < len(cs); i++ {
			if cond(cs[i]) {
				found, at = cs[i], i
				return true
			}
		}
		return false
	})
	if err != nil {
		return lockChange{}, 0, fmt.Errorf("waiting for %s: %w", what, err)
	}
	return found, at, nil
}
