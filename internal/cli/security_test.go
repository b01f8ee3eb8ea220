package cli_test

import (
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/leadercron/leadercron/internal/cli"
	"github.com/leadercron/leadercron/internal/testkit"
)

const (
	triggerSecret = "trigger-secret-0123456789abcdef-0123456789"
	adminToken    = "admin-token-0123456789abcdef-0123456789abc"
)

// freePort is a loopback TCP port that nothing listens on now.
func freePort(t *testing.T) int {
	t.Helper()
	ports, err := testkit.FreePorts(1)
	if err != nil {
		t.Fatal(err)
	}
	return ports[0]
}

// outsideIP returns an address of this host that is not loopback, from
// which a connection to the admin port has a non-loopback peer, or "".
func outsideIP() string {
	addrs, _ := net.InterfaceAddrs()
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok && n.IP.To4() != nil && !n.IP.IsLoopback() && !n.IP.IsLinkLocalUnicast() {
			return n.IP.String()
		}
	}
	return ""
}

func noSecret(t *testing.T, what, text string) {
	t.Helper()
	for _, s := range []string{triggerSecret, adminToken} {
		if strings.Contains(text, s) {
			t.Errorf("%s shows a secret:\n%s", what, text)
		}
	}
}

// TestAdminPortGuarded runs a standalone sidecar whose admin port listens
// on every address, without an admin token: it starts, warns that
// /handover answers 401 beyond loopback, keeps its read-only endpoints
// open, refuses POST /handover from this host's non-loopback address, and
// takes it from loopback. No log line and no answer shows a secret.
func TestAdminPortGuarded(t *testing.T) {
	port := freePort(t)
	env := []string{
		"LEADERCRON_SERVICE=security-test", "LEADERCRON_ID=alice", "LEADERCRON_LOCK=none",
		"LEADERCRON_LISTEN=0.0.0.0:" + strconv.Itoa(port),
		"LEADERCRON_APP_URL=http://127.0.0.1:" + strconv.Itoa(freePort(t)), // refused: drained at once
		"LEADERCRON_TRIGGER_SECRET=" + triggerSecret,
		"LEADERCRON_JOB_NIGHTLY=0 3 * * *",
	}
	var logs testkit.SyncBuffer
	ctx, cancel := context.WithCancel(context.Background())
	code := make(chan int, 1)
	go func() { code <- cli.Main(ctx, nil, env, io.Discard, &logs) }()
	defer func() {
		cancel()
		if c := <-code; c != cli.ExitOK {
			t.Errorf("exit %d, want 0\n%s", c, logs.String())
		}
		out := logs.String()
		noSecret(t, "the logs", out)
		if !strings.Contains(out, "POST /handover answers 401 to non-loopback callers") ||
			!strings.Contains(out, `"variable":"LEADERCRON_ADMIN_TOKEN"`) {
			t.Errorf("no start-up warning that /handover answers 401 beyond loopback:\n%s", out)
		}
		if !strings.Contains(out, `"trigger_signature":"v1 kid `) {
			t.Errorf("the start-up log does not say that triggers are signed:\n%s", out)
		}
	}()

	hc := &http.Client{Timeout: 10 * time.Second}
	call := func(method, host, path string) (int, string) {
		t.Helper()
		req, _ := http.NewRequest(method, "http://"+net.JoinHostPort(host, strconv.Itoa(port))+path, nil)
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", method, path, err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		noSecret(t, method+" "+path, string(b))
		return resp.StatusCode, string(b)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		conn, err := net.Dial("tcp", "127.0.0.1:"+strconv.Itoa(port))
		if err == nil {
			conn.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("admin port never opened:\n%s", logs.String())
		}
		time.Sleep(20 * time.Millisecond)
	}

	host := outsideIP()
	if host == "" {
		t.Log("no non-loopback address on this host: the non-loopback calls go through loopback")
		host = "127.0.0.1"
	}
	for _, path := range []string{"/healthz", "/status", "/metrics"} {
		if c, _ := call(http.MethodGet, host, path); c != http.StatusOK {
			t.Errorf("GET %s from %s: %d, want 200", path, host, c)
		}
	}
	if host != "127.0.0.1" {
		if c, b := call(http.MethodPost, host, "/handover"); c != http.StatusUnauthorized {
			t.Errorf("POST /handover from %s: %d %s, want 401", host, c, b)
		}
		if _, b := call(http.MethodGet, "127.0.0.1", "/status"); !strings.Contains(b, `"handed_over": false`) {
			t.Errorf("a refused handover changed the state: %s", b)
		}
	}
	if c, b := call(http.MethodPost, "127.0.0.1", "/handover"); c != http.StatusOK || !strings.Contains(b, "released") {
		t.Errorf("POST /handover from loopback: %d %s, want 200 released", c, b)
	}
}

