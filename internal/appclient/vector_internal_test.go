package appclient

import (
	"context"
	"io"
	"net/url"
	"testing"
	"time"
)

// TestSignatureVector reproduces the shared spec's test vector through the
// code that builds a trigger request: the Client's newTriggerRequest, with
// the vector's body and clock.
func TestSignatureVector(t *testing.T) {
	t.Parallel()
	const (
		secret  = "0123456789abcdef0123456789abcdef"
		wantKid = "37a08647"
		wantV1  = "9f2c9f5e07a52a5fbd55e9101c33986a767875bbe25f20e97f986eb85c7f3b34"
		body    = `{"job":"report"}`
	)
	signer, err := NewSigner([]byte(secret), func() time.Time { return time.Unix(1767225600, 0) })
	if err != nil {
		t.Fatal(err)
	}
	if signer.KeyID() != wantKid {
		t.Errorf("kid %s, want %s", signer.KeyID(), wantKid)
	}
	base, _ := url.Parse("http://127.0.0.1:8080")
	c := New(base, "sidecar-a", nil, WithSigner(signer))
	tr := Trigger{
		Job:          "report",
		Slot:         time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC),
		FencingToken: 42,
		Deadline:     time.Date(2026, 1, 1, 0, 0, 30, 0, time.UTC),
		Attempt:      1,
	}
	deadline := tr.Deadline.UTC().Format(time.RFC3339Nano)
	req, err := c.newTriggerRequest(context.Background(), tr, deadline, []byte(body))
	if err != nil {
		t.Fatal(err)
	}
	// The request is the vector's: check it before the signature.
	want := map[string]string{
		"Leadercron-Job":           "report",
		"Leadercron-Slot":          "2026-01-01T00:00:00Z",
		"Leadercron-Fencing-Token": "42",
		"Leadercron-Deadline":      "2026-01-01T00:00:30Z",
		"Idempotency-Key":          "report@2026-01-01T00:00:00Z",
		"Leadercron-Attempt":       "1",
		"Leadercron-Run-Now":       "",
		"Leadercron-Id":            "sidecar-a",
	}
	for h, v := range want {
		if got := req.Header.Get(h); got != v {
			t.Errorf("header %s %q, want %q", h, got, v)
		}
	}
	if req.Method != "POST" || req.URL.EscapedPath() != "/jobs/report" {
		t.Errorf("request %s %s, want POST /jobs/report", req.Method, req.URL.EscapedPath())
	}
	if req.GetBody != nil {
		t.Error("a signed trigger has GetBody set: the Transport could replay it")
	}
	if b, _ := io.ReadAll(req.Body); string(b) != body {
		t.Errorf("body %q, want %q", b, body)
	}
	wantSig := "t=1767225600,kid=" + wantKid + ",v1=" + wantV1
	if got := req.Header.Values(HeaderSignature); len(got) != 1 || got[0] != wantSig {
		t.Errorf("Leadercron-Signature %q, want %q", got, wantSig)
	}
}
