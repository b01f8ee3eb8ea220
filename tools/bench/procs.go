package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/leadercron/leadercron/internal/consultest"
)

// buildBinaries builds leadercron and the naive leader with release flags
// into dir, and returns their paths.
func buildBinaries(ctx context.Context, root, dir string) (lc, nv string, err error) {
	lc, nv = filepath.Join(dir, "leadercron"), filepath.Join(dir, "naive-leader")
	for _, b := range []struct{ out, pkg string }{{lc, "."}, {nv, "./tools/naive/cmd/naive-leader"}} {
		cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-ldflags", "-s -w", "-o", b.out, b.pkg)
		cmd.Dir = root
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			return "", "", fmt.Errorf("build %s: %w: %s", b.pkg, err, out)
		}
	}
	return lc, nv, nil
}

// agent is a Consul dev agent on loopback.
type agent struct {
	addr   string
	cmd    *exec.Cmd
	out    *lockedBuffer
	exited chan struct{}
}

// startAgent starts a Consul dev agent (in memory, one server) and waits
// until it has a leader and its node is in the catalog.
func startAgent(bin string) (*agent, error) {
	var lastErr error
	for attempt := range 3 {
		a, err := tryAgent(bin, attempt)
		if err == nil {
			return a, nil
		}
		lastErr = err
	}
	return nil, lastErr
}

func tryAgent(bin string, attempt int) (*agent, error) {
	ports, err := consultest.FreePorts(3)
	if err != nil {
		return nil, err
	}
	node := fmt.Sprintf("lc-bench-%d-%d", os.Getpid(), attempt)
	a := &agent{addr: "127.0.0.1:" + strconv.Itoa(ports[0]), out: &lockedBuffer{}, exited: make(chan struct{})}
	a.cmd = exec.Command(bin, "agent", "-dev", "-node", node,
		"-bind", "127.0.0.1", "-client", "127.0.0.1",
		"-http-port", strconv.Itoa(ports[0]), "-serf-lan-port", strconv.Itoa(ports[1]), "-server-port", strconv.Itoa(ports[2]),
		"-dns-port", "-1", "-grpc-port", "-1", "-grpc-tls-port", "-1", "-serf-wan-port", "-1",
		"-hcl", `session_ttl_min = "1s"`, "-hcl", `ui_config { enabled = false }`,
		// Every sidecar of the bench reaches the agent from 127.0.0.1, which a
		// real fleet does not: lift the per-client-IP connection cap (200 by
		// default) so that 21 sidecars' connections are not refused with 429.
		"-hcl", `limits { http_max_conns_per_client = 10000 }`,
		"-log-level", "warn")
	a.cmd.Stdout, a.cmd.Stderr = a.out, a.out
	a.cmd.Env = append(os.Environ(), "CONSUL_HTTP_TOKEN=")
	if err := a.cmd.Start(); err != nil {
		return nil, fmt.Errorf("run %s: %w", bin, err)
	}
	go func() { _ = a.cmd.Wait(); close(a.exited) }()
	c := a.client()
	deadline := time.Now().Add(30 * time.Second)
	for {
		select {
		case <-a.exited:
			return nil, fmt.Errorf("consul exited during start: %s", a.out.String())
		default:
		}
		if time.Now().After(deadline) {
			a.stop()
			return nil, fmt.Errorf("consul not ready after 30s: %s", a.out.String())
		}
		leader, err := c.Status().Leader()
		if err == nil && leader != "" {
			if n, _, err := c.Catalog().Node(node, nil); err == nil && n != nil {
				return a, nil
			}
		}
		time.Sleep(50 * time.Millisecond) // polling an external process with a deadline
	}
}

func (a *agent) client() *api.Client {
	cfg := api.DefaultNonPooledConfig()
	cfg.Address, cfg.Token = a.addr, ""
	c, _ := api.NewClient(cfg) // only fails on bad TLS settings, which are not used
	return c
}

func (a *agent) stop() {
	_ = a.cmd.Process.Kill()
	<-a.exited
}

// proc is a started sidecar process (leadercron or the naive leader).
type proc struct {
	name   string
	cmd    *exec.Cmd
	out    *lockedBuffer
	exited chan struct{}
	code   int
}

func startProc(name, bin string, args, env []string) (*proc, error) {
	p := &proc{name: name, out: &lockedBuffer{limit: 64 << 10}, exited: make(chan struct{}), code: -1}
	p.cmd = exec.Command(bin, args...)
	p.cmd.Env = env
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	if err := p.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	go func() {
		_ = p.cmd.Wait()
		p.code = p.cmd.ProcessState.ExitCode()
		close(p.exited)
	}()
	return p, nil
}

// stop sends SIGTERM and waits up to timeout, then kills.
func (p *proc) stop(timeout time.Duration) {
	select {
	case <-p.exited:
		return
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(timeout):
		_ = p.cmd.Process.Kill()
		<-p.exited
	}
}

func (p *proc) kill() {
	_ = p.cmd.Process.Kill()
	<-p.exited
}

// usage is what /proc says about a process.
type usage struct {
	rssKB int64
	ticks int64 // utime + stime, in clock ticks
}

// clockTicks is USER_HZ, which Linux fixes at 100 for /proc/<pid>/stat.
const clockTicks = 100

func readUsage(pid int) (usage, error) {
	var u usage
	st, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return u, fmt.Errorf("read stat: %w", err)
	}
	// Fields after the command name, which is in parentheses and may hold spaces.
	i := bytes.LastIndexByte(st, ')')
	if i < 0 {
		return u, errors.New("read stat: no command name")
	}
	f := strings.Fields(string(st[i+1:]))
	if len(f) < 13 {
		return u, errors.New("read stat: too few fields")
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)  // field 14: utime
	stt, _ := strconv.ParseInt(f[12], 10, 64) // field 15: stime
	u.ticks = ut + stt
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return u, fmt.Errorf("read status: %w", err)
	}
	for _, line := range strings.Split(string(status), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			v := strings.Fields(rest)
			if len(v) > 0 {
				u.rssKB, _ = strconv.ParseInt(v[0], 10, 64)
			}
		}
	}
	return u, nil
}

// lockedBuffer is a goroutine-safe buffer, optionally keeping only the
// first limit bytes.
type lockedBuffer struct {
	mu    sync.Mutex
	b     bytes.Buffer
	limit int
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.limit > 0 && l.b.Len()+len(p) > l.limit {
		if room := l.limit - l.b.Len(); room > 0 {
			l.b.Write(p[:room])
		}
		return len(p), nil
	}
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
