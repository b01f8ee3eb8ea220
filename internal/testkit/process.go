package testkit

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Buffer is a goroutine-safe buffer for a process's output. With Limit
// set it keeps only the first Limit bytes.
type Buffer struct {
	Limit int

	mu sync.Mutex
	b  bytes.Buffer
}

func (l *Buffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.Limit > 0 && l.b.Len()+len(p) > l.Limit {
		if room := l.Limit - l.b.Len(); room > 0 {
			l.b.Write(p[:room])
		}
		return len(p), nil
	}
	return l.b.Write(p)
}

// String returns what was written so far.
func (l *Buffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// Command is a process to start.
type Command struct {
	Name string    // for messages
	Path string    // the binary
	Args []string  // its arguments
	Env  []string  // exactly its environment: nothing is inherited
	Tee  io.Writer // if set, also receives the output (stdout and stderr), as written
	Keep int       // how many bytes of output Output keeps (0: all)
}

// Process is a started process: its combined output, its exit, signals.
type Process struct {
	Name string

	cmd    *exec.Cmd
	out    *Buffer
	exited chan struct{}
	code   int
}

// StartProcess starts c. The caller must see it end: Stop, Kill, or a
// wait on Exited.
func StartProcess(c Command) (*Process, error) {
	p := &Process{Name: c.Name, out: &Buffer{Limit: c.Keep}, exited: make(chan struct{}), code: -1}
	p.cmd = exec.Command(c.Path, c.Args...)
	p.cmd.Env = c.Env
	var w io.Writer = p.out
	if c.Tee != nil {
		w = io.MultiWriter(p.out, c.Tee)
	}
	p.cmd.Stdout, p.cmd.Stderr = w, w
	if err := p.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", c.Name, err)
	}
	go func() {
		_ = p.cmd.Wait()
		p.code = p.cmd.ProcessState.ExitCode()
		close(p.exited)
	}()
	return p, nil
}

// Pid is the process id.
func (p *Process) Pid() int { return p.cmd.Process.Pid }

// Output returns what the process printed so far (stdout and stderr).
func (p *Process) Output() string { return p.out.String() }

// Exited is closed when the process has exited.
func (p *Process) Exited() <-chan struct{} { return p.exited }

// ExitCode is the exit code once the process exited, and -1 before, or
// when a signal ended it.
func (p *Process) ExitCode() int {
	select {
	case <-p.exited:
		return p.code
	default:
		return -1
	}
}

// Signal sends sig to the process; os.ErrProcessDone when it is gone.
func (p *Process) Signal(sig os.Signal) error { return p.cmd.Process.Signal(sig) }

// Stop sends SIGTERM and waits up to timeout for the exit, then kills.
func (p *Process) Stop(timeout time.Duration) {
	select {
	case <-p.exited:
		return
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(timeout):
		p.Kill()
	}
}

// Kill kills the process (continuing it first, in case it was paused
// with SIGSTOP) and waits for its exit.
func (p *Process) Kill() {
	_ = p.cmd.Process.Signal(syscall.SIGCONT)
	_ = p.cmd.Process.Kill()
	<-p.exited
}

// Sidecar is a leadercron process run by a test.
type Sidecar struct {
	*Process
	ID     string
	Listen string // its admin address (LEADERCRON_LISTEN)
}

// SidecarOptions are how a suite runs its sidecars.
type SidecarOptions struct {
	Service   string    // LEADERCRON_SERVICE
	LogFormat string    // LEADERCRON_LOG_FORMAT: "text" or "json"
	Tee       io.Writer // if set, also receives the sidecar's output
}

// StartSidecar runs the leadercron binary bin for a test, with exactly
// PATH, HOME, LEADERCRON_ID=id, LEADERCRON_LISTEN on a free loopback port,
// LEADERCRON_LOG_LEVEL=debug and o's service and log format in its
// environment, and env on top of those (env wins). The process is killed
// when the test ends, and its output logged if the test failed. With go
// test -short the test is skipped: suites that run the binary are not
// part of the fast loop.
func StartSidecar(t testing.TB, bin, id string, env map[string]string, o SidecarOptions) *Sidecar {
	t.Helper()
	if testing.Short() {
		t.Skip("-short: skipping a test that runs the leadercron binary")
	}
	ports, err := FreePorts(1)
	if err != nil {
		t.Fatal(err)
	}
	full := map[string]string{
		"PATH":                  os.Getenv("PATH"),
		"HOME":                  os.Getenv("HOME"),
		"LEADERCRON_ID":         id,
		"LEADERCRON_LISTEN":     "127.0.0.1:" + strconv.Itoa(ports[0]),
		"LEADERCRON_LOG_LEVEL":  "debug",
		"LEADERCRON_SERVICE":    o.Service,
		"LEADERCRON_LOG_FORMAT": o.LogFormat,
	}
	for k, v := range env {
		full[k] = v
	}
	var list []string
	for k, v := range full {
		list = append(list, k+"="+v)
	}
	p, err := StartProcess(Command{Name: "sidecar " + id, Path: bin, Env: list, Tee: o.Tee})
	if err != nil {
		t.Fatal(err)
	}
	s := &Sidecar{Process: p, ID: id, Listen: full["LEADERCRON_LISTEN"]}
	t.Cleanup(func() {
		s.Kill()
		if t.Failed() {
			t.Logf("sidecar %s output:\n%s", id, s.Output())
		}
	})
	return s
}

// Signal sends sig to the sidecar; it fails the test if the sidecar
// cannot be signalled (it exited already, say).
func (s *Sidecar) Signal(t testing.TB, sig os.Signal) {
	t.Helper()
	if err := s.Process.Signal(sig); err != nil {
		t.Fatalf("signal %s to %s: %v", sig, s.ID, err)
	}
}

// Wait waits for the sidecar to exit and returns its exit code; it fails
// the test after timeout.
func (s *Sidecar) Wait(t testing.TB, timeout time.Duration) int {
	t.Helper()
	select {
	case <-s.exited:
		return s.code
	case <-time.After(timeout):
		t.Fatalf("sidecar %s did not exit within %s", s.ID, timeout)
		return -1
	}
}

// BuildSidecar builds the leadercron binary with the race detector into
// dir and returns its path. go build's output goes to stderr.
func BuildSidecar(dir string) (string, error) {
	bin := filepath.Join(dir, "leadercron")
	build := exec.Command("go", "build", "-race", "-o", bin, "github.com/leadercron/leadercron")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		return "", fmt.Errorf("build leadercron: %w", err)
	}
	return bin, nil
}
