package main

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/leadercron/leadercron/examples/go/jobs"
)

var secretVars = []string{
	"LEADERCRON_TRIGGER_SECRET", "LEADERCRON_TRIGGER_SECRET_FILE",
	"LEADERCRON_TRIGGER_SECRET_PREVIOUS", "LEADERCRON_TRIGGER_SECRET_PREVIOUS_FILE",
}

// cleanEnv unsets the variables the demo app reads, for the test.
func cleanEnv(t *testing.T) {
	for _, k := range append([]string{"APP_LISTEN", "LEADERCRON_APP_LISTEN"}, secretVars...) {
		t.Setenv(k, "")
		os.Unsetenv(k)
	}
}

const secret = "demo-secret-0123456789abcdef0123456789"

func TestParseConfig(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		env     map[string]string
		want    config
		wantErr string
	}{
		{name: "defaults", want: config{listen: "127.0.0.1:8080", triggerListen: "127.0.0.1:8081"}},
		{name: "env", env: map[string]string{"APP_LISTEN": ":9000", "LEADERCRON_APP_LISTEN": "127.0.0.1:9001"},
			want: config{listen: ":9000", triggerListen: "127.0.0.1:9001"}},
		{name: "flags beat env", args: []string{"-listen", ":7000", "-trigger-listen", "[::1]:7001", "-async"},
			env:  map[string]string{"APP_LISTEN": ":9000", "LEADERCRON_APP_LISTEN": "127.0.0.1:9001"},
			want: config{listen: ":7000", triggerListen: "[::1]:7001", async: true}},
		{name: "secrets", env: map[string]string{"LEADERCRON_TRIGGER_SECRET": secret, "LEADERCRON_TRIGGER_SECRET_PREVIOUS": secret + "-old"},
			want: config{listen: "127.0.0.1:8080", triggerListen: "127.0.0.1:8081", secrets: [][]byte{[]byte(secret), []byte(secret + "-old")}}},
		{name: "same address", args: []string{"-listen", "127.0.0.1:8081"}, wantErr: "-trigger-listen"},
		{name: "short secret", env: map[string]string{"LEADERCRON_TRIGGER_SECRET": "short-secret"}, wantErr: "LEADERCRON_TRIGGER_SECRET has 12 bytes"},
		{name: "both forms", env: map[string]string{"LEADERCRON_TRIGGER_SECRET": secret, "LEADERCRON_TRIGGER_SECRET_FILE": "/nonexistent"},
			wantErr: "LEADERCRON_TRIGGER_SECRET_FILE"},
		{name: "unknown flag", args: []string{"-nope"}, wantErr: "nope"},
		{name: "argument", args: []string{"extra"}, wantErr: "extra"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cleanEnv(t)
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			got, err := parseConfig(tc.args, io.Discard)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want one mentioning %q", err, tc.wantErr)
				}
				if strings.Contains(err.Error(), "short-secret") || strings.Contains(err.Error(), secret) {
					t.Fatalf("error shows the secret: %v", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got.listen != tc.want.listen || got.triggerListen != tc.want.triggerListen || got.async != tc.want.async ||
				len(got.secrets) != len(tc.want.secrets) {
				t.Fatalf("got %+v, want %+v", got, tc.want)
			}
			for i := range got.secrets {
				if !bytes.Equal(got.secrets[i], tc.want.secrets[i]) {
					t.Fatalf("secret %d differs", i)
				}
			}
		})
	}
}

// TestServe checks that the public address does not answer the contract
// and the trigger address does, with signatures, then the drain on ctx.
func TestServe(t *testing.T) {
	a, err := newApp(config{listen: "127.0.0.1:0", triggerListen: "127.0.0.1:0", secrets: [][]byte{[]byte(secret)}},
		slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- a.serve(ctx, func() {}) }()

	public := "http://" + a.publicLn.Addr().String()
	trigger := "http://" + a.triggerLn.Addr().String()
	slot := time.Now().UTC().Truncate(time.Second)
	body := `{"job":"hello","slot":"` + slot.Format(time.RFC3339) + `","fencing_token":1,"deadline":"` +
		slot.Add(time.Minute).Format(time.RFC3339) + `"}`
	post := func(url, body string, signed bool) int {
		t.Helper()
		req, err := http.NewRequest(http.MethodPost, url, strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		if signed {
			jobs.SignRequest(req, []byte(body), []byte(secret), time.Now())
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	for _, path := range []string{"/jobs/hello", "/drain"} {
		if code := post(public+path, body, true); code != 404 {
			t.Errorf("public POST %s: %d, want 404", path, code)
		}
	}
	if a.h.Draining() {
		t.Fatal("the public port drained the app")
	}
	for _, base := range []string{public, trigger} {
		resp, err := http.Get(base + "/healthz")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Errorf("GET %s/healthz: %d", base, resp.StatusCode)
		}
	}
	if code := post(trigger+"/jobs/hello", body, false); code != 401 {
		t.Errorf("unsigned trigger: %d, want 401", code)
	}
	if code := post(trigger+"/jobs/hello", body, true); code != 200 {
		t.Errorf("signed trigger: %d, want 200", code)
	}
	if code := post(trigger+"/drain", "", true); code != 200 || !a.h.Draining() {
		t.Errorf("signed drain: %d, draining %v", code, a.h.Draining())
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("serve did not return")
	}
}

func TestTriggerListenNeedsSecret(t *testing.T) {
	_, err := newApp(config{listen: "127.0.0.1:0", triggerListen: "0.0.0.0:0"}, slog.New(slog.DiscardHandler))
	if !errors.Is(err, jobs.ErrNotLoopback) {
		t.Fatalf("err = %v, want ErrNotLoopback", err)
	}
}

// TestExitCodes runs main in a child process: bad input exits 2 with a
// message naming the problem and no secret.
func TestExitCodes(t *testing.T) {
	if os.Getenv("DEMO_APP_RUN_MAIN") == "1" {
		os.Args = append([]string{"demo-app"}, strings.Fields(os.Getenv("DEMO_APP_ARGS"))...)
		main()
		os.Exit(0)
	}
	for _, tc := range []struct {
		args, env, want string
	}{
		{"-listen 127.0.0.1:0", "LEADERCRON_TRIGGER_SECRET=short-secret", "LEADERCRON_TRIGGER_SECRET has 12 bytes"},
		{"-listen 127.0.0.1:0 -trigger-listen 0.0.0.0:0", "", "not a loopback address"},
		{"-bogus", "", "bogus"},
	} {
		cmd := exec.Command(os.Args[0], "-test.run=^TestExitCodes$")
		cmd.Env = []string{"DEMO_APP_RUN_MAIN=1", "DEMO_APP_ARGS=" + tc.args}
		if tc.env != "" {
			cmd.Env = append(cmd.Env, tc.env)
		}
		out, err := cmd.CombinedOutput()
		var exit *exec.ExitError
		if !errors.As(err, &exit) || exit.ExitCode() != 2 || !strings.Contains(string(out), tc.want) ||
			strings.Contains(string(out), "short-secret") {
			t.Errorf("demo-app %s (%s): err %v, output %q; want exit 2 mentioning %q", tc.args, tc.env, err, out, tc.want)
		}
	}
}
