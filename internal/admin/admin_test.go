package admin_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/hashicorp/go-hclog"

	"github.com/leadercron/leadercron/internal/admin"
)

const token = "admin-token-0123456789-0123456789-abcdef"

// endpoints returns admin endpoints whose handover counts its calls, and
// the count.
func endpoints(tok string) (admin.Endpoints, *atomic.Int32) {
	var calls atomic.Int32
	e := admin.Endpoints{
		Status: func() admin.Status {
			return admin.Status{ID: "sidecar-a", Service: "billing", Jobs: []admin.JobStatus{}}
		},
		Metrics: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "up 1\n") }),
		Handover: func(context.Context) (admin.HandoverResult, error) {
			calls.Add(1)
			return admin.HandoverResult{Outcome: "standby"}, nil
		},
	}
	if tok != "" {
		e.Token = []byte(tok)
	}
	return e, &calls
}

// do serves one request from remote, with the given headers, through the
// admin handler, as the server would hand it over: RemoteAddr is the
// connection's peer.
func do(h http.Handler, method, path, remote string, header map[string]string, body io.Reader) *httptest.ResponseRecorder {
	req := httptest.NewRequest(method, path, body)
	req.RemoteAddr = remote
	for k, v := range header {
		req.Header.Set(k, v)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec
}

func TestHandoverGuard(t *testing.T) {
	t.Parallel()
	const outside = "10.0.0.5:1234"
	tests := []struct {
		name       string
		token      string // configured
		remote     string
		header     map[string]string
		wantCode   int
		wantCalled bool
	}{
		{"non-loopback, no token configured", "", outside, nil, 401, false},
		{"non-loopback, no token configured, a bearer sent", "", outside, map[string]string{"Authorization": "Bearer " + token}, 401, false},
		{"non-loopback, no token configured, an empty bearer", "", outside, map[string]string{"Authorization": "Bearer "}, 401, false},
		{"non-loopback, no Authorization", token, outside, nil, 401, false},
		{"non-loopback, right token", token, outside, map[string]string{"Authorization": "Bearer " + token}, 200, true},
		{"non-loopback, right token, scheme in lower case", token, outside, map[string]string{"Authorization": "bearer " + token}, 200, true},
		{"non-loopback, IPv6 peer, right token", token, "[2001:db8::5]:1234", map[string]string{"Authorization": "Bearer " + token}, 200, true},
		{"non-loopback, wrong token", token, outside, map[string]string{"Authorization": "Bearer " + strings.ToUpper(token)}, 401, false},
		{"non-loopback, the token less its last byte", token, outside, map[string]string{"Authorization": "Bearer " + token[:len(token)-1]}, 401, false},
		{"non-loopback, the token and one byte more", token, outside, map[string]string{"Authorization": "Bearer " + token + "x"}, 401, false},
		{"non-loopback, the token as Basic", token, outside, map[string]string{"Authorization": "Basic " + token}, 401, false},
		{"non-loopback, the token without a scheme", token, outside, map[string]string{"Authorization": token}, 401, false},
		{"non-loopback claiming loopback in forwarding headers", "", outside,
			map[string]string{"X-Forwarded-For": "127.0.0.1", "X-Real-Ip": "127.0.0.1", "Forwarded": "for=127.0.0.1"}, 401, false},
		{"link-local IPv6 peer", "", "[fe80::1%eth0]:1234", nil, 401, false},
		{"no peer address", "", "", nil, 401, false},
		{"a Unix socket's peer", "", "@", nil, 401, false},
		{"loopback 127.0.0.1", "", "127.0.0.1:1234", nil, 200, true},
		{"loopback 127.1.2.3", "", "127.1.2.3:1234", nil, 200, true},
		{"loopback ::1", "", "[::1]:1234", nil, 200, true},
		{"loopback mapped into IPv6", "", "[::ffff:127.0.0.1]:1234", nil, 200, true},
		{"loopback, token configured, none sent", token, "127.0.0.1:1234", nil, 200, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e, calls := endpoints(tc.token)
			rec := do(admin.Handler(e), http.MethodPost, "/handover", tc.remote, tc.header, nil)
			if rec.Code != tc.wantCode || (calls.Load() == 1) != tc.wantCalled {
				t.Fatalf("POST /handover from %q: %d, handover called %d times; want %d, called %v\n%s",
					tc.remote, rec.Code, calls.Load(), tc.wantCode, tc.wantCalled, rec.Body)
			}
			if rec.Code == http.StatusUnauthorized {
				if !strings.HasPrefix(rec.Header().Get("WWW-Authenticate"), "Bearer") {
					t.Errorf("401 without a Bearer challenge: %q", rec.Header().Get("WWW-Authenticate"))
				}
				var body struct{ Error string }
				if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil || body.Error == "" {
					t.Errorf("401 body %q, want {\"error\": ...}", rec.Body)
				}
			}
		})
	}
}

