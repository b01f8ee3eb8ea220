// Package consultest starts real Consul agents for tests, on free loopback
// ports, and a TCP proxy that can cut the path to them.
//
// The agent binary is the one scripts/consul.sh builds from the module
// pinned in tools/consul; it is found through $CONSUL_BIN, then
// "consul" on $PATH. When neither exists the test is skipped on a developer
// machine, and fails when CI=true: a missing Consul is never a silent pass.
//
// Guarantees: every agent and proxy is stopped by t.Cleanup. Agents run in
// dev mode (in memory, one server) with session_ttl_min = 1s. Not
// guaranteed: that the free ports picked are still free when the agent
// binds them; Start retries a few times with new ports.
package consultest

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
)

// Binary returns the path of the consul binary, or "" if there is none.
func Binary() string {
	if p := os.Getenv("CONSUL_BIN"); p != "" {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	if p, err := exec.LookPath("consul"); err == nil {
		return p
	}
	return ""
}

// Require returns the consul binary, skipping the test when it is absent,
// or failing it when CI=true.
func Require(t testing.TB) string {
	t.Helper()
	bin := Binary()
	if bin == "" {
		msg := "no consul binary: run scripts/consul.sh and set CONSUL_BIN, or put consul on PATH"
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	return bin
}

// Agent is a running Consul dev agent.
type Agent struct {
	Addr string // host:port of the HTTP API
	Node string

	cmd    *exec.Cmd
	out    *bytes.Buffer
	mu     sync.Mutex
	exited chan struct{}
}

// Client returns a Consul client for the agent at addr.
func Client(t testing.TB, addr string) *api.Client {
	t.Helper()
	cfg := api.DefaultNonPooledConfig()
	cfg.Address = addr
	cfg.Token = ""
	c, err := api.NewClient(cfg)
	if err != nil {
		t.Fatalf("consul client: %v", err)
	}
	return c
}

// Start starts a dev agent and waits until it has a leader and its node is
// in the catalog (sessions need it).
func Start(t testing.TB) *Agent {
	t.Helper()
	bin := Require(t)
	var lastErr error
	for attempt := range 3 {
		a, err := start(t, bin, attempt, agentOptions{})
		if err == nil {
			t.Cleanup(a.Stop)
			return a
		}
		lastErr = err
	}
	t.Fatalf("start consul: %v", lastErr)
	return nil
}

func start(t testing.TB, bin string, attempt int, o agentOptions) (*Agent, error) {
	ports, err := FreePorts(3)
	if err != nil {
		return nil, err
	}
	node := fmt.Sprintf("lc-test-%d-%d", os.Getpid(), ports[0])
	args := []string{"agent", "-dev",
		"-node", node,
		"-bind", "127.0.0.1", "-client", "127.0.0.1",
		"-http-port", strconv.Itoa(ports[0]),
		"-serf-lan-port", strconv.Itoa(ports[1]),
		"-server-port", strconv.Itoa(ports[2]),
		"-dns-port", "-1", "-grpc-port", "-1", "-grpc-tls-port", "-1", "-serf-wan-port", "-1",
		"-hcl", `session_ttl_min = "1s"`,
		"-hcl", `ui_config { enabled = false }`,
		"-log-level", "warn",
	}
	args = append(args, o.args...)
	a := &Agent{Addr: "127.0.0.1:" + strconv.Itoa(ports[0]), Node: node, out: &bytes.Buffer{}, exited: make(chan struct{})}
	cmd := exec.Command(bin, args...)
	cmd.Stdout = &lockedWriter{mu: &a.mu, w: a.out}
	cmd.Stderr = cmd.Stdout
	cmd.Env = append(os.Environ(), "CONSUL_HTTP_TOKEN=")
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("run %s: %w", bin, err)
	}
	a.cmd = cmd
	go func() { _ = cmd.Wait(); close(a.exited) }()

	client := Client(t, a.Addr)
	if o.token != "" {
		client.AddHeader("X-Consul-Token", o.token)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		select {
		case <-a.exited:
			return nil, fmt.Errorf("consul exited during start (attempt %d): %s", attempt, a.Output())
		default:
		}
		if time.Now().After(deadline) {
			a.Stop()
			return nil, fmt.Errorf("consul not ready after 30s: %s", a.Output())
		}
		if ready(client, node) {
			return a, nil
		}
		time.Sleep(50 * time.Millisecond) // nothing to wait on but the API itself
	}
}

func ready(c *api.Client, node string) bool {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	leader, err := c.Status().LeaderWithQueryOptions((&api.QueryOptions{}).WithContext(ctx))
	if err != nil || leader == "" {
		return false
	}
	n, _, err := c.Catalog().Node(node, (&api.QueryOptions{}).WithContext(ctx))
	return err == nil && n != nil
}

// Output returns what the agent printed so far.
func (a *Agent) Output() string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.out.String()
}

// Stop kills the agent and waits for it to exit.
func (a *Agent) Stop() {
	if a.cmd == nil || a.cmd.Process == nil {
		return
	}
	_ = a.cmd.Process.Kill()
	<-a.exited
}

type lockedWriter struct {
	mu *sync.Mutex
	w  *bytes.Buffer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// FreePorts returns n loopback TCP ports that were free a moment ago.
func FreePorts(n int) ([]int, error) {
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			_ = l.Close()
		}
	}()
	ports := make([]int, 0, n)
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("find free port: %w", err)
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}