// TestAdminTokenAccepted: with LEADERCRON_ADMIN_TOKEN (from a file), a
// non-loopback caller with the token hands over.
func TestAdminTokenAccepted(t *testing.T) {
	host := outsideIP()
	if host == "" {
		t.Skip("no non-loopback address on this host")
	}
	port := freePort(t)
	file := t.TempDir() + "/token"
	if err := writeFile(file, adminToken+"\n"); err != nil {
		t.Fatal(err)
	}
	env := []string{
		"LEADERCRON_SERVICE=security-test", "LEADERCRON_ID=bob", "LEADERCRON_LOCK=none",
		"LEADERCRON_LISTEN=0.0.0.0:" + strconv.Itoa(port),
		"LEADERCRON_APP_URL=http://127.0.0.1:" + strconv.Itoa(freePort(t)),
		"LEADERCRON_ADMIN_TOKEN_FILE=" + file,
	}
	var logs testkit.SyncBuffer
	ctx, cancel := context.WithCancel(context.Background())
	code := make(chan int, 1)
	go func() { code <- cli.Main(ctx, nil, env, io.Discard, &logs) }()
	defer func() {
		cancel()
		<-code
		noSecret(t, "the logs", logs.String())
		if strings.Contains(logs.String(), "answers 401 to non-loopback callers") {
			t.Errorf("warned about a missing admin token that is set:\n%s", logs.String())
		}
	}()
	url := "http://" + net.JoinHostPort(host, strconv.Itoa(port)) + "/handover"
	deadline := time.Now().Add(10 * time.Second)
	for {
		for _, auth := range []string{"", "Bearer wrong-token-0123456789abcdef0123456789"} {
			req, _ := http.NewRequest(http.MethodPost, url, nil)
			if auth != "" {
				req.Header.Set("Authorization", auth)
			}
			if resp, err := http.DefaultClient.Do(req); err == nil {
				resp.Body.Close()
				if resp.StatusCode != http.StatusUnauthorized {
					t.Fatalf("POST /handover with Authorization %q: %d, want 401", auth, resp.StatusCode)
				}
			}
		}
		req, _ := http.NewRequest(http.MethodPost, url, nil)
		req.Header.Set("Authorization", "Bearer "+adminToken)
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK || !strings.Contains(string(b), "released") {
				t.Fatalf("POST /handover with the token: %d %s, want 200 released", resp.StatusCode, b)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("admin port never answered: %v\n%s", err, logs.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestValidateShowsNoSecret: validate, and the configuration errors it
// prints, never show a secret.
func TestValidateShowsNoSecret(t *testing.T) {
	base := []string{"LEADERCRON_SERVICE=security-test", "LEADERCRON_ID=alice", "LEADERCRON_LOCK=none"}
	ok := run(t, append(base, "LEADERCRON_TRIGGER_SECRET="+triggerSecret, "LEADERCRON_ADMIN_TOKEN="+adminToken), "validate")
	if ok.code != cli.ExitOK {
		t.Fatalf("validate: exit %d\n%s", ok.code, ok.stderr)
	}
	noSecret(t, "validate's output", ok.stdout+ok.stderr)
	bad := run(t, append(base, "LEADERCRON_TRIGGER_SECRET="+triggerSecret[:31], "LEADERCRON_ADMIN_TOKEN="+adminToken,
		"LEADERCRON_ADMIN_TOKEN_FILE=/nonexistent", "LEADERCRON_TRIGER_SECRET="+triggerSecret), "validate")
	if bad.code != cli.ExitConfig {
		t.Fatalf("validate with bad secrets: exit %d, want %d", bad.code, cli.ExitConfig)
	}
	for _, want := range []string{"LEADERCRON_TRIGGER_SECRET: must be at least 32 bytes", "LEADERCRON_ADMIN_TOKEN: set together with",
		"LEADERCRON_TRIGER_SECRET: unknown variable"} {
		if !strings.Contains(bad.stderr, want) {
			t.Errorf("validate's errors do not say %q:\n%s", want, bad.stderr)
		}
	}
	noSecret(t, "validate's errors", bad.stdout+bad.stderr)
	if strings.Contains(bad.stderr, triggerSecret[:31]) {
		t.Errorf("validate's errors show the short secret:\n%s", bad.stderr)
	}
}

func writeFile(path, content string) error { return os.WriteFile(path, []byte(content), 0o600) }
