package e2e

import (
	"bytes"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/leadercron/leadercron/internal/consultest"
	"github.com/leadercron/leadercron/internal/testkit"
)

// tlsEnv is consulEnv with the sidecar talking to the agent's HTTPS API
// and trusting the agent's CA.
func tlsEnv(agent *consultest.TLSAgent, app *testkit.App) map[string]string {
	env := consulEnv(agent.Agent, app)
	env["CONSUL_HTTP_ADDR"] = agent.HTTPSURL()
	env["CONSUL_CACERT"] = agent.CA.File
	return env
}

// TestTLSElectClaimHandover runs two sidecars against Consul over HTTPS
// (CONSUL_HTTP_ADDR=https://..., CONSUL_CACERT): one is elected and its
// app receives triggers; on SIGTERM it drains, releases and exits 0, and
// the other takes over with a higher fencing token and no slot twice. The
// test's own Consul client (lock watch, the apps' view of the holder)
// speaks HTTPS too. A fleet command works over TLS with the same
// variables.
func TestTLSElectClaimHandover(t *testing.T) {
	agent := consultest.StartTLS(t)
	c := agent.TLSClient(t)
	h := newHistory()
	testkit.StartLockWatch(t, h, lockKey, c)
	sidecars := map[string]*sidecar{}
	for _, id := range []string{"a", "b"} {
		app := startApp(t, "app-"+id, h, c, lockKey, 1)
		sidecars[id] = startSidecar(t, id, tlsEnv(agent, app))
	}

	evs := h.WaitFor(t, 20*time.Second, "3 triggers", func(evs []event) bool { return len(filter(evs, "trigger")) >= 3 })
	leaderID, standby := soleLeader(t, evs, sidecars)
	old := sidecars[leaderID]

	// The claims are in KV (read over HTTPS too).
	if pair, _, err := c.KV().Get("leadercron/e2e/jobs/tick/last", &api.QueryOptions{RequireConsistent: true}); err != nil || pair == nil {
		t.Errorf("claimed slot of job tick not in KV: pair %v, err %v", pair, err)
	}

	// A fleet command over TLS: status names the leader.
	status := exec.Command(binary, "status")
	status.Env = []string{"CONSUL_HTTP_ADDR=" + agent.HTTPSURL(), "CONSUL_CACERT=" + agent.CA.File,
		"LEADERCRON_SERVICE=e2e", "LEADERCRON_ID=operator",
		"LEADERCRON_JOB_TICK=* * * * * *", "LEADERCRON_JOB_EVERY_TWO=@every 2s timeout=5s"}
	var out bytes.Buffer
	status.Stdout, status.Stderr = &out, &out
	if err := status.Run(); err != nil || !strings.Contains(out.String(), leaderID) {
		t.Errorf("leadercron status over TLS: %v; want exit 0 naming leader %q:\n%s", err, leaderID, out.String())
	}

	term, evs := sigtermHandover(t, h, old, standby)

	drains := filter(evs, "drain")
	if len(drains) < 2 {
		t.Errorf("the old leader's app saw %d /drain calls, want 2 (one busy answer, then drained)", len(drains))
	}
	var released bool
	for _, e := range filter(evs, "lock") {
		if e.At.After(term) && e.Session == "" {
			released = true
		}
	}
	if !released {
		t.Errorf("no release of the lock seen after SIGTERM:\n%s", dump(evs))
	}
	checkTokensGrow(t, evs, leaderID)
	for _, s := range sidecars {
		if out := s.Output(); strings.Contains(out, "x509") || strings.Contains(out, "consul not reachable") {
			t.Errorf("sidecar %s logged a TLS or reachability problem:\n%s", s.ID, out)
		}
	}
}

