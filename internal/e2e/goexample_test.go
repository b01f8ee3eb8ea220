package e2e

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/leadercron/leadercron/internal/consultest"
)

// TestGoExampleApp runs examples/go/demo-app (built on the public
// examples/go/jobs package) next to the sidecar in standalone mode, with
// the app health gate on: the app receives triggers and answers them, and
// SIGTERM drains it before the sidecar exits 0.
func TestGoExampleApp(t *testing.T) {
	dir := t.TempDir()
	appBin := filepath.Join(dir, "demo-app")
	build := exec.Command("go", "build", "-o", appBin, "github.com/leadercron/leadercron/examples/go/demo-app")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build demo-app: %v\n%s", err, out)
	}
	ports, err := consultest.FreePorts(1)
	if err != nil {
		t.Fatal(err)
	}
	appAddr := "127.0.0.1:" + strconv.Itoa(ports[0])
	var mu sync.Mutex
	var appOut bytes.Buffer
	app := exec.Command(appBin, "-listen", appAddr)
	app.Env = []string{"PATH=" + os.Getenv("PATH")}
	app.Stdout, app.Stderr = lockedBuffer{&mu, &appOut}, lockedBuffer{&mu, &appOut}
	if err := app.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = app.Process.Kill()
		_ = app.Wait()
		if t.Failed() {
			mu.Lock()
			t.Logf("demo-app output:\n%s", appOut.String())
			mu.Unlock()
		}
	})
	appLog := func() string { mu.Lock(); defer mu.Unlock(); return appOut.String() }

	s := startSidecar(t, "a", map[string]string{
		"LEADERCRON_LOCK":                "none",
		"LEADERCRON_APP_URL":             "http://" + appAddr,
		"LEADERCRON_APP_HEALTH_URL":      "http://" + appAddr + "/healthz",
		"LEADERCRON_APP_HEALTH_INTERVAL": "200ms",
		"LEADERCRON_DRAIN_INTERVAL":      "100ms",
		"LEADERCRON_JOB_HELLO":           "* * * * * *",
	})
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
	s.signal(t, syscall.SIGTERM)
	if code := s.wait(t, 15*time.Second); code != 0 {
		t.Fatalf("sidecar exited %d after SIGTERM, want 0", code)
	}
	if out := s.output(); !strings.Contains(out, "app drained") {
		t.Errorf("sidecar did not drain the demo app:\n%s", out)
	}
}
