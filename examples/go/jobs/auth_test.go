package jobs_test

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/leadercron/leadercron/examples/go/jobs"
)

var (
	secretA = []byte("secret-A-0123456789abcdef0123456789")
	secretB = []byte("secret-B-0123456789abcdef0123456789")
	// remote is a peer that is not the local sidecar.
	remote = "203.0.113.7:51234"
)

// signedTestHeaders are the headers of lines 5 to 12 of the signed string,
// written out again here so that the tests do not trust the package's list.
var signedTestHeaders = []string{
	"Leadercron-Job", "Leadercron-Slot", "Leadercron-Fencing-Token", "Leadercron-Deadline",
	"Idempotency-Key", "Leadercron-Attempt", "Leadercron-Run-Now", "Leadercron-Id",
}

// oracleMAC is an implementation of the v1 signature independent of the
// package's: the hex HMAC of the 13 lines of the spec.
func oracleMAC(secret []byte, method, path, ts string, hdr http.Header, body []byte) string {
	bodySum := sha256.Sum256(body)
	lines := []string{"leadercron-v1", method, path, ts}
	for _, h := range signedTestHeaders {
		lines = append(lines, hdr.Get(h))
	}
	lines = append(lines, hex.EncodeToString(bodySum[:]))
	m := hmac.New(sha256.New, secret)
	m.Write([]byte(strings.Join(lines, "\n")))
	return hex.EncodeToString(m.Sum(nil))
}

func oracleKID(secret []byte) string {
	sum := sha256.Sum256(append([]byte("leadercron-kid\n"), secret...))
	return hex.EncodeToString(sum[:])[:8]
}

// sign sets the signature of r (a server-side request whose RequestURI is
// its path) for body, with secret, at t.
func sign(r *http.Request, body string, secret []byte, t time.Time) *http.Request {
	return signTS(r, body, secret, strconv.FormatInt(t.Unix(), 10))
}

// signTS is sign with t written as ts.
func signTS(r *http.Request, body string, secret []byte, ts string) *http.Request {
	r.Header.Set("Leadercron-Signature", "t="+ts+",kid="+oracleKID(secret)+",v1="+
		oracleMAC(secret, r.Method, r.URL.EscapedPath(), ts, r.Header, []byte(body)))
	return r
}

// signedRequest is request(run) from a remote peer, signed at t.
func signedRequest(run jobs.Run, secret []byte, t time.Time) *http.Request {
	r := request(run)
	r.RemoteAddr = remote
	return sign(r, bodyOf(run), secret, t)
}

func signedDrain(secret []byte, t time.Time) *http.Request {
	r := drainRequest()
	r.RemoteAddr = remote
	return sign(r, "", secret, t)
}

// clock is a fixed time for Options.Now.
var clockT = time.Unix(1_900_000_000, 0)

func fixedClock() time.Time { return clockT }

// counter is a job that counts its runs and records the last one.
type counter struct {
	n    atomic.Int32
	last atomic.Pointer[jobs.Run]
}

func (c *counter) Func(_ context.Context, run jobs.Run) error {
	c.n.Add(1)
	c.last.Store(&run)
	return nil
}

func newSigned(t *testing.T, secrets ...[]byte) (*jobs.Handler, *counter) {
	t.Helper()
	h, err := jobs.New(jobs.Options{Secrets: secrets, Now: fixedClock})
	if err != nil {
		t.Fatal(err)
	}
	c := &counter{}
	h.Register("hello", c.Func)
	h.Register("other", c.Func)
	return h, c
}

