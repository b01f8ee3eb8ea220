// Package admin serves the sidecar's own endpoints: GET /healthz,
// GET /status, GET /metrics and POST /handover.
//
// Guarantees: /healthz answers 200 while the process's loops run, whatever
// the leadership or Consul's state, so an orchestrator never restarts a
// healthy standby for losing an election. /status is a JSON snapshot taken
// at request time.
//
// Not guaranteed: that /status agrees with Consul; it is this sidecar's
// own view, and a standby's next_slot is only what it would fire if it led.
package admin

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"time"

	"github.com/hashicorp/go-hclog"
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
	Slot       time.Time `json:"slot"`
	Outcome    string    `json:"outcome"`
	Reason     string    `json:"reason,omitempty"`
	HTTPStatus int       `json:"http_status"`
	DurationMS int64     `json:"duration_ms"`
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
}

// Handler returns the admin mux.
func Handler(e Endpoints) http.Handler {
	status := e.Status
	mux := http.NewServeMux()
	if e.Metrics != nil {
		mux.Handle("GET /metrics", e.Metrics)
	}
	if e.Handover != nil {
		mux.HandleFunc("POST /handover", func(w http.ResponseWriter, r *http.Request) {
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
	return mux
}

// ShutdownTimeout is how long Serve waits, once its context ends, for
// requests in flight: by then a /handover call has its answer, and a
// /status call (whose Consul read has a 2 s timeout) that is still open is
// cut, which is not a failure of the sidecar. It is part of the shutdown
// budget.
const ShutdownTimeout = time.Second

// Serve serves h on ln until ctx ends, then shuts down within
// ShutdownTimeout, closing what is still open after it.
func Serve(ctx context.Context, ln net.Listener, h http.Handler, log hclog.Logger) error {
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 5 * time.Second,
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
