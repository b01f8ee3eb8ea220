package consultest

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/leadercron/leadercron/internal/testkit"
)

// Cluster is a 3-server Consul cluster on loopback. Unlike a dev agent,
// each server keeps its state in a data directory, so a server (or the
// whole cluster) can be killed and restarted with its sessions, keys and
// Raft index intact, and killing the Raft leader forces an election.
//
// Guarantees: every server is killed by t.Cleanup and the data
// directories live under t.TempDir. Dead servers are never removed by
// autopilot (cleanup_dead_servers = false), so a killed server does not
// deregister its node and invalidate the sessions bound to it. Not
// guaranteed: that a given server is the leader after a restart.
type Cluster struct {
	Servers []*Server

	t   testing.TB
	bin string
}

// Server is one server of a Cluster.
type Server struct {
	Addr     string // host:port of the HTTP API
	RaftAddr string // host:port of the server RPC port, as Raft names it
	Node     string

	dir  string
	args []string

	out testkit.Buffer // over all its runs

	mu sync.Mutex
	p  *testkit.Process // the current run
}

// StartCluster starts three servers that join each other, and waits until
// they have elected a leader and every server's node is in the catalog.
func StartCluster(t testing.TB) *Cluster {
	t.Helper()
	bin := Require(t)
	ports, err := testkit.FreePorts(9)
	if err != nil {
		t.Fatalf("start cluster: %v", err)
	}
	c := &Cluster{t: t, bin: bin}
	base := t.TempDir()
	for i := range 3 {
		http, serf, rpc := ports[3*i], ports[3*i+1], ports[3*i+2]
		s := &Server{
			Addr:     "127.0.0.1:" + strconv.Itoa(http),
			RaftAddr: "127.0.0.1:" + strconv.Itoa(rpc),
			Node:     fmt.Sprintf("lc-server-%d-%d", os.Getpid(), http),
			dir:      filepath.Join(base, fmt.Sprintf("server%d", i)),
		}
		s.args = []string{"agent", "-server", "-bootstrap-expect", "3",
			"-node", s.Node, "-data-dir", s.dir,
			"-bind", "127.0.0.1", "-client", "127.0.0.1",
			"-http-port", strconv.Itoa(http),
			"-serf-lan-port", strconv.Itoa(serf),
			"-server-port", strconv.Itoa(rpc),
			"-dns-port", "-1", "-grpc-port", "-1", "-grpc-tls-port", "-1", "-serf-wan-port", "-1",
			"-hcl", `session_ttl_min = "1s"`,
			"-hcl", `performance { raft_multiplier = 1 }`,
			"-hcl", `autopilot { cleanup_dead_servers = false }`,
			"-hcl", `ui_config { enabled = false }`,
			"-log-level", "warn",
		}
		for j := range 3 {
			if j != i {
				s.args = append(s.args, "-retry-join", "127.0.0.1:"+strconv.Itoa(ports[3*j+1]))
			}
		}
		c.Servers = append(c.Servers, s)
	}
	t.Cleanup(func() {
		for _, s := range c.Servers {
			s.kill()
		}
		if t.Failed() {
			for _, s := range c.Servers {
				t.Logf("consul server %s output:\n%s", s.Node, s.Output())
			}
		}
	})
	for _, s := range c.Servers {
		if err := s.start(bin); err != nil {
			t.Fatalf("start cluster: %v", err)
		}
	}
	c.WaitReady(60 * time.Second)
	return c
}

func (s *Server) start(bin string) error {
	p, err := testkit.StartProcess(testkit.Command{Name: "consul server " + s.Node, Path: bin, Args: s.args,
		Env: append(os.Environ(), "CONSUL_HTTP_TOKEN="), Tee: &s.out})
	if err != nil {
		return err
	}
	s.mu.Lock()
	s.p = p
	s.mu.Unlock()
	return nil
}

// Output returns what the server printed so far, over all its runs.
func (s *Server) Output() string { return s.out.String() }

// Running reports whether the server process is up.
func (s *Server) Running() bool {
	s.mu.Lock()
	p := s.p
	s.mu.Unlock()
	if p == nil {
		return false
	}
	select {
	case <-p.Exited():
		return false
	default:
		return true
	}
}

func (s *Server) kill() {
	s.mu.Lock()
	p := s.p
	s.mu.Unlock()
	if p != nil {
		p.Kill()
	}
}

// Kill sends SIGKILL to server i and waits for it to exit. Its data
// directory is kept for Restart.
func (c *Cluster) Kill(i int) {
	c.t.Helper()
	c.Servers[i].kill()
}

// Restart starts server i again on the same ports and data directory. It
// does not wait for the cluster; see WaitReady.
func (c *Cluster) Restart(i int) {
	c.t.Helper()
	if c.Servers[i].Running() {
		c.t.Fatalf("restart consul server %d: still running", i)
	}
	if err := c.Servers[i].start(c.bin); err != nil {
		c.t.Fatalf("restart consul server %d: %v", i, err)
	}
}

// Leader returns the index of the server that is the Raft leader, as seen
// by the running servers, or -1 when none answers with a known leader.
func (c *Cluster) Leader() int {
	for _, s := range c.Servers {
		if !s.Running() {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		l, err := Client(c.t, s.Addr).Status().LeaderWithQueryOptions((&api.QueryOptions{}).WithContext(ctx))
		cancel()
		if err != nil || l == "" {
			continue
		}
		for i, o := range c.Servers {
			if o.RaftAddr == l {
				return i
			}
		}
	}
	return -1
}

// WaitLeader polls until a running server reports a leader other than the
// servers in not, and returns its index; it fails the test after timeout.
func (c *Cluster) WaitLeader(timeout time.Duration, not ...int) int {
	c.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		l := c.Leader()
		ok := l >= 0
		for _, n := range not {
			ok = ok && l != n
		}
		if ok {
			return l
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("consul cluster: no leader after %s", timeout)
		}
		time.Sleep(50 * time.Millisecond) // polling an external process
	}
}

// WaitReady polls until every running server sees a leader and its own
// node in the catalog (sessions need it); it fails the test after timeout.
func (c *Cluster) WaitReady(timeout time.Duration) {
	c.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		all := true
		for _, s := range c.Servers {
			if s.Running() && !ready(Client(c.t, s.Addr), s.Node) {
				all = false
				break
			}
		}
		if all {
			return
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("consul cluster not ready after %s", timeout)
		}
		time.Sleep(50 * time.Millisecond) // polling an external process
	}
}