// TestSignatureVector reproduces the test vector of the shared signature
// spec, both ways: signing gives the expected header, and a Handler whose
// clock is at t accepts the request carrying it.
func TestSignatureVector(t *testing.T) {
	secret := []byte("0123456789abcdef0123456789abcdef")
	const (
		ts      = 1767225600
		wantKID = "37a08647"
		wantV1  = "9f2c9f5e07a52a5fbd55e9101c33986a767875bbe25f20e97f986eb85c7f3b34"
		body    = `{"job":"report"}`
	)
	build := func(token string) *http.Request {
		r := httptest.NewRequest(http.MethodPost, "/jobs/report", strings.NewReader(body))
		r.RemoteAddr = remote
		r.Header.Set("Leadercron-Job", "report")
		r.Header.Set("Leadercron-Slot", "2026-01-01T00:00:00Z")
		r.Header.Set("Leadercron-Fencing-Token", token)
		r.Header.Set("Leadercron-Deadline", "2026-01-01T00:00:30Z")
		r.Header.Set("Idempotency-Key", "report@2026-01-01T00:00:00Z")
		r.Header.Set("Leadercron-Attempt", "1")
		r.Header.Set("Leadercron-Id", "sidecar-a")
		return r
	}
	if got := jobs.KeyID(secret); got != wantKID {
		t.Errorf("KeyID = %s, want %s", got, wantKID)
	}
	want := "t=1767225600,kid=" + wantKID + ",v1=" + wantV1
	r := build("42")
	jobs.SignRequest(r, []byte(body), secret, time.Unix(ts, 0))
	if got := r.Header.Get("Leadercron-Signature"); got != want {
		t.Errorf("SignRequest header = %s\nwant                %s", got, want)
	}
	if got := sign(build("42"), body, secret, time.Unix(ts, 0)).Header.Get("Leadercron-Signature"); got != want {
		t.Fatalf("test oracle = %s, want %s", got, want)
	}
	// SignRequest on a client request signs the path it is sent with.
	cr, _ := http.NewRequest(http.MethodPost, "http://127.0.0.1:8081/jobs/report?x=1", strings.NewReader(body))
	cr.Header = build("42").Header
	jobs.SignRequest(cr, []byte(body), secret, time.Unix(ts, 0))
	if got := cr.Header.Get("Leadercron-Signature"); got != want {
		t.Errorf("SignRequest on a client request = %s, want %s", got, want)
	}

	h, err := jobs.New(jobs.Options{Secrets: [][]byte{secret}, Now: func() time.Time { return time.Unix(ts, 0) }})
	if err != nil {
		t.Fatal(err)
	}
	h.Register("report", ok)
	tampered := build("42")
	tampered.Header.Set("Leadercron-Signature", want[:len(want)-1]+"5")
	check(t, serve(h, tampered), 401, jobs.CodeBadSignature)

	r = build("42")
	r.Header.Set("Leadercron-Signature", want)
	// Accepted: the signature is valid and fresh for the injected clock;
	// the run then reaches the fence (token 42 is recorded) and is refused
	// only because its 2026-01-01 deadline is over by the real clock.
	check(t, serve(h, r), 504, jobs.CodeDeadlinePassed)
	stale := sign(build("41"), body, secret, time.Unix(ts, 0))
	check(t, serve(h, stale), 409, jobs.CodeStaleFencingToken)
}

// TestAttacksFromNetwork sends, from a peer that is not the sidecar, the
// three requests of issue 11: a trigger, a drain, and a trigger with a
// huge fencing token. They are refused and change nothing: the real
// sidecar's trigger then runs, with its own fencing token.
func TestAttacksFromNetwork(t *testing.T) {
	for _, tc := range []struct {
		name    string
		secrets [][]byte
		status  int
		code    string
		real    func(jobs.Run) *http.Request
	}{
		{"no secret", nil, 403, jobs.CodeNotLoopback, request},
		{"with secret", [][]byte{secretA}, 401, jobs.CodeBadSignature,
			func(run jobs.Run) *http.Request { return signedRequest(run, secretA, time.Now()) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h, err := jobs.New(jobs.Options{Secrets: tc.secrets})
			if err != nil {
				t.Fatal(err)
			}
			c := &counter{}
			h.Register("hello", c.Func)
			real := newRun("hello", 0, 7)

			attack := func(r *http.Request) {
				t.Helper()
				r.RemoteAddr = remote
				r.Header.Set("X-Forwarded-For", "127.0.0.1")
				r.Header.Set("X-Real-Ip", "127.0.0.1")
				check(t, serve(h, r), tc.status, tc.code)
			}
			attack(request(real)) // the same run, so the same idempotency key
			attack(drainRequest())
			huge := real
			huge.FencingToken = math.MaxUint64
			attack(request(huge))
			huge.Slot = huge.Slot.Add(time.Minute)
			huge.IdempotencyKey = "other"
			attack(request(huge))
			if h.Draining() {
				t.Fatal("a refused /drain drained the handler")
			}
			if n := c.n.Load(); n != 0 {
				t.Fatalf("refused triggers ran the job %d times", n)
			}

			check(t, serve(h, tc.real(real)), 200, "")
			if c.n.Load() != 1 || c.last.Load().FencingToken != 7 {
				t.Fatalf("real trigger: %d runs, last %+v", c.n.Load(), c.last.Load())
			}
		})
	}
}

