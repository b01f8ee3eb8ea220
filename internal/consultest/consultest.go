// Package consultest starts real Consul agents for tests, on free loopback
// ports, and a TCP proxy that can cut the path to them.
//
// The agent binary is the one scripts/consul.sh builds from the module
// pinned in tools/consul; it is found through $CONSUL_BIN, then
// "consul" on $PATH. When neither exists the test is skipped on a developer
// machine, and fails when CI=true: a missing Consul is never a silent pass.
//
// The package has a core that needs no testing.TB (StartAgent, NewClient,
// Agent.Stop), for tools such as tools/bench, and thin wrappers for tests
// (Start, Client, StartACL, StartTLS, StartCluster, NewProxy,
// NewFaultProxy) that skip or fail the test as Require says and clean up
// through t.Cleanup. Like internal/testkit it is test support: the
// leadercron binary never imports it.
//
// Guarantees: every agent and proxy a wrapper starts is stopped by
// t.Cleanup. Agents run in
// dev mode (in memory, one server) with session_ttl_min = 1s. Not
// guaranteed: that the free ports picked are still free when the agent
// binds them; Start retries a few times with new ports.
package consultest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/leadercron/leadercron/internal/testkit"
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

// ErrNoConsul is returned by StartAgent when there is no consul binary.
var ErrNoConsul = errors.New("no consul binary: run scripts/consul.sh and set CONSUL_BIN, or put consul on PATH")

// Require returns the consul binary, skipping the test when it is absent,
// or failing it when CI=true. With go test -short it skips the test
// whatever is installed: -short is the fast loop without Consul.
func Require(t testing.TB) string {
	t.Helper()
	if testing.Short() {
		t.Skip("-short: skipping a test that needs a Consul agent")
	}
	bin := Binary()
	if bin == "" {
		if os.Getenv("CI") == "true" {
			t.Fatal(ErrNoConsul)
		}
		t.Skip(ErrNoConsul)
	}
	return bin
}

// Agent is a running Consul dev agent.
type Agent struct {
	Addr string // host:port of the HTTP API
	Node string

	p *testkit.Process
}

// NewClient returns a Consul client for the agent at addr, with no token
// (whatever CONSUL_HTTP_TOKEN says).
func NewClient(addr string) (*api.Client, error) {
	cfg := api.DefaultNonPooledConfig()
	cfg.Address = addr
	cfg.Token = ""
	return api.NewClient(cfg)
}

// Client is NewClient for a test: it fails the test on error.
func Client(t testing.TB, addr string) *api.Client {
	t.Helper()
	c, err := NewClient(addr)
	if err != nil {
		t.Fatalf("consul client: %v", err)
	}
	return c
}

// Start starts a dev agent for a test (StartAgent), skips or fails the
// test as Require says when there is no consul binary, and stops the
// agent when the test ends.
func Start(t testing.TB) *Agent {
	t.Helper()
	a, err := StartAgent(Options{Bin: Require(t)})
	if err != nil {
		t.Fatalf("start consul: %v", err)
	}
	t.Cleanup(a.Stop)
	return a
}

// Options are what StartAgent adds to a dev agent's defaults.
type Options struct {
	Bin   string   // the consul binary; "" means Binary()
	Args  []string // more agent arguments, e.g. "-hcl", "limits { ... }"
	Token string   // the token the readiness check sends (ACL agents)
}

// StartAgent starts a dev agent on free loopback ports and waits until it
// has a leader and its node is in the catalog (sessions need it). A port
// taken between picking and binding is retried with new ports, three
// attempts in all. It needs no testing.TB, so that tools (tools/bench)
// start Consul the same way tests do; the caller must call Stop.
func StartAgent(o Options) (*Agent, error) {
	bin := o.Bin
	if bin == "" {
		if bin = Binary(); bin == "" {
			return nil, ErrNoConsul
		}
	}
	var lastErr error
	for attempt := range 3 {
		a, err := start(bin, attempt, o)
		if err == nil {
			return a, nil
		}
		lastErr = err
	}
	return nil, lastErr
}

func start(bin string, attempt int, o Options) (*Agent, error) {
	ports, err := testkit.FreePorts(3)
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
	args = append(args, o.Args...)
	p, err := testkit.StartProcess(testkit.Command{Name: "consul agent " + node, Path: bin, Args: args,
		Env: append(os.Environ(), "CONSUL_HTTP_TOKEN=")})
	if err != nil {
		return nil, err
	}
	a := &Agent{Addr: "127.0.0.1:" + strconv.Itoa(ports[0]), Node: node, p: p}

	client, err := NewClient(a.Addr)
	if err != nil {
		a.Stop()
		return nil, fmt.Errorf("consul client: %w", err)
	}
	if o.Token != "" {
		client.AddHeader("X-Consul-Token", o.Token)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		select {
		case <-p.Exited():
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
func (a *Agent) Output() string { return a.p.Output() }

// Stop kills the agent and waits for it to exit.
func (a *Agent) Stop() {
	if a.p != nil {
		a.p.Kill()
	}
}
