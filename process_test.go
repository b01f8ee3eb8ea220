package main

import (
	"bytes"
	"errors"
	"os/exec"
	"syscall"
	"testing"
	"time"
)

// process is a started sidecar binary whose output is kept for failure
// messages (read only once the process has exited or the test fails).
type process struct {
	cmd    *exec.Cmd
	logs   bytes.Buffer
	exited chan error
}

// startProcess starts cmd and kills it at the end of the test if it is
// still running.
func startProcess(t *testing.T, cmd *exec.Cmd) *process {
	t.Helper()
	p := &process{cmd: cmd, exited: make(chan error, 1)}
	cmd.Stdout, cmd.Stderr = &p.logs, &p.logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.exited <- cmd.Wait() }()
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
			<-p.exited
		}
	})
	return p
}

// waitHealthy polls `leadercron healthcheck` (bin, env) until it exits 0;
// it fails the test if the process exits first or after 20 s.
func (p *process) waitHealthy(t *testing.T, bin string, env map[string]string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		out, code := run(t, bin, env, "healthcheck")
		if code == 0 {
			return
		}
		select {
		case err := <-p.exited:
			t.Fatalf("the sidecar exited (%v) before serving /healthz:\n%s", err, p.logs.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("healthcheck still exits %d after 20s: %s\nsidecar log:\n%s", code, out, p.logs.String())
		}
		time.Sleep(100 * time.Millisecond) // polling an external process: no event to wait on
	}
}

// stop sends SIGTERM and requires exit 0 within 15 s.
func (p *process) stop(t *testing.T) {
	t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-p.exited:
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			t.Fatalf("sidecar exited %d after SIGTERM, want 0\n%s", ee.ExitCode(), p.logs.String())
		} else if err != nil {
			t.Fatal(err)
		}
	case <-time.After(15 * time.Second):
		t.Fatalf("sidecar did not exit within 15s of SIGTERM\n%s", p.logs.String())
	}
}