// TestTLSMisconfiguredExits2: a sidecar whose Consul settings cannot work
// with an HTTPS-only Consul exits 2 at start, with a message naming the
// variables to fix, before it listens or triggers anything, instead of
// starting and retrying forever.
func TestTLSMisconfiguredExits2(t *testing.T) {
	agent := consultest.StartTLS(t)
	other := consultest.NewCA(t, "another CA")
	h := newHistory()
	app := startApp(t, "app", h, nil, lockKey, 0)
	for _, tc := range []struct {
		name  string
		vars  map[string]string // replaces the TLS settings
		wants []string
	}{
		{"no CONSUL_CACERT", map[string]string{"CONSUL_HTTP_ADDR": agent.HTTPSURL()},
			[]string{"CONSUL_HTTP_ADDR=\"" + agent.HTTPSURL() + "\"", "CONSUL_CACERT is not set", "set CONSUL_CACERT", "unknown authority"}},
		{"CONSUL_CACERT of another CA", map[string]string{"CONSUL_HTTP_ADDR": agent.HTTPSURL(), "CONSUL_CACERT": other.File},
			[]string{"CONSUL_HTTP_ADDR=", "CONSUL_CACERT=\"" + other.File + "\" does not hold it"}},
		{"http:// to the HTTPS port", map[string]string{"CONSUL_HTTP_ADDR": "http://" + agent.HTTPSAddr, "CONSUL_CACERT": agent.CA.File},
			[]string{"CONSUL_HTTP_ADDR=\"http://" + agent.HTTPSAddr + "\"", "serves HTTPS", "https://"}},
		{"no scheme to the HTTPS port", map[string]string{"CONSUL_HTTP_ADDR": agent.HTTPSAddr},
			[]string{"CONSUL_HTTP_ADDR=\"" + agent.HTTPSAddr + "\"", "CONSUL_HTTP_SSL=true", "CONSUL_CACERT"}},
		{"https:// to the plain HTTP port", map[string]string{"CONSUL_HTTP_ADDR": "https://" + agent.Addr, "CONSUL_CACERT": agent.CA.File},
			[]string{"CONSUL_HTTP_ADDR=\"https://" + agent.Addr + "\"", "does not", "http://"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			env := tlsEnv(agent, app)
			delete(env, "CONSUL_CACERT")
			for k, v := range tc.vars {
				env[k] = v
			}
			start := time.Now()
			s := startSidecar(t, "bad", env)
			code := s.Wait(t, 10*time.Second)
			out := s.Output()
			if code != 2 {
				t.Fatalf("exit %d after %s, want 2:\n%s", code, time.Since(start), out)
			}
			t.Logf("exit 2 after %s; the operator sees:\n%s", time.Since(start), out)
			for _, w := range append([]string{"configuration error"}, tc.wants...) {
				if !strings.Contains(out, w) {
					t.Errorf("output lacks %q", w)
				}
			}
			if strings.Contains(out, "leadercron started") {
				t.Errorf("the sidecar started before failing: it must not start half-configured")
			}
		})
	}
	if evs, _ := h.Snapshot(); len(evs) != 0 {
		t.Errorf("a misconfigured sidecar reached its app:\n%s", dump(evs))
	}
}

// TestTLSConsulStartsAfterSidecar: a Consul that is not up yet is not a
// configuration error. The sidecar warns, starts, keeps retrying, and
// takes the lead once the agent is up on the address it was given.
func TestTLSConsulStartsAfterSidecar(t *testing.T) {
	ca := consultest.NewCA(t, "late CA")
	ports, err := testkit.FreePorts(1)
	if err != nil {
		t.Fatal(err)
	}
	addr := "127.0.0.1:" + strconv.Itoa(ports[0])
	h := newHistory()
	app := startApp(t, "app", h, nil, lockKey, 0)
	env := consulEnv(&consultest.Agent{Addr: addr}, app)
	env["CONSUL_HTTP_ADDR"] = "https://" + addr
	env["CONSUL_CACERT"] = ca.File
	s := startSidecar(t, "early", env)
	waitForOutput(t, s, 10*time.Second, "consul not reachable at start", "https://"+addr, "leadercron started")
	select {
	case <-s.Exited():
		t.Fatalf("the sidecar exited %d while Consul was down, want it to keep retrying:\n%s", s.ExitCode(), s.Output())
	default:
	}

	consultest.StartTLSWith(t, ca, ports[0])
	h.WaitFor(t, 30*time.Second, "a trigger once Consul is up", func(evs []event) bool { return len(filter(evs, "trigger")) > 0 })
	s.Signal(t, syscall.SIGTERM)
	if code := s.Wait(t, 15*time.Second); code != 0 {
		t.Fatalf("exit %d after SIGTERM, want 0", code)
	}
}