// TestSignedRequests covers the answers of a Handler with a secret. After
// each refused request, a valid one still runs with fencing token 7: a
// refusal changed no state.
func TestSignedRequests(t *testing.T) {
	good := newRun("hello", 0, 7)
	now := clockT
	huge := good
	huge.FencingToken = math.MaxUint64
	tests := []struct {
		name   string
		req    func() *http.Request
		status int
		code   string
	}{
		{"valid", func() *http.Request { return signedRequest(good, secretA, now) }, 200, ""},
		{"valid from loopback", func() *http.Request {
			r := signedRequest(good, secretA, now)
			r.RemoteAddr = loopback
			return r
		}, 200, ""},
		{"valid, t 30s ago", func() *http.Request { return signedRequest(good, secretA, now.Add(-30*time.Second)) }, 200, ""},
		{"valid, t 30s ahead", func() *http.Request { return signedRequest(good, secretA, now.Add(30*time.Second)) }, 200, ""},
		{"valid with a query", func() *http.Request {
			r := signedRequest(good, secretA, now)
			r.RequestURI += "?ignored=1"
			return r
		}, 200, ""},
		{"unsigned from loopback", func() *http.Request { return request(huge) }, 401, jobs.CodeBadSignature},
		{"wrong secret", func() *http.Request { return signedRequest(huge, secretB, now) }, 401, jobs.CodeBadSignature},
		{"wrong kid", func() *http.Request {
			r := signedRequest(huge, secretA, now)
			sig := r.Header.Get("Leadercron-Signature")
			r.Header.Set("Leadercron-Signature", strings.Replace(sig, oracleKID(secretA), oracleKID(secretB), 1))
			return r
		}, 401, jobs.CodeBadSignature},
		{"stale t", func() *http.Request { return signedRequest(huge, secretA, now.Add(-31*time.Second)) }, 401, jobs.CodeStaleSignature},
		{"t in the future", func() *http.Request { return signedRequest(huge, secretA, now.Add(31*time.Second)) }, 401, jobs.CodeStaleSignature},
		{"stale and wrong secret", func() *http.Request { return signedRequest(huge, secretB, now.Add(-time.Hour)) }, 401, jobs.CodeBadSignature},
		{"tampered body", func() *http.Request {
			r := signedRequest(good, secretA, now)
			r.Body = io.NopCloser(strings.NewReader(bodyOf(huge)))
			r.Header.Set(jobs.HeaderFencingToken, strconv.FormatUint(huge.FencingToken, 10))
			return r
		}, 401, jobs.CodeBadSignature},
		{"tampered path", func() *http.Request {
			other := good
			other.Job = "other"
			r := signedRequest(other, secretA, now)
			moved := request(good)
			moved.RemoteAddr = remote
			moved.Header = r.Header
			moved.Body = r.Body
			return moved
		}, 401, jobs.CodeBadSignature},
		{"tampered fencing token header", func() *http.Request {
			r := signedRequest(good, secretA, now)
			r.Header.Set(jobs.HeaderFencingToken, strconv.FormatUint(huge.FencingToken, 10))
			return r
		}, 401, jobs.CodeBadSignature},
		{"tampered attempt header", func() *http.Request {
			r := signedRequest(good, secretA, now)
			r.Header.Set(jobs.HeaderAttempt, "2")
			return r
		}, 401, jobs.CodeBadSignature},
		{"added run-now header", func() *http.Request {
			r := signedRequest(good, secretA, now)
			r.Header.Set(jobs.HeaderRunNow, "x")
			return r
		}, 401, jobs.CodeBadSignature},
		{"removed id header", func() *http.Request {
			r := request(good)
			r.RemoteAddr = remote
			r.Header.Set(jobs.HeaderID, "sidecar-a")
			sign(r, bodyOf(good), secretA, now)
			r.Header.Del(jobs.HeaderID)
			return r
		}, 401, jobs.CodeBadSignature},
		{"signed header given twice", func() *http.Request {
			r := signedRequest(good, secretA, now)
			r.Header.Add(jobs.HeaderFencingToken, strconv.FormatUint(huge.FencingToken, 10))
			return r
		}, 401, jobs.CodeBadSignature},
		{"signature given twice", func() *http.Request {
			r := signedRequest(good, secretA, now)
			r.Header.Add("Leadercron-Signature", signedRequest(good, secretA, now).Header.Get("Leadercron-Signature"))
			return r
		}, 401, jobs.CodeBadSignature},
		{"t with a leading zero, signed as such", func() *http.Request {
			r := request(huge)
			r.RemoteAddr = remote
			return signTS(r, bodyOf(huge), secretA, "0"+strconv.FormatInt(now.Unix(), 10))
		}, 401, jobs.CodeBadSignature},
		{"other method signed", func() *http.Request {
			r := signedRequest(good, secretA, now)
			r.Method = http.MethodPut
			sign(r, bodyOf(good), secretA, now)
			r.Method = http.MethodPost
			return r
		}, 401, jobs.CodeBadSignature},
	}
	for _, sig := range []string{
		"", "t=,kid=,v1=", "v1=%[3]s,kid=%[2]s,t=%[1]s", "t=%[1]s, kid=%[2]s, v1=%[3]s",
		"t=%[1]s,kid=%[2]s,v1=%[3]s,", "t=%[1]s,kid=%[2]s,v1=%[3]s,v0=00", "t=%[1]s,kid=%[2]s",
		"t=0%[1]s,kid=%[2]s,v1=%[3]s", "t=+%[1]s,kid=%[2]s,v1=%[3]s", "t=-1,kid=%[2]s,v1=%[3]s",
		"t=%[1]s,kid=%[2]s,v1=%[3]S", "t=%[1]s,kid=%[2]s,v1=%[3]s00", "t=99999999999999999999,kid=%[2]s,v1=%[3]s",
		"T=%[1]s,KID=%[2]s,V1=%[3]s", " t=%[1]s,kid=%[2]s,v1=%[3]s",
	} {
		tests = append(tests, struct {
			name   string
			req    func() *http.Request
			status int
			code   string
		}{"malformed " + sig, func() *http.Request {
			r := signedRequest(huge, secretA, now)
			v := r.Header.Get("Leadercron-Signature")
			ts, kid, mac := v[2:12], v[17:25], v[29:]
			if !strings.Contains(v, ",kid="+kid+",v1="+mac) {
				t.Fatalf("unexpected signature layout %s", v)
			}
			s := sig
			for _, rp := range [][2]string{{"%[1]s", ts}, {"%[2]s", kid}, {"%[3]s", mac}, {"%[3]S", strings.ToUpper(mac)}} {
				s = strings.ReplaceAll(s, rp[0], rp[1])
			}
			r.Header.Set("Leadercron-Signature", s)
			return r
		}, 401, jobs.CodeBadSignature})
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h, c := newSigned(t, secretA)
			w := serve(h, tc.req())
			check(t, w, tc.status, tc.code)
			if tc.status != 200 {
				if c.n.Load() != 0 || h.Draining() {
					t.Fatalf("refused request: %d runs, draining %v", c.n.Load(), h.Draining())
				}
				check(t, serve(h, signedRequest(good, secretA, now)), 200, "")
			}
			if c.n.Load() != 1 || c.last.Load().FencingToken != 7 {
				t.Fatalf("%d runs, last %+v", c.n.Load(), c.last.Load())
			}
		})
	}
}

