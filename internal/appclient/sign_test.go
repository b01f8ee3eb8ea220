package appclient_test

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/leadercron/leadercron/internal/appclient"
	"github.com/leadercron/leadercron/internal/fate"
)

const testSecret = "0123456789abcdef0123456789abcdef"

// Errors of verify, as the spec's 401 codes.
var (
	errBadSignature   = errors.New("bad_signature")
	errStaleSignature = errors.New("stale_signature")
)

// verify checks r's Leadercron-Signature against secrets, as an app does
// by the spec, written from the spec and not from the Signer: the path is
// the request line's raw path, and the fields are read from the request
// the server parsed.
func verify(r *http.Request, body []byte, secrets []string, now time.Time) error {
	h := r.Header.Get(appclient.HeaderSignature)
	var ts, kid, v1 string
	for part := range strings.SplitSeq(h, ",") {
		k, v, _ := strings.Cut(part, "=")
		switch k {
		case "t":
			ts = v
		case "kid":
			kid = v
		case "v1":
			v1 = v
		}
	}
	t, err := strconv.ParseInt(ts, 10, 64)
	if err != nil || len(kid) != 8 || len(v1) != 64 {
		return fmt.Errorf("%w: header %q", errBadSignature, h)
	}
	path, _, _ := strings.Cut(r.RequestURI, "?")
	bodySum := sha256.Sum256(body)
	lines := []string{"leadercron-v1", r.Method, path, ts,
		r.Header.Get("Leadercron-Job"), r.Header.Get("Leadercron-Slot"), r.Header.Get("Leadercron-Fencing-Token"),
		r.Header.Get("Leadercron-Deadline"), r.Header.Get("Idempotency-Key"), r.Header.Get("Leadercron-Attempt"),
		r.Header.Get("Leadercron-Run-Now"), r.Header.Get("Leadercron-Id"), hex.EncodeToString(bodySum[:])}
	for _, secret := range secrets {
		kidSum := sha256.Sum256([]byte("leadercron-kid\n" + secret))
		if hex.EncodeToString(kidSum[:])[:8] != kid {
			continue
		}
		mac := hmac.New(sha256.New, []byte(secret))
		mac.Write([]byte(strings.Join(lines, "\n")))
		got, err := hex.DecodeString(v1)
		if err != nil || !hmac.Equal(got, mac.Sum(nil)) {
			return fmt.Errorf("%w: mismatch", errBadSignature)
		}
		if d := now.Unix() - t; d > 30 || d < -30 {
			return fmt.Errorf("%w: t %d is %ds from now", errStaleSignature, t, d)
		}
		return nil
	}
	return fmt.Errorf("%w: no secret with kid %s", errBadSignature, kid)
}

// received is one request an app received, as it read it.
type received struct {
	req  *http.Request
	body []byte
}

// recordingApp answers /base/jobs/* with 204 and /base/drain with
// {"running": 0}, and keeps every request.
func recordingApp(t *testing.T) (*url.URL, func() []received) {
	t.Helper()
	var (
		mu   sync.Mutex
		reqs []received
	)
	srv := server(t, func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		mu.Lock()
		reqs = append(reqs, received{r.Clone(context.Background()), b})
		mu.Unlock()
		if strings.HasSuffix(r.URL.Path, "/drain") {
			io.WriteString(w, `{"running": 0}`)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})
	u, err := url.Parse(srv.URL + "/base")
	if err != nil {
		t.Fatal(err)
	}
	return u, func() []received {
		mu.Lock()
		defer mu.Unlock()
		return append([]received(nil), reqs...)
	}
}

