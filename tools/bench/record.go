package main

import (
	"context"
	"fmt"
	"maps"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/consul/api"
)

// trigger is one POST /jobs/{name} an app received.
type trigger struct {
	at      time.Time
	app     string
	sidecar string // Leadercron-Id
	job     string
	slot    time.Time
}

// recorder keeps every trigger of a scenario and wakes waiters on each.
type recorder struct {
	mu       sync.Mutex
	triggers []trigger
	changed  chan struct{}
	bad      []string // requests that broke the contract
}

func newRecorder() *recorder { return &recorder{changed: make(chan struct{})} }

func (r *recorder) add(t trigger) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.triggers = append(r.triggers, t)
	close(r.changed)
	r.changed = make(chan struct{})
}

func (r *recorder) addBad(s string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.bad) < 10 {
		r.bad = append(r.bad, s)
	}
}

func (r *recorder) snapshot() ([]trigger, <-chan struct{}) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]trigger(nil), r.triggers...), r.changed
}

// await waits until cond holds over the triggers, or ctx ends.
func (r *recorder) await(ctx context.Context, what string, cond func([]trigger) bool) ([]trigger, error) {
	for {
		ts, changed := r.snapshot()
		if cond(ts) {
			return ts, nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return ts, fmt.Errorf("waiting for %s: %w", what, context.Cause(ctx))
		}
	}
}

// app is a recording co-located app: it answers triggers at once (204)
// and /drain with {"running": 0}.
type app struct {
	name string
	url  string
	srv  *http.Server
}

func startApp(name string, rec *recorder) (*app, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("listen app %s: %w", name, err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /jobs/{name}", func(w http.ResponseWriter, r *http.Request) {
		at := time.Now()
		slot, err := time.Parse(time.RFC3339, r.Header.Get("Leadercron-Slot"))
		job := r.PathValue("name")
		if err != nil || r.Header.Get("Idempotency-Key") != job+"@"+r.Header.Get("Leadercron-Slot") ||
			r.Header.Get("Leadercron-Fencing-Token") == "" || r.Header.Get("Leadercron-Deadline") == "" {
			rec.addBad(fmt.Sprintf("%s: bad trigger headers %v", name, r.Header))
			http.Error(w, "bad trigger", http.StatusBadRequest)
			return
		}
		rec.add(trigger{at: at, app: name, sidecar: r.Header.Get("Leadercron-Id"), job: job, slot: slot})
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("POST /drain", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"running": 0}`))
	})
	a := &app{name: name, url: "http://" + l.Addr().String(), srv: &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}}
	go func() { _ = a.srv.Serve(l) }()
	return a, nil
}

func (a *app) close() { _ = a.srv.Close() }

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

// kind names a Consul request without its ids and key prefix: method,
// API, the key's last segment for KV, and whether it blocks.
func kind(r *http.Request) string {
	parts := strings.Split(strings.TrimPrefix(r.URL.Path, "/v1/"), "/")
	k := r.Method + " /v1/" + parts[0]
	switch {
	case parts[0] == "kv" && len(parts) > 1:
		k += "/…/" + parts[len(parts)-1]
	case len(parts) > 1 && parts[0] != "kv":
		k += "/" + parts[1]
	}
	if r.URL.Query().Has("index") {
		k += " (blocking)"
	}
	return k
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

// lockChange is a change of the lock key's holder seen by the watcher.
type lockChange struct {
	at      time.Time
	session string // "" = free
}

// watcher follows the lock key with blocking queries, straight to Consul
// (not through a counting proxy), and records every change of holder.
type watcher struct {
	mu      sync.Mutex
	changes []lockChange
	changed chan struct{}
}

func watch(ctx context.Context, c *api.Client, key string) *watcher {
	w := &watcher{changed: make(chan struct{})}
	go func() {
		var index uint64
		last := "\x00" // nothing seen yet
		for ctx.Err() == nil {
			pair, meta, err := c.KV().Get(key, (&api.QueryOptions{WaitIndex: index, WaitTime: 30 * time.Second}).WithContext(ctx))
			at := time.Now()
			if err != nil {
				select {
				case <-ctx.Done():
				case <-time.After(100 * time.Millisecond):
				}
				continue
			}
			index = meta.LastIndex
			s := ""
			if pair != nil {
				s = pair.Session
			}
			if s != last {
				last = s
				w.mu.Lock()
				w.changes = append(w.changes, lockChange{at: at, session: s})
				close(w.changed)
				w.changed = make(chan struct{})
				w.mu.Unlock()
			}
		}
	}()
	return w
}

// await waits for the first change after index from that satisfies cond,
// and returns it with its index.
func (w *watcher) await(ctx context.Context, what string, from int, cond func(lockChange) bool) (lockChange, int, error) {
	for {
		w.mu.Lock()
		cs, changed := w.changes, w.changed
		w.mu.Unlock()
		for i := from; i < len(cs); i++ {
			if cond(cs[i]) {
				return cs[i], i, nil
			}
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return lockChange{}, 0, fmt.Errorf("waiting for %s: %w", what, context.Cause(ctx))
		}
	}
}

func (w *watcher) len() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.changes)
}