func TestSignedDrain(t *testing.T) {
	h, c := newSigned(t, secretA)
	check(t, serve(h, drainRequest()), 401, jobs.CodeBadSignature)
	r := signedDrain(secretA, clockT)
	r.Body = io.NopCloser(strings.NewReader("{}")) // signed for an empty body
	check(t, serve(h, r), 401, jobs.CodeBadSignature)
	r = drainRequest()
	r.RemoteAddr = remote
	r.URL.Path = "/base/drain" // signed for another path
	sign(r, "", secretA, clockT)
	r.URL.Path = "/drain"
	check(t, serve(h, r), 401, jobs.CodeBadSignature)
	check(t, serve(h, signedDrain(secretA, clockT.Add(-time.Minute))), 401, jobs.CodeStaleSignature)
	check(t, serve(h, signedDrain(secretB, clockT)), 401, jobs.CodeBadSignature)
	if h.Draining() {
		t.Fatal("a refused /drain drained the handler")
	}
	check(t, serve(h, signedRequest(newRun("hello", 0, 1), secretA, clockT)), 200, "")

	check(t, serve(h, signedDrain(secretA, clockT)), 200, "")
	if !h.Draining() {
		t.Fatal("a signed /drain did not drain")
	}
	check(t, serve(h, signedRequest(newRun("hello", 1, 1), secretA, clockT)), 503, jobs.CodeDraining)
	if c.n.Load() != 1 {
		t.Fatalf("%d runs, want 1", c.n.Load())
	}
}

