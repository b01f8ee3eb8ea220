// Package admin serves the sidecar's own endpoints: GET /healthz,
// GET /status, GET /metrics and POST /handover.
//
// Guarantees: /healthz answers 200 while the process's loops run, whatever
// the leadership or Consul's state, so an orchestrator never restarts a
// healthy standby for losing an election. /status is a JSON snapshot taken
// at request time.
//
// Every request other than GET or HEAD (POST /handover, and any mutating
// endpoint added later) is refused with 401 unless its peer, the TCP
// connection's remote address (r.RemoteAddr, never a forwarding header),
// is a loopback address (127.0.0.0/8, ::1), or it carries
// "Authorization: Bearer <LEADERCRON_ADMIN_TOKEN>", compared in constant
// time; a refused request changes nothing. GET /healthz, /status and
// /metrics are read-only and open to any caller that reaches the port:
// they hold no secret. No endpoint takes a body: one over MaxBodyBytes is
// refused with 413.
//
// Not guaranteed: that /status agrees with Consul; it is this sidecar's
// own view, and a standby's next_slot is only what it would fire if it led.
// A proxy on the same host (a service mesh that forwards from 127.0.0.1)
// makes every caller it forwards a loopback caller.
package admin

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/leadercron/leadercron/internal/fate"
)

// Status is the body of GET /status.
type Status struct {
	ID               string `json:"id"`
	Service          string `json:"service"`
	Leader           bool   `json:"leader"`
	FencingToken     uint64 `json:"fencing_token"`
	LeaseRemainingMS int64  `json:"lease_remaining_ms"`
	// Campaigning is false while this sidecar stays out of elections:
	// after a handover, or while the app fails its health check.
	Campaigning bool `json:"campaigning"`
	// HandedOver is true once POST /handover ran: this sidecar will not
	// lead again.
	HandedOver bool `json:"handed_over"`
	// AppHealthy is the app health gate's view; absent when the gate is
	// off.
	AppHealthy *bool       `json:"app_healthy,omitempty"`
	Jobs       []JobStatus `json:"jobs"`
	// KVError says why the fleet's state (pauses, history) could not be
	// read from Consul for this answer; the rest is still this sidecar's.
	KVError string `json:"kv_error,omitempty"`
}

// JobStatus is one job in Status.
type JobStatus struct {
	Name     string    `json:"name"`
	Schedule string    `json:"schedule"`
	TZ       string    `json:"tz"`
	NextSlot time.Time `json:"next_slot"`
	Running  int       `json:"running"` // runs in flight from this sidecar
	Last     *LastSlot `json:"last"`
	// Paused and History come from Consul KV (absent in standalone
	// mode): the fleet-wide pause flag and the job's most recent slot
	// fates, newest first, as `leadercron status -json` shows them.
	Paused  *bool           `json:"paused,omitempty"`
	History json.RawMessage `json:"history,omitempty"`
}

// LastSlot is the most recent slot's fate.
type LastSlot struct {
	Slot       time.Time    `json:"slot"`
	Outcome    fate.Outcome `json:"outcome"`
	Reason     fate.Reason  `json:"reason,omitempty"`
	HTTPStatus int          `json:"http_status"`
	DurationMS int64        `json:"duration_ms"`
}

// HandoverResult is the body of POST /handover.
type HandoverResult struct {
	// Outcome is "released" (this sidecar led, drained the app and
	// released the lock), "lost" (it led, but its lease ended during the
	// handover: no drain, the lock expires), "standby" (it did not
	// lead), "failed" (the drain timed out) or "already" (it had handed
	// over before). Except for "already", the answer comes only after
	// every run this sidecar sent has finished.
	Outcome    string `json:"outcome"`
	DurationMS int64  `json:"duration_ms"`
	Error      string `json:"error,omitempty"`
}

// Endpoints are what the admin mux serves. Status is required; a nil
// Metrics or Handover leaves that endpoint out (404).
type Endpoints struct {
	Status   func() Status
	Metrics  http.Handler
	Handover func(ctx context.Context) (HandoverResult, error)
	// Token (LEADERCRON_ADMIN_TOKEN), if set, lets callers that are not
	// on loopback use the mutating endpoints with "Authorization: Bearer
	// <Token>". Without it only loopback callers can.
	Token []byte
	// Log gets one warning per refused request (nil: none). It never
	// shows the token or the Authorization header.
	Log hclog.Logger
}

// MaxBodyBytes is the largest request body the admin port accepts: no
// endpoint takes one, so it only has to let through the few bytes an
// HTTP client may send with an empty POST (curl --data "" or a "{}").
const MaxBodyBytes = 1 << 10

