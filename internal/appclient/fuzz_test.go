package appclient_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/leadercron/leadercron/internal/appclient"
)

// maxFuzzDrainBody bounds the fuzzed answer: Drain reads at most 64 KiB of
// it, and a little more shows that the rest is not read.
const maxFuzzDrainBody = 64<<10 + 256

// fuzzDrainApp answers the first /drain poll of each round with the fuzzed
// status and body. A second poll means Drain did not take the answer as
// drained: it cancels the round's context and answers 503, so that Drain
// returns at once with what it made of the first answer.
type fuzzDrainApp struct {
	mu     sync.Mutex
	status int
	body   []byte
	polls  int
	cancel context.CancelFunc
}

func (a *fuzzDrainApp) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.polls++
	if r.Method != http.MethodPost || r.URL.Path != "/drain" {
		http.Error(w, "unexpected "+r.Method+" "+r.URL.Path, http.StatusTeapot)
		return
	}
	if a.polls > 1 {
		a.cancel()
		w.WriteHeader(http.StatusServiceUnavailable)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(a.status)
	_, _ = w.Write(a.body)
}

// FuzzDrainAnswer fuzzes what Drain makes of the app's answer to
// POST /drain (status and body), through a real HTTP server.
//
// The contract: 200 with {"running": N}. Drain may report the app drained
// only on a 200 whose body starts with a JSON object whose "running" is
// the integer 0. encoding/json's own leniency is accepted: the key matches
// case-insensitively, the last of duplicate keys wins, and what follows
// the first JSON value is not read. Everything else (another status, a
// body that is not such an object, "running" missing, null, fractional,
// a string, out of int's range, or a positive or negative count) is not
// drained: Drain polls again, and reports the last count it read when its
// context ends (ErrDrainTimeout).
//
// Properties: no panic; drained only as above; a well-formed non-zero
// count is the Running of the timeout; bounded input (maxFuzzDrainBody).
func FuzzDrainAnswer(f *testing.F) {
	for _, seed := range []struct {
		status int
		body   string
	}{
		{200, `{"running": 0}`},
		{200, `{"running":0}` + "\n"},
		{200, `{"running": 3}`},
		{200, `{"running": -1}`},
		{200, `{"running": 0.0}`},
		{200, `{"running": 1e0}`},
		{200, `{"running": "0"}`},
		{200, `{"running": null}`},
		{200, `{"running": false}`},
		{200, `{"running": 99999999999999999999}`},
		{200, `{"Running": 0}`},
		{200, `{"RUNNING": 2}`},
		{200, `{"running": 1, "running": 0}`},
		{200, `{"running": 0, "running": 1}`},
		{200, `{"running": 0} trailing`},
		{200, `{"running": 0, "jobs": ["a", "b"]}`},
		{200, `{"jobs": 0}`},
		{200, `{}`},
		{200, `[]`},
		{200, `0`},
		{200, `null`},
		{200, ``},
		{200, `{"running": `},
		{200, `{"running": -0}`},
		{204, ``},
		{202, `{"running": 0}`},
		{503, `{"running": 0}`},
		{500, `boom`},
		{404, `{"running": 0}`},
	} {
		f.Add(seed.status, []byte(seed.body))
	}

	app := &fuzzDrainApp{}
	srv := httptest.NewServer(app)
	f.Cleanup(srv.Close)
	base, err := url.Parse(srv.URL)
	if err != nil {
		f.Fatal(err)
	}
	client := appclient.New(base, "fuzz", appclient.NewHTTPClient())

	f.Fuzz(func(t *testing.T, status int, body []byte) {
		if len(body) > maxFuzzDrainBody {
			t.Skip()
		}
		// A final status (200..599): a 1xx would be an interim answer that
		// net/http follows with a 200 of its own.
		status = 200 + (status%400+400)%400

		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		app.mu.Lock()
		app.status, app.body, app.polls, app.cancel = status, body, 0, cancel
		app.mu.Unlock()

		res, err := client.Drain(ctx, time.Millisecond)

		app.mu.Lock()
		polls := app.polls
		app.mu.Unlock()
		running, wellFormed := runningOf(status, body)
		switch {
		case err == nil:
			if !wellFormed || running != 0 {
				t.Fatalf("answer %d %q taken as drained (result %+v)", status, body, res)
			}
			if res.Running != 0 || res.Gone || res.Polls != 1 || polls != 1 {
				t.Fatalf("drained on answer %d %q, but result %+v after %d polls", status, body, res, polls)
			}
		case !errors.Is(err, appclient.ErrDrainTimeout):
			t.Fatalf("answer %d %q: error %v, want ErrDrainTimeout", status, body, err)
		case ctx.Err() != context.Canceled:
			t.Fatalf("answer %d %q: Drain gave up before its second poll: %v", status, body, err)
		case wellFormed && running == 0:
			t.Fatalf("answer %d %q means drained, but Drain returned %v (result %+v)", status, body, err, res)
		case wellFormed && res.Running != running:
			t.Fatalf("answer %d %q: Running %d, want %d", status, body, res.Running, running)
		case !wellFormed && res.Running != 0:
			t.Fatalf("answer %d %q is not {\"running\": N}, yet Running is %d", status, body, res.Running)
		}
	})
}

// runningOf is the contract, written apart from Drain: whether the answer
// is a 200 whose body starts with a JSON object with an integer "running"
// (matched as encoding/json matches a field name: the last key equal to
// it under Unicode case folding), and that integer.
func runningOf(status int, body []byte) (int, bool) {
	if status != http.StatusOK {
		return 0, false
	}
	if len(body) > 64<<10 {
		body = body[:64<<10]
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	var obj map[string]json.RawMessage
	if err := dec.Decode(&obj); err != nil || obj == nil {
		return 0, false
	}
	// The object's keys in order, to find the last match.
	var raw json.RawMessage
	found := false
	keys := json.NewDecoder(bytes.NewReader(body))
	keys.UseNumber()
	if _, err := keys.Token(); err != nil { // {
		return 0, false
	}
	for keys.More() {
		tok, err := keys.Token()
		if err != nil {
			return 0, false
		}
		var v json.RawMessage
		if err := keys.Decode(&v); err != nil {
			return 0, false
		}
		if k, _ := tok.(string); strings.EqualFold(k, "running") {
			raw, found = v, true
		}
	}
	if !found {
		return 0, false
	}
	var n json.Number
	if err := json.Unmarshal(raw, &n); err != nil {
		return 0, false // null, a string, a bool, an object...
	}
	i, err := n.Int64()
	if err != nil || int64(int(i)) != i || strings.ContainsAny(n.String(), ".eE") {
		return 0, false
	}
	return int(i), true
}