// TestSignedBehindStripPrefix checks that the path signed is the path as
// sent, not as seen by the Handler behind http.StripPrefix.
func TestSignedBehindStripPrefix(t *testing.T) {
	h, c := newSigned(t, secretA)
	mux := http.NewServeMux()
	mux.Handle("/base/", http.StripPrefix("/base", h))
	run := newRun("hello", 0, 1)
	r := rawRequest(run, bodyOf(run))
	r.RemoteAddr = remote
	r.URL.Path = "/base/jobs/hello"
	r.RequestURI = "/base/jobs/hello"
	stripped := r.Clone(r.Context())
	stripped.Body = io.NopCloser(strings.NewReader(bodyOf(run)))
	check(t, serve(mux, sign(r, bodyOf(run), secretA, clockT)), 200, "")

	// Signed for the path the Handler sees, not the one sent.
	stripped.URL.Path = "/jobs/hello"
	sign(stripped, bodyOf(run), secretA, clockT)
	stripped.URL.Path = "/base/jobs/hello"
	check(t, serve(mux, stripped), 401, jobs.CodeBadSignature)
	if c.n.Load() != 1 {
		t.Fatalf("%d runs, want 1", c.n.Load())
	}
}

// TestRotation follows the documented rotation: the apps accept [new,
// old], then [new] alone.
func TestRotation(t *testing.T) {
	oldS, newS := secretA, secretB
	both, c := newSigned(t, newS, oldS)
	check(t, serve(both, signedRequest(newRun("hello", 0, 1), oldS, clockT)), 200, "")
	check(t, serve(both, signedRequest(newRun("hello", 1, 1), newS, clockT)), 200, "")
	if c.n.Load() != 2 {
		t.Fatalf("%d runs, want 2", c.n.Load())
	}
	only, c := newSigned(t, newS)
	check(t, serve(only, signedRequest(newRun("hello", 2, 1), oldS, clockT)), 401, jobs.CodeBadSignature)
	check(t, serve(only, signedRequest(newRun("hello", 2, 1), newS, clockT)), 200, "")
	if c.n.Load() != 1 {
		t.Fatalf("%d runs, want 1", c.n.Load())
	}
}

// TestLoopbackOnly covers a Handler without secret: only loopback peers
// are served, whatever forwarding headers say.
func TestLoopbackOnly(t *testing.T) {
	for _, tc := range []struct {
		peer   string
		status int
	}{
		{"127.0.0.1:1234", 200},
		{"127.8.9.10:1234", 200},
		{"[::1]:1234", 200},
		{"[::ffff:127.0.0.1]:1234", 200},
		{"192.0.2.1:1234", 403},
		{"10.0.0.1:1234", 403},
		{"[2001:db8::1]:1234", 403},
		{"[::ffff:192.0.2.1]:1234", 403},
		{"0.0.0.0:1234", 403},
		{"[::]:1234", 403},
		{"127.0.0.1", 403}, // not host:port
		{"localhost:1234", 403},
		{"", 403},
		{"@", 403}, // a Unix socket peer
	} {
		t.Run(tc.peer, func(t *testing.T) {
			h := jobs.NewHandler(jobs.Options{})
			c := &counter{}
			h.Register("hello", c.Func)
			r := request(newRun("hello", 0, 1))
			r.RemoteAddr = tc.peer
			r.Header.Set("X-Forwarded-For", "127.0.0.1")
			r.Header.Set("Forwarded", "for=127.0.0.1")
			code := ""
			if tc.status == 403 {
				code = jobs.CodeNotLoopback
			}
			check(t, serve(h, r), tc.status, code)
			d := drainRequest()
			d.RemoteAddr = tc.peer
			if tc.status == 200 {
				check(t, serve(h, d), 200, "")
			} else {
				check(t, serve(h, d), 403, jobs.CodeNotLoopback)
			}
			if want := tc.status == 200; h.Draining() != want {
				t.Fatalf("Draining() = %v, want %v", h.Draining(), want)
			}
		})
	}
}

