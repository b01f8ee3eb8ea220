package jobs_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"time"

	"github.com/leadercron/leadercron/examples/go/jobs"
)

// A Handler with one job, served on a private loopback listener, receives
// a trigger signed as the sidecar signs it, then an unsigned request, then
// the drain the sidecar sends before it hands leadership on.
func Example() {
	// In an app: secrets, err := jobs.SecretsFromEnv()
	secret := []byte("0123456789abcdef0123456789abcdef") // at least 32 bytes
	h, err := jobs.New(jobs.Options{Secrets: [][]byte{secret}})
	if err != nil {
		fmt.Println(err)
		return
	}
	h.Register("send-report", func(ctx context.Context, run jobs.Run) error {
		// ctx ends at run.Deadline. Use run.Slot, not time.Now, for "which
		// report is this", and pass run.FencingToken to storage that can
		// refuse a stale leader's writes.
		fmt.Printf("sending the report of %s (fencing token %d, attempt %d)\n",
			run.Slot.Format(time.RFC3339), run.FencingToken, run.Attempt)
		return nil
	})

	// The private trigger listener; the sidecar's LEADERCRON_APP_URL
	// points at it (http://127.0.0.1:8081 in the examples).
	ln, err := jobs.Listen("127.0.0.1:0", h)
	if err != nil {
		fmt.Println(err)
		return
	}
	srv := httptest.NewUnstartedServer(h)
	srv.Listener.Close()
	srv.Listener = ln
	srv.Start()
	defer srv.Close()

	// What the sidecar sends at a slot.
	slot := time.Date(2030, 1, 7, 8, 0, 0, 0, time.UTC)
	body, _ := json.Marshal(map[string]any{
		"job":           "send-report",
		"slot":          slot.Format(time.RFC3339),
		"fencing_token": 42,
		"deadline":      time.Now().Add(time.Minute).UTC().Format(time.RFC3339),
	})
	post := func(path string, body []byte, sign bool) {
		req, err := http.NewRequest(http.MethodPost, srv.URL+path, bytes.NewReader(body))
		if err != nil {
			fmt.Println(err)
			return
		}
		req.Header.Set("Content-Type", "application/json")
		if sign {
			jobs.SignRequest(req, body, secret, time.Now())
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			fmt.Println(err)
			return
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		var answer struct {
			Status  string `json:"status"`
			Code    string `json:"code"`
			Running *int   `json:"running"`
		}
		_ = json.Unmarshal(b, &answer)
		switch {
		case answer.Running != nil:
			fmt.Printf("%s: %d, running %d\n", path, resp.StatusCode, *answer.Running)
		case answer.Code != "":
			fmt.Printf("%s: %d %s\n", path, resp.StatusCode, answer.Code)
		default:
			fmt.Printf("%s: %d %s\n", path, resp.StatusCode, answer.Status)
		}
	}

	post("/jobs/send-report", body, true)
	post("/jobs/send-report", body, false) // not signed: refused, nothing runs
	post("/drain", nil, true)
	post("/jobs/send-report", body, true) // after the drain: refused

	// Output:
	// sending the report of 2030-01-07T08:00:00Z (fencing token 42, attempt 1)
	// /jobs/send-report: 200 succeeded
	// /jobs/send-report: 401 bad_signature
	// /drain: 200, running 0
	// /jobs/send-report: 503 draining
}

// SignRequest lets a test of an app's jobs send the sidecar's requests
// without a sidecar, here straight to the Handler with an
// httptest.ResponseRecorder.
func ExampleSignRequest() {
	secret := []byte("a test secret, 32 bytes or more.")
	h := jobs.NewHandler(jobs.Options{Secrets: [][]byte{secret}})
	h.Register("sync-prices", func(ctx context.Context, run jobs.Run) error { return nil })

	trigger := func() *http.Request {
		body := []byte(`{"slot": "2030-01-07T08:05:00Z", "fencing_token": 7, "deadline": "` +
			time.Now().Add(time.Minute).UTC().Format(time.RFC3339) + `"}`)
		req := httptest.NewRequest(http.MethodPost, "/jobs/sync-prices", bytes.NewReader(body))
		jobs.SignRequest(req, body, secret, time.Now())
		return req
	}

	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, trigger())
	fmt.Println(rec.Code)

	// A second trigger for the same slot has the same idempotency key
	// ("sync-prices@2030-01-07T08:05:00Z"), and that run succeeded.
	rec = httptest.NewRecorder()
	h.ServeHTTP(rec, trigger())
	var refusal struct{ Code string }
	_ = json.Unmarshal(rec.Body.Bytes(), &refusal)
	fmt.Println(rec.Code, refusal.Code)

	// Output:
	// 200
	// 409 duplicate
}