func newSigner(t testing.TB, secret string, now func() time.Time) *appclient.Signer {
	t.Helper()
	s, err := appclient.NewSigner([]byte(secret), now)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestSignedRequests: with a Signer, every trigger (scheduled and
// run-now) and every drain poll carries a signature that an app verifying
// by the spec accepts, and a changed field, another secret or an old t
// does not pass.
func TestSignedRequests(t *testing.T) {
	t.Parallel()
	base, got := recordingApp(t)
	c := appclient.New(base, sidecarID, http.DefaultClient, appclient.WithSigner(newSigner(t, testSecret, nil)))
	runNow := trigger("send-report")
	runNow.RunNow = "r-1"
	runNow.Attempt = 3
	for _, tr := range []appclient.Trigger{trigger("send-report"), runNow} {
		if res := c.Trigger(context.Background(), tr); res.Outcome != fate.Fired {
			t.Fatalf("trigger: %+v", res)
		}
	}
	if _, err := c.Drain(context.Background(), time.Millisecond); err != nil {
		t.Fatalf("drain: %v", err)
	}
	reqs := got()
	if len(reqs) != 3 {
		t.Fatalf("app got %d requests, want 2 triggers and 1 drain poll", len(reqs))
	}
	wantPaths := []string{"/base/jobs/send-report", "/base/jobs/send-report", "/base/drain"}
	wantAttempts := []string{"1", "3", ""} // not on /drain
	for i, r := range reqs {
		if r.req.URL.Path != wantPaths[i] {
			t.Errorf("request %d to %s, want %s", i, r.req.URL.Path, wantPaths[i])
		}
		if got := r.req.Header.Values(appclient.HeaderAttempt); strings.Join(got, ",") != wantAttempts[i] {
			t.Errorf("%s: Leadercron-Attempt %q, want %q", r.req.URL.Path, got, wantAttempts[i])
		}
		if n := len(r.req.Header.Values(appclient.HeaderSignature)); n != 1 {
			t.Errorf("%s: %d Leadercron-Signature headers, want 1", r.req.URL.Path, n)
		}
		if err := verify(r.req, r.body, []string{"another secret of 32 bytes or more", testSecret}, time.Now()); err != nil {
			t.Errorf("%s: the app refuses the signature: %v", r.req.URL.Path, err)
		}
	}
	if reqs[1].req.Header.Get("Leadercron-Run-Now") != "r-1" {
		t.Errorf("run-now header %q, want r-1", reqs[1].req.Header.Get("Leadercron-Run-Now"))
	}

	// The verifier is not a rubber stamp: each change is refused.
	r := reqs[0]
	tampered := r.req.Clone(context.Background())
	tampered.Header.Set("Leadercron-Fencing-Token", "8")
	if err := verify(tampered, r.body, []string{testSecret}, time.Now()); !errors.Is(err, errBadSignature) {
		t.Errorf("a changed fencing token: %v, want bad_signature", err)
	}
	if err := verify(r.req, append([]byte(" "), r.body...), []string{testSecret}, time.Now()); !errors.Is(err, errBadSignature) {
		t.Errorf("a changed body: %v, want bad_signature", err)
	}
	if err := verify(r.req, r.body, []string{"another secret of 32 bytes or more"}, time.Now()); !errors.Is(err, errBadSignature) {
		t.Errorf("another secret: %v, want bad_signature", err)
	}
	if err := verify(r.req, r.body, []string{testSecret}, time.Now().Add(31*time.Second)); !errors.Is(err, errStaleSignature) {
		t.Errorf("31 s later: %v, want stale_signature", err)
	}
}

// TestSignatureTime: t is the Signer's clock when the request is built.
func TestSignatureTime(t *testing.T) {
	t.Parallel()
	base, got := recordingApp(t)
	at := time.Now().Add(-20 * time.Second).Truncate(time.Second)
	c := appclient.New(base, sidecarID, http.DefaultClient,
		appclient.WithSigner(newSigner(t, testSecret, func() time.Time { return at })))
	c.Trigger(context.Background(), trigger("x"))
	reqs := got()
	if len(reqs) != 1 {
		t.Fatalf("app got %d requests, want 1", len(reqs))
	}
	h := reqs[0].req.Header.Get(appclient.HeaderSignature)
	if want := "t=" + strconv.FormatInt(at.Unix(), 10) + ",kid=37a08647,v1="; !strings.HasPrefix(h, want) {
		t.Errorf("Leadercron-Signature %q, want it to start with %q", h, want)
	}
	if err := verify(reqs[0].req, reqs[0].body, []string{testSecret}, at.Add(30*time.Second)); err != nil {
		t.Errorf("30 s after t: %v, want accepted", err)
	}
}

// TestUnsignedRequests: without a Signer, no request carries a signature;
// triggers still carry Leadercron-Attempt.
func TestUnsignedRequests(t *testing.T) {
	t.Parallel()
	base, got := recordingApp(t)
	c := appclient.New(base, sidecarID, http.DefaultClient)
	tr := trigger("x")
	tr.Attempt = 2
	c.Trigger(context.Background(), tr)
	if _, err := c.Drain(context.Background(), time.Millisecond); err != nil {
		t.Fatalf("drain: %v", err)
	}
	reqs := got()
	if len(reqs) != 2 {
		t.Fatalf("app got %d requests, want 2", len(reqs))
	}
	for _, r := range reqs {
		if v := r.req.Header.Values(appclient.HeaderSignature); v != nil {
			t.Errorf("%s: unsigned client sent Leadercron-Signature %q", r.req.URL.Path, v)
		}
	}
	if a := reqs[0].req.Header.Values(appclient.HeaderAttempt); len(a) != 1 || a[0] != "2" {
		t.Errorf("trigger's Leadercron-Attempt %q, want 2", a)
	}
}

func TestNewSigner(t *testing.T) {
	t.Parallel()
	if _, err := appclient.NewSigner([]byte(testSecret[:31]), nil); err == nil {
		t.Error("NewSigner accepted a 31-byte secret")
	} else if strings.Contains(err.Error(), testSecret[:31]) {
		t.Errorf("NewSigner's error shows the secret: %v", err)
	}
	secret := []byte(testSecret)
	s := newSigner(t, string(secret), nil)
	secret[0] = 'X' // the Signer keeps its own copy
	if s.KeyID() != "37a08647" {
		t.Errorf("kid %s after the caller changed its slice, want 37a08647", s.KeyID())
	}
	for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%x", "%d"} {
		for _, v := range []any{s, *s} {
			if out := fmt.Sprintf(verb, v); strings.Contains(out, testSecret) || strings.Contains(out, hex.EncodeToString([]byte(testSecret))) ||
				strings.Contains(out, "48 49 50") {
				t.Errorf("%s of a Signer shows its secret: %s", verb, out)
			}
		}
	}
}

// BenchmarkSign is the cost of signing one trigger: the canonical string,
// the body's SHA-256 and the HMAC.
func BenchmarkSign(b *testing.B) {
	s := newSigner(b, testSecret, nil)
	body := []byte(`{"job":"send-report","slot":"2026-11-22T03:00:00Z","fencing_token":42,"deadline":"2026-11-22T03:10:00.123456789Z",` +
		`"idempotency_key":"send-report@2026-11-22T03:00:00Z","attempt":1}`)
	req := httptest.NewRequest(http.MethodPost, "http://127.0.0.1:8080/jobs/send-report", nil)
	for k, v := range map[string]string{"Leadercron-Job": "send-report", "Leadercron-Slot": "2026-11-22T03:00:00Z",
		"Leadercron-Fencing-Token": "42", "Leadercron-Deadline": "2026-11-22T03:10:00.123456789Z",
		"Idempotency-Key": "send-report@2026-11-22T03:00:00Z", "Leadercron-Attempt": "1", "Leadercron-Id": sidecarID} {
		req.Header.Set(k, v)
	}
	b.ReportAllocs()
	for b.Loop() {
		s.Sign(req, body)
	}
}

// BenchmarkTrigger is one trigger's round trip to an app on loopback that
// answers 204 at once, unsigned and signed: the difference is what signing
// adds to a trigger.
func BenchmarkTrigger(b *testing.B) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.WriteHeader(http.StatusNoContent)
	}))
	defer srv.Close()
	u, err := url.Parse(srv.URL)
	if err != nil {
		b.Fatal(err)
	}
	for _, signed := range []bool{false, true} {
		name := "unsigned"
		var opts []appclient.Option
		if signed {
			name = "signed"
			opts = append(opts, appclient.WithSigner(newSigner(b, testSecret, nil)))
		}
		b.Run(name, func(b *testing.B) {
			hc := appclient.NewHTTPClient()
			defer hc.CloseIdleConnections()
			c := appclient.New(u, sidecarID, hc, opts...)
			tr := trigger("send-report")
			b.ReportAllocs()
			for b.Loop() {
				if res := c.Trigger(context.Background(), tr); res.Outcome != fate.Fired {
					b.Fatalf("trigger: %+v", res)
				}
			}
		})
	}
}