// TestStartupLog checks what New logs about authentication, and that no
// secret is logged.
func TestStartupLog(t *testing.T) {
	for _, tc := range []struct {
		secrets [][]byte
		level   slog.Level
		want    string
	}{
		{nil, slog.LevelWarn, "loopback"},
		{[][]byte{secretA, secretB}, slog.LevelInfo, oracleKID(secretB)},
	} {
		var buf bytes.Buffer
		logger := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
		if _, err := jobs.New(jobs.Options{Logger: logger, Secrets: tc.secrets}); err != nil {
			t.Fatal(err)
		}
		out := buf.String()
		if strings.Count(out, "\n") != 1 || !strings.Contains(out, "level="+tc.level.String()) || !strings.Contains(out, tc.want) {
			t.Errorf("New logged %q, want one %s line mentioning %q", out, tc.level, tc.want)
		}
		for _, s := range tc.secrets {
			if strings.Contains(out, string(s)) {
				t.Errorf("New logged a secret: %q", out)
			}
		}
	}
}

func TestBodyLimit(t *testing.T) {
	run := newRun("hello", 0, 1)
	padded := func(n int) string {
		b := bodyOf(run)
		return b + strings.Repeat(" ", n-len(b))
	}
	for _, secret := range [][]byte{nil, secretA} {
		t.Run("secret="+strconv.FormatBool(secret != nil), func(t *testing.T) {
			var secrets [][]byte
			if secret != nil {
				secrets = [][]byte{secret}
			}
			h, err := jobs.New(jobs.Options{Secrets: secrets, Now: fixedClock})
			if err != nil {
				t.Fatal(err)
			}
			c := &counter{}
			h.Register("hello", c.Func)
			req := func(body string) *http.Request {
				r := rawRequest(run, body)
				if secret != nil {
					sign(r, body, secret, clockT)
				}
				return r
			}
			check(t, serve(h, req(padded(jobs.MaxBodyBytes+1))), 413, jobs.CodeBodyTooLarge)
			d := drainRequest()
			d.Body = io.NopCloser(strings.NewReader(strings.Repeat(" ", jobs.MaxBodyBytes+1)))
			if secret != nil {
				sign(d, strings.Repeat(" ", jobs.MaxBodyBytes+1), secret, clockT)
			}
			check(t, serve(h, d), 413, jobs.CodeBodyTooLarge)
			if c.n.Load() != 0 || h.Draining() {
				t.Fatalf("refused requests: %d runs, draining %v", c.n.Load(), h.Draining())
			}
			check(t, serve(h, req(padded(jobs.MaxBodyBytes))), 200, "")
		})
	}
}

func TestNewRejectsShortSecret(t *testing.T) {
	short := []byte("0123456789abcdef0123456789abcde") // 31 bytes
	_, err := jobs.New(jobs.Options{Secrets: [][]byte{secretA, short}})
	if err == nil || !strings.Contains(err.Error(), "Secrets[1]") || strings.Contains(err.Error(), string(short)) {
		t.Fatalf("New with a 31-byte secret: err = %v, want one naming Secrets[1] without the secret", err)
	}
	if _, err := jobs.New(jobs.Options{Secrets: [][]byte{secretA, secretA}}); err != nil {
		t.Fatalf("New with a duplicate secret: %v", err)
	}
	defer func() {
		if recover() == nil {
			t.Fatal("NewHandler with a short secret did not panic")
		}
	}()
	jobs.NewHandler(jobs.Options{Secrets: [][]byte{short}})
}

