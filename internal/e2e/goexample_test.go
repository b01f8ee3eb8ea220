package e2e

import (
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/leadercron/leadercron/internal/testkit"
)

// TestGoExampleApp runs examples/go/demo-app (built on the public
// examples/go/jobs package) next to the sidecar in standalone mode, with
// the app health gate on and a trigger secret from a file shared by both:
// the app serves the contract only on its private port; unsigned requests
// (a trigger, a drain, a trigger with a huge fencing token) are refused
// there and change nothing, the public port does not answer the contract,
// and the sidecar's signed triggers still fire; SIGTERM drains the app
// before the sidecar exits 0.
func TestGoExampleApp(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: skipping a test that runs the leadercron binary")
	}
	dir := t.TempDir()
	appBin := filepath.Join(dir, "demo-app")
	build := exec.Command("go", "build", "-o", appBin, "github.com/leadercron/leadercron/examples/go/demo-app")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build demo-app: %v\n%s", err, out)
	}
	ports, err := testkit.FreePorts(2)
	if err != nil {
		t.Fatal(err)
	}
	publicAddr := "127.0.0.1:" + strconv.Itoa(ports[0])
	appAddr := "127.0.0.1:" + strconv.Itoa(ports[1]) // the private trigger port
	secretFile := filepath.Join(dir, "trigger-secret")
	if err := os.WriteFile(secretFile, []byte("e2e-secret-0123456789abcdef-0123456789\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	app, err := testkit.StartProcess(testkit.Command{Name: "demo-app", Path: appBin,
		Args: []string{"-listen", publicAddr, "-trigger-listen", appAddr},
		Env:  []string{"PATH=" + os.Getenv("PATH"), "LEADERCRON_TRIGGER_SECRET_FILE=" + secretFile}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		app.Kill()
		if t.Failed() {
			t.Logf("demo-app output:\n%s", app.Output())
		}
	})
	appLog := app.Output

	s := startSidecar(t, "a", map[string]string{
		"LEADERCRON_LOCK":                "none",
		"LEADERCRON_APP_URL":             "http://" + appAddr,
		"LEADERCRON_APP_HEALTH_URL":      "http://" + appAddr + "/healthz",
		"LEADERCRON_APP_HEALTH_INTERVAL": "200ms",
		"LEADERCRON_DRAIN_INTERVAL":      "100ms",
		"LEADERCRON_JOB_HELLO":           "* * * * * *",
		"LEADERCRON_TRIGGER_SECRET_FILE": secretFile,
	})
	attack(t, publicAddr, appAddr)
	waitStatus(t, s, 20*time.Second, "hello fired with 200", func(v map[string]any) bool {
		jobs, _ := v["jobs"].([]any)
		for _, j := range jobs {
			m, _ := j.(map[string]any)
			last, _ := m["last"].(map[string]any)
			if m["name"] == "hello" && last != nil && last["outcome"] == "fired" && last["http_status"] == float64(200) {
				return true
			}
		}
		return false
	})
	if n := strings.Count(appLog(), "hello from the demo app"); n < 1 {
		t.Errorf("the demo app logged %d hello runs", n)
	}
	s.Signal(t, syscall.SIGTERM)
	if code := s.Wait(t, 15*time.Second); code != 0 {
		t.Fatalf("sidecar exited %d after SIGTERM, want 0", code)
	}
	if out := s.Output(); !strings.Contains(out, "app drained") {
		t.Errorf("sidecar did not drain the demo app:\n%s", out)
	}
}

// attack sends what anyone on the host could send to the demo app without
// the secret: a trigger, a drain, and a trigger with the largest fencing
// token (which, accepted, would make the app refuse every real trigger).
// The private port refuses each with 401; the public port does not serve
// the contract at all.
func attack(t *testing.T, publicAddr, privateAddr string) {
	t.Helper()
	post := func(addr, path, token string) int {
		req, err := http.NewRequest(http.MethodPost, "http://"+addr+path, strings.NewReader(`{"job":"hello"}`))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Leadercron-Slot", time.Now().UTC().Format(time.RFC3339))
		req.Header.Set("Leadercron-Fencing-Token", token)
		req.Header.Set("Leadercron-Deadline", time.Now().Add(time.Minute).UTC().Format(time.RFC3339))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatalf("attack %s%s: %v", addr, path, err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	waitListening := func() {
		deadline := time.Now().Add(10 * time.Second)
		for time.Now().Before(deadline) { // the app starts in the background
			if resp, err := http.Get("http://" + privateAddr + "/healthz"); err == nil {
				resp.Body.Close()
				return
			}
			time.Sleep(50 * time.Millisecond)
		}
		t.Fatalf("demo app not listening on %s", privateAddr)
	}
	waitListening()
	for _, a := range []struct {
		addr, path, token string
		want              int
	}{
		{privateAddr, "/jobs/hello", "1", http.StatusUnauthorized},
		{privateAddr, "/jobs/hello", "18446744073709551615", http.StatusUnauthorized},
		{privateAddr, "/drain", "1", http.StatusUnauthorized},
		{publicAddr, "/jobs/hello", "18446744073709551615", http.StatusNotFound},
		{publicAddr, "/drain", "1", http.StatusNotFound},
	} {
		if got := post(a.addr, a.path, a.token); got != a.want {
			t.Errorf("unsigned POST %s%s (fencing token %s) = %d, want %d", a.addr, a.path, a.token, got, a.want)
		}
	}
}
