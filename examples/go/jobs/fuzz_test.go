package jobs_test

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/leadercron/leadercron/examples/go/jobs"
)

// fuzzHeaders are the headers FuzzParseRequest sets, in the order of its
// arguments.
var fuzzHeaders = []string{
	jobs.HeaderJob, jobs.HeaderSlot, jobs.HeaderFencingToken, jobs.HeaderDeadline,
	jobs.HeaderIdempotencyKey, jobs.HeaderAttempt, jobs.HeaderRunNow, jobs.HeaderID,
}

var sigPattern = regexp.MustCompile(`^t=(0|[1-9][0-9]{0,18}),kid=([0-9a-f]{8}),v1=([0-9a-f]{64})$`)

// FuzzParseRequest sends POST /jobs/{job} with fuzzed headers, body and
// signature to a Handler with a secret and checks it against an
// independent oracle: the Handler never panics; a body over the limit gets
// 413; a request whose signature the oracle does not find valid and fresh
// gets 401 and runs nothing; and a request that runs its job carries a
// well-formed body whose fields, and headers, all agree with the Run the
// job received.
//
// mode 0 sends sig as the signature; mode 1 signs the request at t = the
// clock + offset seconds; mode 2 signs it, then alters one part of it
// (chosen by flip).
func FuzzParseRequest(f *testing.F) {
	const slot, deadline = "2030-01-02T03:04:05Z", "2099-01-01T00:00:00Z"
	type seed struct {
		job, slot, token, deadline, key, attempt, runNow, id string
		body                                                 []byte
		mode                                                 uint8
		offset                                               int64
		flip                                                 uint16
		sig                                                  string
	}
	full := func(body string) seed {
		return seed{"hello", slot, "7", deadline, "hello@" + slot, "1", "", "sidecar-a", []byte(body), 1, 0, 0, ""}
	}
	short := func(job, token string, body string, offset int64) seed {
		return seed{job, slot, token, deadline, "", "", "", "", []byte(body), 1, offset, 0, ""}
	}
	good := `{"job":"hello","slot":"` + slot + `","fencing_token":7,"deadline":"` + deadline + `","idempotency_key":"hello@` + slot + `","attempt":1}`
	seeds := []seed{
		full(good),
		full(`{}`),
		full(`{"fencing_token":7}`),
		full(`{"fencing_token":8}`),
		full(`null`),
		full(`[]`),
		full(`{"fencing_token":7,"fencing_token":7}`),
		full(`{"FENCING_TOKEN":7}`),
		full(good + ` {}`),
		short("hello", "7", `{}`, 0),
		short("hello", "18446744073709551615", `{"attempt":2}`, 0),
		short("hello", "7\nx", `{}`, 0),
		short("hello", "7", `{}`, -31),
		short("hello", "7", `{}`, 30),
		short("hello", "7", `{}`, -1<<62),
		short("../drain", "7", `{}`, 0),
		short("hel%6co", "7", `{}`, 0),
		short("hello?x=1", "7", `{}`, 0),
	}
	for flip := range uint16(12) {
		s := full(good)
		s.mode, s.flip = 2, flip
		seeds = append(seeds, s)
	}
	for _, sig := range []string{"", "t=1900000000,kid=00000000,v1=" + strings.Repeat("0", 64), "t=1,kid=,v1=", "garbage"} {
		s := full(good)
		s.mode, s.sig = 0, sig
		seeds = append(seeds, s)
	}
	for _, s := range seeds {
		f.Add(s.job, s.slot, s.token, s.deadline, s.key, s.attempt, s.runNow, s.id, s.body, s.mode, s.offset, s.flip, s.sig)
	}

	f.Fuzz(func(t *testing.T, job, hSlot, hToken, hDeadline, hKey, hAttempt, hRunNow, hID string,
		body []byte, mode uint8, offset int64, flip uint16, sig string) {
		h, c := newSigned(t, secretA)

		target := "/jobs/" + job
		u, err := url.ParseRequestURI(target)
		if err != nil {
			return
		}
		r := &http.Request{
			Method:     http.MethodPost,
			URL:        u,
			RequestURI: target,
			Proto:      "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
			Header:     http.Header{},
			Host:       "127.0.0.1:8081",
			RemoteAddr: remote,
		}
		for i, v := range []string{"hello", hSlot, hToken, hDeadline, hKey, hAttempt, hRunNow, hID} {
			if i == 0 {
				v = job // the job header follows the path
			}
			if v != "" {
				r.Header.Set(fuzzHeaders[i], v)
			}
		}
		wire, _, _ := strings.Cut(target, "?")
		signAt := func(t time.Time) {
			ts := strconv.FormatInt(t.Unix(), 10)
			r.Header.Set("Leadercron-Signature", "t="+ts+",kid="+oracleKID(secretA)+",v1="+
				oracleMAC(secretA, r.Method, wire, ts, r.Header, body))
		}
		switch mode % 3 {
		case 0:
			if sig != "" {
				r.Header.Set("Leadercron-Signature", sig)
			}
		case 1:
			signAt(clockT.Add(time.Duration(offset) * time.Second))
		case 2:
			signAt(clockT)
			switch flip % 4 {
			case 0:
				if len(body) > 0 {
					body = bytes.Clone(body)
					body[int(flip)%len(body)] ^= 1
				}
			case 1:
				r.Header.Set(fuzzHeaders[int(flip)%len(fuzzHeaders)], "tampered")
			case 2:
				r.Header.Del(fuzzHeaders[int(flip)%len(fuzzHeaders)])
			case 3:
				s := []byte(r.Header.Get("Leadercron-Signature"))
				s[len(s)-1-int(flip)%64] ^= 1
				r.Header.Set("Leadercron-Signature", string(s))
			}
		}
		r.Body = io.NopCloser(bytes.NewReader(body))

		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		if w.Header().Get("Content-Type") != "application/json" {
			// Answered by the router (404, 405, a redirect to the clean
			// path): the Handler never saw the request.
			if c.n.Load() != 0 {
				t.Fatalf("status %d from the router, yet the job ran", w.Code)
			}
			return
		}

		valid := oracleValid(r, wire, body)
		switch {
		case len(body) > jobs.MaxBodyBytes:
			if w.Code != 413 {
				t.Fatalf("body of %d bytes: status %d, want 413", len(body), w.Code)
			}
		case !valid:
			if w.Code != 401 {
				t.Fatalf("request with an invalid or stale signature: status %d, want 401; body %s\nheaders %q", w.Code, w.Body, r.Header)
			}
		default:
			if w.Code == 401 || w.Code == 403 || w.Code == 413 {
				t.Fatalf("validly signed request refused: status %d; body %s", w.Code, w.Body)
			}
		}
		if (w.Code == 200) != (c.n.Load() == 1) || c.n.Load() > 1 {
			t.Fatalf("status %d, but the job ran %d times", w.Code, c.n.Load())
		}
		if w.Code != 200 {
			return
		}
		if !valid {
			t.Fatal("ran a request whose signature is not valid")
		}
		checkAccepted(t, *c.last.Load(), u, r.Header, body)
	})
}

