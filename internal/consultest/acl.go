package consultest

import (
	"crypto/rand"
	"fmt"
	"testing"

	"github.com/hashicorp/consul/api"
)

// ACLAgent is a dev agent with ACLs enabled and the default policy deny:
// a request is refused unless its token grants the right.
type ACLAgent struct {
	*Agent
	// ManagementToken is the initial management token (full rights). It
	// is also the agent's own token, so that the agent can register its
	// node, which sessions bind to.
	ManagementToken string
}

// StartACL starts a dev agent like Start, with ACLs enabled, default deny,
// and a fresh management token. Client(t, a.Addr) then talks to it
// anonymously, which is denied everything.
func StartACL(t testing.TB) *ACLAgent {
	t.Helper()
	bin := Require(t)
	token := newUUID(t)
	o := Options{
		Bin: bin,
		Args: []string{"-hcl", fmt.Sprintf(`acl {
  enabled = true
  default_policy = "deny"
  enable_token_persistence = false
  tokens {
    initial_management = %q
    agent = %q
  }
}`, token, token)},
		Token: token,
	}
	a, err := StartAgent(o)
	if err != nil {
		t.Fatalf("start consul with ACLs: %v", err)
	}
	t.Cleanup(a.Stop)
	return &ACLAgent{Agent: a, ManagementToken: token}
}

// TokenClient returns a client for the agent at addr that sends token.
func TokenClient(t testing.TB, addr, token string) *api.Client {
	t.Helper()
	cfg := api.DefaultNonPooledConfig()
	cfg.Address = addr
	cfg.Token = token
	c, err := api.NewClient(cfg)
	if err != nil {
		t.Fatalf("consul client: %v", err)
	}
	return c
}

// Management returns a client with the management token.
func (a *ACLAgent) Management(t testing.TB) *api.Client {
	t.Helper()
	return TokenClient(t, a.Addr, a.ManagementToken)
}

// TokenWithRules creates an ACL policy named name from rules (HCL) and a
// token that carries only that policy, and returns the token's secret. An
// empty rules string gives a token with no policy at all.
func (a *ACLAgent) TokenWithRules(t testing.TB, name, rules string) string {
	t.Helper()
	acl := a.Management(t).ACL()
	tok := &api.ACLToken{Description: "consultest " + name}
	if rules != "" {
		p, _, err := acl.PolicyCreate(&api.ACLPolicy{Name: name, Rules: rules}, nil)
		if err != nil {
			t.Fatalf("create ACL policy %s: %v", name, err)
		}
		tok.Policies = []*api.ACLTokenPolicyLink{{ID: p.ID}}
	}
	created, _, err := acl.TokenCreate(tok, nil)
	if err != nil {
		t.Fatalf("create ACL token for %s: %v", name, err)
	}
	return created.SecretID
}

func newUUID(t testing.TB) string {
	t.Helper()
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatalf("random token: %v", err)
	}
	b[6] = b[6]&0x0f | 0x40 // version 4
	b[8] = b[8]&0x3f | 0x80 // RFC 4122 variant
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}
