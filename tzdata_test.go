package main

// The sidecar embeds the time zone database (import _ "time/tzdata" in
// main.go), so that a job's tz= works in an image without zoneinfo, such as
// FROM scratch. Go's time package reads $ZONEINFO first but falls back to
// /usr/share/zoneinfo and the other system directories, so pointing
// $ZONEINFO at an empty directory proves nothing on a machine that has
// them. These tests run the release binary chrooted into a directory that
// holds the binary alone: the file system of a FROM scratch image.

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/leadercron/leadercron/internal/config"
	"github.com/leadercron/leadercron/internal/testkit"
)

// scratchRoot returns a directory holding only bin, as /leadercron.
func scratchRoot(t *testing.T, bin string) string {
	t.Helper()
	root := t.TempDir()
	b, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "leadercron"), b, 0o755); err != nil {
		t.Fatal(err)
	}
	return root
}

// chrooted returns a command that runs /<name> chrooted into root, with
// exactly env. A chroot needs root (CAP_SYS_CHROOT): without it the test
// skips, or fails under CI=true.
func chrooted(t *testing.T, root, name string, env map[string]string, args ...string) *exec.Cmd {
	t.Helper()
	if os.Geteuid() != 0 {
		msg := "a chroot needs root (CAP_SYS_CHROOT); run as root or in a container"
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	cmd := exec.Command("/"+name, args...)
	cmd.Env = envList(env)
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{Chroot: root}
	return cmd
}

// TestTimeZonesWithoutZoneinfo checks that tz= validates and runs with no
// zoneinfo on the file system, and, as the control, that a binary without
// the embedded database fails in the same place.
func TestTimeZonesWithoutZoneinfo(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("chroot test: linux only")
	}
	bin := buildRelease(t, runtime.GOARCH)
	root := scratchRoot(t, bin)

	// The control: the same chroot, a static binary without time/tzdata.
	t.Run("control: no embedded database, no zone", func(t *testing.T) {
		src := t.TempDir()
		prog := `package main

import (
	"fmt"
	"os"
	"time"
)

func main() {
	if _, err := time.LoadLocation(os.Args[1]); err != nil {
		fmt.Println(err)
		os.Exit(1)
	}
}
`
		if err := os.WriteFile(filepath.Join(src, "main.go"), []byte(prog), 0o644); err != nil {
			t.Fatal(err)
		}
		build := exec.Command("go", "build", "-trimpath", "-o", filepath.Join(root, "loadzone"), "main.go")
		build.Dir = src
		build.Env = append(os.Environ(), "CGO_ENABLED=0", "GO111MODULE=off")
		if out, err := build.CombinedOutput(); err != nil {
			t.Fatalf("building the control program: %v\n%s", err, out)
		}
		out, err := chrooted(t, root, "loadzone", nil, "America/New_York").CombinedOutput()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || !strings.Contains(string(out), "unknown time zone America/New_York") {
			t.Fatalf("a binary without time/tzdata loaded America/New_York inside the chroot (err %v, output %q): the chroot does not hide the system zoneinfo, so this test would prove nothing", err, out)
		}
	})

	const spec = "0 9 * * MON-FRI tz=America/New_York"
	env := map[string]string{
		"LEADERCRON_LOCK":       config.LockNone,
		"LEADERCRON_SERVICE":    "tzdata",
		"LEADERCRON_ID":         "tzdata",
		"LEADERCRON_LOG_FORMAT": "text",
		"LEADERCRON_JOB_REPORT": spec,
	}

	t.Run("validate", func(t *testing.T) {
		out, err := chrooted(t, root, "leadercron", env, "validate").CombinedOutput()
		if err != nil {
			t.Fatalf("validate in a FROM scratch file system: %v\n%s", err, out)
		}
		if !strings.Contains(string(out), "tz=America/New_York") {
			t.Errorf("validate does not show the zone:\n%s", out)
		}
		// Five slots at 09:00 New York time, with New York's offset
		// (-05:00 in winter, -04:00 in summer).
		slots := regexp.MustCompile(`(?m)^  (\S+)$`).FindAllStringSubmatch(string(out), -1)
		if len(slots) != 5 {
			t.Fatalf("validate printed %d slots, want 5:\n%s", len(slots), out)
		}
		ny, err := time.LoadLocation("America/New_York") // the test binary: the host's zoneinfo, or Go's own
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range slots {
			ts, err := time.Parse(time.RFC3339, s[1])
			if err != nil {
				t.Fatal(err)
			}
			if got, want := ts.Format("15:04 Z07:00"), ts.In(ny).Format("09:00 Z07:00"); got != want || ts.In(ny).Hour() != 9 {
				t.Errorf("slot %s: want 09:00 in New York (%s)", s[1], want)
			}
		}
	})

	t.Run("the sidecar runs", func(t *testing.T) {
		ports, err := testkit.FreePorts(2)
		if err != nil {
			t.Fatal(err)
		}
		runEnv := map[string]string{
			"LEADERCRON_LISTEN":  "127.0.0.1:" + strconv.Itoa(ports[0]),
			"LEADERCRON_APP_URL": "http://127.0.0.1:" + strconv.Itoa(ports[1]), // nothing listens: drain counts as done
		}
		for k, v := range env {
			runEnv[k] = v
		}
		sidecar := startProcess(t, chrooted(t, root, "leadercron", runEnv))
		// The healthcheck runs outside the chroot; it only dials.
		sidecar.waitHealthy(t, bin, runEnv)
		sidecar.stop(t)
		if strings.Contains(sidecar.logs.String(), "time zone") {
			t.Errorf("the sidecar's log mentions a time zone problem:\n%s", sidecar.logs.String())
		}
	})
}