// oracleValid says whether r, sent with path wire and body, carries a
// valid and fresh signature by secretA under the spec.
func oracleValid(r *http.Request, wire string, body []byte) bool {
	sigs := r.Header.Values("Leadercron-Signature")
	if len(sigs) != 1 {
		return false
	}
	m := sigPattern.FindStringSubmatch(sigs[0])
	if m == nil || m[2] != oracleKID(secretA) {
		return false
	}
	ts, err := strconv.ParseInt(m[1], 10, 64)
	if err != nil || ts < clockT.Unix()-30 || ts > clockT.Unix()+30 {
		return false
	}
	for _, name := range signedTestHeaders {
		v := r.Header.Values(name)
		if len(v) > 1 || (len(v) == 1 && strings.ContainsAny(v[0], "\r\n")) {
			return false
		}
	}
	return m[3] == oracleMAC(secretA, r.Method, wire, m[1], r.Header, body)
}

// checkAccepted checks that an accepted request was well formed and that
// run is what it says.
func checkAccepted(t *testing.T, run jobs.Run, u *url.URL, hdr http.Header, body []byte) {
	t.Helper()
	if run.Job != "hello" || u.Path != "/jobs/hello" {
		t.Fatalf("ran job %q for path %q", run.Job, u.Path)
	}
	if run.Slot.IsZero() || run.Deadline.IsZero() || run.Slot.Location() != time.UTC ||
		run.Deadline.Location() != time.UTC || run.Attempt < 1 || run.IdempotencyKey == "" {
		t.Fatalf("accepted an incomplete run %+v", run)
	}
	sameTime := func(s string, want time.Time) bool {
		got, err := time.Parse(time.RFC3339Nano, s)
		return err == nil && got.Equal(want)
	}
	want := map[string]func(string) bool{
		"job":             func(s string) bool { return s == run.Job },
		"slot":            func(s string) bool { return sameTime(s, run.Slot) },
		"fencing_token":   func(s string) bool { return s == strconv.FormatUint(run.FencingToken, 10) },
		"deadline":        func(s string) bool { return sameTime(s, run.Deadline) },
		"idempotency_key": func(s string) bool { return s == "" || s == run.IdempotencyKey },
		"attempt":         func(s string) bool { return s == strconv.Itoa(run.Attempt) },
	}
	headerOf := map[string]string{
		"job": jobs.HeaderJob, "slot": jobs.HeaderSlot, "fencing_token": jobs.HeaderFencingToken,
		"deadline": jobs.HeaderDeadline, "idempotency_key": jobs.HeaderIdempotencyKey, "attempt": jobs.HeaderAttempt,
	}

	trimmed := bytes.TrimLeft(body, " \t\r\n")
	if !json.Valid(body) || len(trimmed) == 0 || trimmed[0] != '{' {
		t.Fatalf("accepted a body that is not a JSON object: %q", body)
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	var fields map[string]any
	if err := dec.Decode(&fields); err != nil {
		t.Fatalf("accepted body %q: %v", body, err)
	}
	for name, ok := range want {
		present := false
		if v, in := fields[name]; in && v != nil {
			present = true
			var s string
			switch v := v.(type) {
			case string:
				s = v
				if name == "fencing_token" || name == "attempt" {
					t.Fatalf("accepted %s as a string %q", name, v)
				}
			case json.Number:
				s = v.String()
			default:
				t.Fatalf("accepted body field %s = %v (%T)", name, v, v)
			}
			if !ok(s) {
				t.Fatalf("body %s %q disagrees with the run %+v", name, s, run)
			}
		}
		if vals := hdr.Values(headerOf[name]); len(vals) > 0 {
			present = true
			if len(vals) > 1 || !ok(vals[0]) {
				t.Fatalf("header %s %q disagrees with the run %+v", headerOf[name], vals, run)
			}
		}
		if !present {
			switch name {
			case "slot", "fencing_token", "deadline":
				t.Fatalf("accepted a request without %s", name)
			case "idempotency_key":
				if run.IdempotencyKey != "hello@"+run.Slot.Format(time.RFC3339Nano) {
					t.Fatalf("default idempotency key %q", run.IdempotencyKey)
				}
			case "attempt":
				if run.Attempt != 1 {
					t.Fatalf("default attempt %d", run.Attempt)
				}
			}
		}
	}
}