// TestMutatingMethodsGuarded: the guard is on every method but GET and
// HEAD, so that an endpoint added later is not open by default.
func TestMutatingMethodsGuarded(t *testing.T) {
	t.Parallel()
	e, calls := endpoints("")
	h := admin.Handler(e)
	for _, m := range []string{http.MethodPost, http.MethodPut, http.MethodDelete, http.MethodPatch, http.MethodOptions} {
		for _, path := range []string{"/handover", "/status", "/anything"} {
			if rec := do(h, m, path, "10.0.0.5:1234", nil, nil); rec.Code != http.StatusUnauthorized {
				t.Errorf("%s %s from outside: %d, want 401", m, path, rec.Code)
			}
		}
	}
	if calls.Load() != 0 {
		t.Errorf("handover called %d times", calls.Load())
	}
}

// TestReadOnlyEndpointsOpen: /healthz, /status and /metrics answer any
// caller, without a token, whether one is configured or not.
func TestReadOnlyEndpointsOpen(t *testing.T) {
	t.Parallel()
	for _, tok := range []string{"", token} {
		e, calls := endpoints(tok)
		h := admin.Handler(e)
		for _, m := range []string{http.MethodGet, http.MethodHead} {
			for _, path := range []string{"/healthz", "/status", "/metrics"} {
				if rec := do(h, m, path, "10.0.0.5:1234", nil, nil); rec.Code != http.StatusOK {
					t.Errorf("%s %s from outside (token configured: %v): %d, want 200", m, path, tok != "", rec.Code)
				}
			}
		}
		if calls.Load() != 0 {
			t.Errorf("handover called %d times", calls.Load())
		}
	}
}

func TestBodyLimit(t *testing.T) {
	t.Parallel()
	big := strings.Repeat("x", admin.MaxBodyBytes+1)
	tests := []struct {
		name, method, path string
		body               io.Reader
		wantCode           int
	}{
		{"handover, body over the limit", http.MethodPost, "/handover", strings.NewReader(big), 413},
		// No length: the body is chunked on the wire.
		{"handover, chunked body over the limit", http.MethodPost, "/handover", io.MultiReader(strings.NewReader(big)), 413},
		{"handover, body at the limit", http.MethodPost, "/handover", strings.NewReader(big[1:]), 200},
		{"handover, an empty JSON object", http.MethodPost, "/handover", strings.NewReader("{}"), 200},
		{"healthz, body over the limit", http.MethodGet, "/healthz", strings.NewReader(big), 413},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e, calls := endpoints("")
			rec := do(admin.Handler(e), tc.method, tc.path, "127.0.0.1:1234", nil, tc.body)
			if rec.Code != tc.wantCode {
				t.Errorf("%s %s: %d, want %d\n%s", tc.method, tc.path, rec.Code, tc.wantCode, rec.Body)
			}
			if called := calls.Load() > 0; called != (tc.path == "/handover" && tc.wantCode == 200) {
				t.Errorf("handover called: %v", called)
			}
		})
	}
}

// TestRefusalLogged: a refused request is logged, without the token
// configured or the one presented.
func TestRefusalLogged(t *testing.T) {
	t.Parallel()
	var logs bytes.Buffer
	e, _ := endpoints(token)
	e.Log = hclog.New(&hclog.LoggerOptions{Output: &logs, JSONFormat: true})
	const presented = "presented-token-that-is-wrong-0123456789"
	do(admin.Handler(e), http.MethodPost, "/handover", "10.0.0.5:1234", map[string]string{"Authorization": "Bearer " + presented}, nil)
	out := logs.String()
	if !strings.Contains(out, "admin request refused") || !strings.Contains(out, "10.0.0.5:1234") {
		t.Errorf("refusal not logged with the peer:\n%s", out)
	}
	if strings.Contains(out, token) || strings.Contains(out, presented) {
		t.Errorf("the log shows a token:\n%s", out)
	}
}