// Handler returns the admin mux, behind the guard of the package doc.
func Handler(e Endpoints) http.Handler {
	status := e.Status
	mux := http.NewServeMux()
	if e.Metrics != nil {
		mux.Handle("GET /metrics", e.Metrics)
	}
	if e.Handover != nil {
		mux.HandleFunc("POST /handover", func(w http.ResponseWriter, r *http.Request) {
			// No read or write deadline for the handover: the server's
			// WriteTimeout (which counts from the end of the request
			// read) would cut its answer, and a read deadline is no use
			// once the request is read. It ends on its own: within
			// LEADERCRON_DRAIN_TIMEOUT plus the release when this sidecar
			// leads, and, when runs of an earlier leadership are still
			// in flight, when those end (their own deadlines, up to a
			// job's timeout: so a fixed deadline above the drain timeout
			// would still cut some). The caller is trusted (loopback or
			// the token) and brings its own timeout (the preStop hook's),
			// and Serve's shutdown closes it at the latest. Errors mean
			// the ResponseWriter cannot set deadlines (a test recorder):
			// then there are none to clear.
			rc := http.NewResponseController(w)
			_ = rc.SetReadDeadline(time.Time{})
			_ = rc.SetWriteDeadline(time.Time{})
			res, err := e.Handover(r.Context())
			code := http.StatusOK
			if err != nil {
				res.Error = err.Error()
				code = http.StatusInternalServerError
			}
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(code)
			_ = json.NewEncoder(w).Encode(res)
		})
	}
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(status())
	})
	return newGuard(e.Token, e.Log, mux)
}

// guard refuses the mutating requests of callers that are neither on
// loopback nor carry the token, and bodies over MaxBodyBytes.
type guard struct {
	tokenSum [sha256.Size]byte // SHA-256 of the token; compared, never the token
	hasToken bool
	log      hclog.Logger
	next     http.Handler
}

func newGuard(token []byte, log hclog.Logger, next http.Handler) *guard {
	if log == nil {
		log = hclog.NewNullLogger()
	}
	g := &guard{log: log, next: next, hasToken: len(token) > 0}
	if g.hasToken {
		g.tokenSum = sha256.Sum256(token)
	}
	return g
}

// Refusals, as the JSON body's "error" of a 401 or 413.
const (
	refusedNoToken    = "not a loopback caller: POST /handover needs Authorization: Bearer <LEADERCRON_ADMIN_TOKEN>, and none is configured"
	refusedNeedToken  = "not a loopback caller and no Authorization: Bearer <LEADERCRON_ADMIN_TOKEN>"
	refusedWrongToken = "wrong bearer token"
	refusedBody       = "request body too large: the admin endpoints take no body"
)

func (g *guard) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		// Checked before the body is read: a refused caller gets
		// nothing read for it.
		if why := g.refusal(r); why != "" {
			g.log.Warn("admin request refused", "method", r.Method, "path", r.URL.Path, "remote", r.RemoteAddr, "reason", why)
			challenge := `Bearer realm="leadercron"`
			if why == refusedWrongToken {
				challenge += `, error="invalid_token"`
			}
			w.Header().Set("WWW-Authenticate", challenge)
			writeError(w, http.StatusUnauthorized, why)
			return
		}
	}
	if r.ContentLength > MaxBodyBytes {
		writeError(w, http.StatusRequestEntityTooLarge, refusedBody)
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, MaxBodyBytes)
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		// A chunked body has no length to check: read it here, within
		// the limit, so that a mutating endpoint never runs for one
		// over it.
		if _, err := io.Copy(io.Discard, r.Body); err != nil {
			var tooLarge *http.MaxBytesError
			if errors.As(err, &tooLarge) {
				writeError(w, http.StatusRequestEntityTooLarge, refusedBody)
			} else {
				writeError(w, http.StatusBadRequest, "cannot read the request body")
			}
			return
		}
	}
	g.next.ServeHTTP(w, r)
}

// refusal says why r may not use a mutating endpoint, or "" if it may.
func (g *guard) refusal(r *http.Request) string {
	if loopbackPeer(r.RemoteAddr) {
		return ""
	}
	token, ok := bearer(r.Header.Get("Authorization"))
	switch {
	case !g.hasToken:
		return refusedNoToken
	case !ok:
		return refusedNeedToken
	}
	// Hashing both sides first makes the comparison take the same time
	// whatever the presented token's length, not only its content.
	sum := sha256.Sum256([]byte(token))
	if subtle.ConstantTimeCompare(sum[:], g.tokenSum[:]) != 1 {
		return refusedWrongToken
	}
	return ""
}