func TestSecretsFromEnv(t *testing.T) {
	dir := t.TempDir()
	file := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	a, b := string(secretA), string(secretB)
	const (
		cur      = "LEADERCRON_TRIGGER_SECRET"
		curFile  = "LEADERCRON_TRIGGER_SECRET_FILE"
		prev     = "LEADERCRON_TRIGGER_SECRET_PREVIOUS"
		prevFile = "LEADERCRON_TRIGGER_SECRET_PREVIOUS_FILE"
	)
	tests := []struct {
		name    string
		env     map[string]string
		want    []string
		wantErr []string // substrings of the error
	}{
		{"none", nil, nil, nil},
		{"current", map[string]string{cur: a}, []string{a}, nil},
		{"current and previous", map[string]string{cur: b, prev: a}, []string{b, a}, nil},
		{"files", map[string]string{curFile: file("cur", b+"\n"), prevFile: file("prev", a+"\r\n")}, []string{b, a}, nil},
		{"file without newline", map[string]string{curFile: file("bare", a)}, []string{a}, nil},
		{"one newline removed", map[string]string{curFile: file("two", a+"\n\n")}, []string{a + "\n"}, nil},
		{"both forms", map[string]string{cur: a, curFile: file("x", a)}, nil, []string{cur, curFile}},
		{"both forms of previous", map[string]string{cur: a, prev: b, prevFile: file("y", b)}, nil, []string{prev, prevFile}},
		{"short", map[string]string{cur: "tooshort"}, nil, []string{cur, "8 bytes"}},
		{"empty", map[string]string{cur: ""}, nil, []string{cur, "0 bytes"}},
		{"short previous", map[string]string{cur: a, prev: "tooshort"}, nil, []string{prev}},
		{"short file", map[string]string{curFile: file("short", "tooshort\n")}, nil, []string{curFile, "8 bytes"}},
		{"missing file", map[string]string{curFile: filepath.Join(dir, "nope")}, nil, []string{curFile}},
		{"directory", map[string]string{curFile: dir}, nil, []string{curFile, "directory"}},
		{"empty path", map[string]string{curFile: ""}, nil, []string{curFile}},
		{"previous alone", map[string]string{prev: a}, nil, []string{prev, cur}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			for _, k := range []string{cur, curFile, prev, prevFile} {
				t.Setenv(k, "")
				os.Unsetenv(k)
			}
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			got, err := jobs.SecretsFromEnv()
			if tc.wantErr != nil {
				if err == nil {
					t.Fatalf("no error, want one mentioning %q", tc.wantErr)
				}
				for _, s := range tc.wantErr {
					if !strings.Contains(err.Error(), s) {
						t.Errorf("error %q does not mention %q", err, s)
					}
				}
				for _, s := range []string{a, b, "tooshort"} {
					if strings.Contains(err.Error(), s) {
						t.Errorf("error %q shows a secret", err)
					}
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var gs []string
			for _, g := range got {
				gs = append(gs, string(g))
			}
			if strings.Join(gs, "|") != strings.Join(tc.want, "|") || len(gs) != len(tc.want) {
				t.Fatalf("got %q, want %q", gs, tc.want)
			}
		})
	}
}

func TestListen(t *testing.T) {
	open := jobs.NewHandler(jobs.Options{})
	for _, addr := range []string{":0", "0.0.0.0:0", "[::]:0", "192.0.2.1:0", "[2001:db8::1]:0"} {
		ln, err := jobs.Listen(addr, open)
		if err == nil {
			ln.Close()
		}
		if !errors.Is(err, jobs.ErrNotLoopback) {
			t.Errorf("Listen(%q) without secret: err = %v, want ErrNotLoopback", addr, err)
		}
	}
	if _, err := jobs.Listen("127.0.0.1", open); err == nil || errors.Is(err, jobs.ErrNotLoopback) {
		t.Errorf("Listen without a port: err = %v", err)
	}
	for _, addr := range []string{"127.0.0.1:0", "localhost:0"} {
		ln, err := jobs.Listen(addr, open)
		if err != nil {
			t.Errorf("Listen(%q) without secret: %v", addr, err)
			continue
		}
		ln.Close()
	}

	signed, c := newSigned(t, secretA)
	ln, err := jobs.Listen(":0", signed)
	if err != nil {
		t.Fatalf("Listen(:0) with a secret: %v", err)
	}
	srv := &http.Server{Handler: signed}
	go srv.Serve(ln)
	defer srv.Close()
	port := ln.Addr().(*net.TCPAddr).Port

	run := newRun("hello", 0, 1)
	body := bodyOf(run)
	req, err := http.NewRequest(http.MethodPost, "http://127.0.0.1:"+strconv.Itoa(port)+"/jobs/hello", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header = request(run).Header
	jobs.SignRequest(req, []byte(body), secretA, clockT)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 || c.n.Load() != 1 {
		t.Fatalf("signed request over HTTP: status %d, %d runs", resp.StatusCode, c.n.Load())
	}
}
