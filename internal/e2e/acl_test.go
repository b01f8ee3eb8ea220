package e2e

import (
	"os"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/leadercron/leadercron/internal/consultest"
	"github.com/leadercron/leadercron/internal/testkit"
)

// The service and prefix that examples/consul/leadercron-policy.hcl is
// written for; the test uses the file as shipped.
const (
	aclService = "orders-api"
	aclLockKey = "leadercron/orders-api/leader"
	policyFile = "../../examples/consul/leadercron-policy.hcl"
)

func aclEnv(agent *consultest.ACLAgent, app *testkit.App, token string) map[string]string {
	env := consulEnv(agent.Agent, app)
	delete(env, "LEADERCRON_JOB_EVERY_TWO")
	env["CONSUL_HTTP_TOKEN"] = token
	env["LEADERCRON_SERVICE"] = aclService
	return env
}

// waitForOutput polls a sidecar's log (an external process) until it
// contains every one of wants.
func waitForOutput(t *testing.T, s *sidecar, timeout time.Duration, wants ...string) string {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		out := s.Output()
		missing := ""
		for _, w := range wants {
			if !strings.Contains(out, w) {
				missing = w
				break
			}
		}
		if missing == "" {
			return out
		}
		if time.Now().After(deadline) {
			t.Fatalf("sidecar %s log lacks %q after %s:\n%s", s.ID, missing, timeout, out)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestACLPolicy runs the built sidecar against a Consul with ACLs enabled
// and default deny, with a token that carries only the shipped policy.
func TestACLPolicy(t *testing.T) {
	rules, err := os.ReadFile(policyFile)
	if err != nil {
		t.Fatal(err)
	}
	agent := consultest.StartACL(t)
	mgmt := agent.Management(t)
	token := agent.TokenWithRules(t, "leadercron-"+aclService, string(rules))

	t.Run("the policy is enough", func(t *testing.T) {
		h := newHistory()
		testkit.StartLockWatch(t, h, aclLockKey, mgmt)
		app := startApp(t, "app-a", h, mgmt, aclLockKey, 1)
		s := startSidecar(t, "a", aclEnv(agent, app, token))

		evs := h.WaitFor(t, 20*time.Second, "3 triggers", func(evs []event) bool { return len(filter(evs, "trigger")) >= 3 })
		last := filter(evs, "trigger")[len(filter(evs, "trigger"))-1]
		pair, _, err := mgmt.KV().Get("leadercron/"+aclService+"/jobs/tick/last", &api.QueryOptions{RequireConsistent: true})
		if err != nil || pair == nil {
			t.Fatalf("claimed slot not in KV: pair %v, err %v", pair, err)
		}
		t.Logf("last claim in KV: %s; last trigger seen: %s", pair.Value, last.Slot)

		term := time.Now()
		s.Signal(t, syscall.SIGTERM)
		if code := s.Wait(t, 15*time.Second); code != 0 {
			t.Fatalf("sidecar exited %d after SIGTERM, want 0", code)
		}
		evs = h.WaitFor(t, 5*time.Second, "the lock released", func(evs []event) bool {
			locks := filter(evs, "lock")
			return len(locks) > 0 && locks[len(locks)-1].Session == "" && locks[len(locks)-1].At.After(term)
		})
		if len(filter(evs, "drain")) < 2 {
			t.Errorf("app saw %d /drain calls, want 2 (one busy answer, then drained)", len(filter(evs, "drain")))
		}
		checkNoDuplicateSlots(t, evs)
		sessions, _, err := mgmt.Session().List(nil)
		if err != nil {
			t.Fatal(err)
		}
		for _, se := range sessions {
			if strings.Contains(se.Name, aclService) {
				t.Errorf("session %s (%s) still exists after a graceful exit", se.ID, se.Name)
			}
		}
		if out := s.Output(); strings.Contains(out, "Permission denied") {
			t.Errorf("sidecar with the policy was denied something:\n%s", out)
		}
	})

	t.Run("the policy grants nothing else", func(t *testing.T) {
		c := consultest.TokenClient(t, agent.Addr, token)
		for _, key := range []string{
			"leadercron/other-service/leader",   // another fleet's lock
			"leadercron/orders-api-2/leader",    // a fleet whose name starts the same
			"leadercron/other-service/jobs/x/y", // another fleet's claims
			"orders-api/config",                 // the app's own keys
		} {
			if _, err := c.KV().Put(&api.KVPair{Key: key, Value: []byte("x")}, nil); err == nil || !strings.Contains(err.Error(), "Permission denied") {
				t.Errorf("put %s with the sidecar's token: err %v, want Permission denied", key, err)
			}
		}
		if _, err := c.Catalog().Register(&api.CatalogRegistration{Node: "x", Address: "127.0.0.1"}, nil); err == nil {
			t.Errorf("the sidecar's token may register nodes")
		}
		if _, _, err := c.ACL().TokenList(nil); err == nil {
			t.Errorf("the sidecar's token may list ACL tokens")
		}
	})

	// Each right in the policy is needed: without it the sidecar says
	// which one is missing, keeps running (a token can be fixed without a
	// redeploy), and never triggers.
	denied := []struct {
		name, rules string
		wants       []string
	}{
		{"no policy", "", []string{"read lock key failed", "Permission denied", "key:read"}},
		{"no session rights", stripBlock(t, string(rules), `session_prefix ""`), []string{"create session failed", "Permission denied", "session:write"}},
		{"read-only keys", readOnly(t, string(rules)), []string{"acquire lock failed", "Permission denied", "key:write"}},
	}
	for _, tc := range denied {
		t.Run(tc.name, func(t *testing.T) {
			tok := agent.TokenWithRules(t, "leadercron-"+strings.ReplaceAll(tc.name, " ", "-"), tc.rules)
			h := newHistory()
			app := startApp(t, "app-denied", h, mgmt, aclLockKey, 0)
			s := startSidecar(t, "denied", aclEnv(agent, app, tok))
			out := waitForOutput(t, s, 15*time.Second, tc.wants...)
			for _, line := range strings.Split(out, "\n") {
				if strings.Contains(line, "Permission denied") {
					t.Logf("the error an operator sees: %s", line)
					break
				}
			}
			if evs, _ := h.Snapshot(); len(filter(evs, "trigger")) != 0 {
				n := len(filter(evs, "trigger"))
				t.Errorf("a sidecar without the rights triggered %d times", n)
			}
			s.Signal(t, syscall.SIGTERM)
			if code := s.Wait(t, 10*time.Second); code != 0 {
				t.Errorf("denied sidecar exited %d after SIGTERM, want 0", code)
			}
		})
	}
}

// stripBlock removes the rule block that starts with head from an HCL
// policy, failing the test if it is not there.
func stripBlock(t *testing.T, rules, head string) string {
	t.Helper()
	re := regexp.MustCompile(`(?s)` + regexp.QuoteMeta(head) + `\s*\{[^}]*\}`)
	out := re.ReplaceAllString(rules, "")
	if out == rules {
		t.Fatalf("policy has no %s block", head)
	}
	return out
}

// readOnly turns the policy's key write rights into read rights, failing
// the test if it has none.
func readOnly(t *testing.T, rules string) string {
	t.Helper()
	re := regexp.MustCompile(`(key(?:_prefix)? "[^"]*"\s*\{\s*policy\s*=\s*)"write"`)
	out := re.ReplaceAllString(rules, `${1}"read"`)
	if out == rules {
		t.Fatal("policy has no key write rule")
	}
	return out
}