// loopbackPeer reports whether remote (an http.Request's RemoteAddr, the
// connection's peer) is a loopback address: 127.0.0.0/8, ::1, or
// 127.0.0.0/8 mapped into IPv6. Anything it cannot parse (a Unix socket's
// peer, an empty address) is not loopback.
func loopbackPeer(remote string) bool {
	ap, err := netip.ParseAddrPort(remote)
	if err != nil {
		return false
	}
	return ap.Addr().Unmap().IsLoopback()
}

// bearer returns the token of an "Authorization: Bearer <token>" value
// (the scheme is case-insensitive, RFC 9110).
func bearer(h string) (string, bool) {
	scheme, token, ok := strings.Cut(h, " ")
	token = strings.Trim(token, " \t")
	if !ok || !strings.EqualFold(scheme, "Bearer") || token == "" {
		return "", false
	}
	return token, true
}

func writeError(w http.ResponseWriter, code int, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(map[string]string{"error": msg})
}

// LoopbackOnly reports whether addr, the admin listener's address, is a
// loopback address: then no caller that is not on this host reaches the
// port at all.
func LoopbackOnly(addr net.Addr) bool {
	if tcp, ok := addr.(*net.TCPAddr); ok {
		return tcp.IP.IsLoopback()
	}
	ap, err := netip.ParseAddrPort(addr.String())
	return err == nil && ap.Addr().Unmap().IsLoopback()
}

// ShutdownTimeout is how long Serve waits, once its context ends, for
// requests in flight: by then a /handover call has its answer, and a
// /status call (whose Consul read has a 2 s timeout) that is still open is
// cut, which is not a failure of the sidecar. It is part of the shutdown
// budget.
const ShutdownTimeout = time.Second

// The admin server's limits. Its callers are an orchestrator's probes, a
// Prometheus scraper, the preStop hook and an operator's curl, all quick
// to send; the limits are there against a client that connects and then
// stalls or trickles, which would otherwise hold a connection and a
// goroutine for ever.
const (
	// readHeaderTimeout bounds the request line and headers: it must
	// exceed what a slow but live client takes to send a few hundred
	// bytes (milliseconds on a network, more on a paused host), and stay
	// under readTimeout, which includes it.
	readHeaderTimeout = 5 * time.Second
	// readTimeout bounds the whole request read, headers and the at most
	// MaxBodyBytes of body: it must exceed readHeaderTimeout.
	readTimeout = 10 * time.Second
	// writeTimeout bounds a read-only endpoint's work and answer, from
	// the end of the request read. It must exceed /status's Consul read
	// (2 s timeout) plus the answer, and a scrape of /metrics (Prometheus'
	// default scrape_timeout is 10 s, but the answer takes milliseconds).
	// POST /handover clears it: see Handler.
	writeTimeout = 10 * time.Second
	// idleTimeout is how long a kept-alive connection waits for its next
	// request: above the usual Prometheus scrape intervals (15 s to 60 s),
	// so that a scraper keeps its connection.
	idleTimeout = 90 * time.Second
	// maxHeaderBytes bounds the request headers; an Authorization header
	// with a token fits many times over.
	maxHeaderBytes = 16 << 10
)

// timeouts are an admin server's timeouts: the constants above, shorter
// in tests.
type timeouts struct{ readHeader, read, write, idle time.Duration }

var serverTimeouts = timeouts{readHeaderTimeout, readTimeout, writeTimeout, idleTimeout}

// Serve serves h on ln until ctx ends, then shuts down within
// ShutdownTimeout, closing what is still open after it.
func Serve(ctx context.Context, ln net.Listener, h http.Handler, log hclog.Logger) error {
	return serve(ctx, ln, h, log, serverTimeouts)
}

func serve(ctx context.Context, ln net.Listener, h http.Handler, log hclog.Logger, to timeouts) error {
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: to.readHeader,
		ReadTimeout:       to.read,
		WriteTimeout:      to.write,
		IdleTimeout:       to.idle,
		MaxHeaderBytes:    maxHeaderBytes,
		ErrorLog:          log.StandardLogger(&hclog.StandardLoggerOptions{InferLevels: true}),
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), ShutdownTimeout)
	defer cancel()
	if err := srv.Shutdown(sctx); errors.Is(err, context.DeadlineExceeded) {
		log.Warn("admin requests still open at shutdown, closed", "shutdown_timeout", ShutdownTimeout)
		_ = srv.Close()
	}
	if serr := <-errc; !errors.Is(serr, http.ErrServerClosed) {
		return serr
	}
	return nil
}