// TestConsulACLSessionScope pins down what the session rule of
// examples/consul/leadercron-policy.hcl grants, and tests the narrowing
// docs/acl.md recommends when the sidecars talk to a local client agent.
// Consul 1.22 checks session:write against the node a session is bound to
// (Session.Apply and Session.Renew in agent/consul/session_endpoint.go),
// never against the session's name or owner:
//
//   - the shipped `session_prefix ""` lets the token destroy another
//     service's session, on any node, and create sessions on any node;
//   - `session "<node>"` (the agent's node name) is enough for the sidecar
//     to elect, claim, trigger, release and destroy its session, and
//     refuses sessions bound to any other node; it still reaches other
//     sessions bound to the same node, which no rule can exclude.
//
// It lives here because acl_test.go belongs to another change; it belongs
// next to TestACLPolicy.
func TestConsulACLSessionScope(t *testing.T) {
	rules, err := os.ReadFile(policyFile)
	if err != nil {
		t.Fatal(err)
	}
	agent := consultest.StartACL(t)
	mgmt := agent.Management(t)
	const otherNode = "other-node"
	if _, err := mgmt.Catalog().Register(&api.CatalogRegistration{Node: otherNode, Address: "127.0.0.2"}, nil); err != nil {
		t.Fatalf("register %s: %v", otherNode, err)
	}
	// Another service's sessions, as its own sidecars would hold them: one
	// bound to the agent's node, one to another node.
	otherSession := func(node string) string {
		t.Helper()
		id, _, err := mgmt.Session().CreateNoChecks(&api.SessionEntry{Name: "leadercron billing x", Node: node, TTL: "60s", Behavior: api.SessionBehaviorRelease}, nil)
		if err != nil {
			t.Fatalf("create a session on %s: %v", node, err)
		}
		return id
	}
	exists := func(id string) bool {
		t.Helper()
		s, _, err := mgmt.Session().Info(id, nil)
		if err != nil {
			t.Fatal(err)
		}
		return s != nil
	}
	// The client's Renew reports a refusal as a bare 403, without Consul's
	// "Permission denied" body.
	denied := func(err error) bool {
		return err != nil && (strings.Contains(err.Error(), "Permission denied") || strings.Contains(err.Error(), "code: 403"))
	}

	t.Run("the shipped rule reaches every node", func(t *testing.T) {
		c := consultest.TokenClient(t, agent.Addr, agent.TokenWithRules(t, "shipped", string(rules)))
		for _, node := range []string{agent.Node, otherNode} {
			id := otherSession(node)
			if _, err := c.Session().Destroy(id, nil); err != nil || exists(id) {
				t.Errorf("destroy another service's session on %s with the shipped token: err %v, still there %v; want it destroyed (the documented risk)", node, err, exists(id))
			}
			own, _, err := c.Session().CreateNoChecks(&api.SessionEntry{Node: node, TTL: "10s"}, nil)
			if err != nil {
				t.Errorf("create a session on %s with the shipped token: %v", node, err)
			} else {
				_, _ = c.Session().Destroy(own, nil)
			}
		}
	})

	t.Run("a per-node rule is enough and refuses other nodes", func(t *testing.T) {
		narrowed := stripBlock(t, string(rules), `session_prefix ""`) + "\nsession " + strconv.Quote(agent.Node) + " {\n  policy = \"write\"\n}\n"
		token := agent.TokenWithRules(t, "per-node", narrowed)

		h := newHistory()
		testkit.StartLockWatch(t, h, aclLockKey, mgmt)
		app := startApp(t, "app-a", h, mgmt, aclLockKey, 1)
		s := startSidecar(t, "a", aclEnv(agent, app, token))
		evs := h.WaitFor(t, 20*time.Second, "3 triggers", func(evs []event) bool { return len(filter(evs, "trigger")) >= 3 })
		s.Signal(t, syscall.SIGTERM)
		if code := s.Wait(t, 15*time.Second); code != 0 {
			t.Fatalf("sidecar exited %d after SIGTERM, want 0", code)
		}
		checkNoDuplicateSlots(t, evs)
		if out := s.Output(); strings.Contains(out, "Permission denied") {
			t.Errorf("sidecar with the per-node rule was denied something:\n%s", out)
		}
		sessions, _, err := mgmt.Session().List(nil)
		if err != nil {
			t.Fatal(err)
		}
		for _, se := range sessions {
			if strings.Contains(se.Name, aclService) {
				t.Errorf("session %s (%s) still exists after a graceful exit", se.ID, se.Name)
			}
		}

		c := consultest.TokenClient(t, agent.Addr, token)
		far := otherSession(otherNode)
		if _, err := c.Session().Destroy(far, nil); !denied(err) || !exists(far) {
			t.Errorf("destroy a session on %s with the per-node token: err %v; want a 403 Permission denied", otherNode, err)
		}
		if _, _, err := c.Session().Renew(far, nil); !denied(err) {
			t.Errorf("renew a session on %s with the per-node token: err %v; want a 403 Permission denied", otherNode, err)
		}
		if _, _, err := c.Session().CreateNoChecks(&api.SessionEntry{Node: otherNode, TTL: "10s"}, nil); !denied(err) {
			t.Errorf("create a session on %s with the per-node token: err %v; want a 403 Permission denied", otherNode, err)
		}
		// What no rule can take away: sessions on the same node.
		near := otherSession(agent.Node)
		if _, err := c.Session().Destroy(near, nil); err != nil || exists(near) {
			t.Errorf("destroy another service's session on the sidecar's own node: err %v; the docs say this stays possible", err)
		}
	})
}
