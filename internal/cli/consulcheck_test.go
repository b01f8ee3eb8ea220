package cli

import (
	"bytes"
	"context"
	"crypto/tls"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"

	"github.com/leadercron/leadercron/internal/consultest"
)

// fakeConsul answers GET /v1/status/leader as a Consul with a leader, and
// counts the requests it got.
func fakeConsul(hits *atomic.Int64) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		if r.URL.Path != "/v1/status/leader" {
			http.NotFound(w, r)
			return
		}
		_, _ = w.Write([]byte(`"127.0.0.1:8300"`))
	})
}

// tlsConsul starts a fake Consul over HTTPS with a certificate for
// 127.0.0.1 from a fresh CA; clientCAs, if not nil, makes it demand a
// client certificate signed by one of them (Consul's verify_incoming).
func tlsConsul(t *testing.T, hits *atomic.Int64, clientCA *consultest.CA) (*httptest.Server, *consultest.CA) {
	t.Helper()
	ca := consultest.NewCA(t, "check CA")
	certFile, keyFile := ca.Issue(t, "127.0.0.1")
	pair, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(fakeConsul(hits))
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{pair}}
	if clientCA != nil {
		srv.TLS.ClientAuth = tls.RequireAndVerifyClientCert
		srv.TLS.ClientCAs = clientCA.Pool()
	}
	srv.Config.ErrorLog = log.New(io.Discard, "", 0) // handshake errors are what these tests cause
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return srv, ca
}

// consulEnv returns the CONSUL_* variables as given and the client that
// api.DefaultConfig would build from them (it reads the process
// environment, so the test sets them there).
func consulClient(t *testing.T, vars map[string]string) (*api.Client, map[string]string) {
	t.Helper()
	for _, k := range []string{"CONSUL_HTTP_ADDR", "CONSUL_HTTP_SSL", "CONSUL_CACERT", "CONSUL_CAPATH",
		"CONSUL_CLIENT_CERT", "CONSUL_CLIENT_KEY", "CONSUL_TLS_SERVER_NAME", "CONSUL_HTTP_SSL_VERIFY", "CONSUL_HTTP_TOKEN"} {
		t.Setenv(k, vars[k])
	}
	c, err := api.NewClient(api.DefaultConfig())
	if err != nil {
		t.Fatalf("consul client for %v: %v", vars, err)
	}
	return c, vars
}

type checkResult struct {
	code   int
	stderr string
	log    string
	took   time.Duration
}

func check(t *testing.T, ctx context.Context, timeout time.Duration, c *api.Client, env map[string]string) checkResult {
	t.Helper()
	var stderr, logs bytes.Buffer
	logger := hclog.New(&hclog.LoggerOptions{Output: &logs, Level: hclog.Info})
	start := time.Now()
	code := checkConsulWithin(ctx, timeout, c, env, &stderr, logger)
	return checkResult{code, stderr.String(), logs.String(), time.Since(start)}
}

// TestConsulCheckTLSMisconfigured: every TLS disagreement between the
// client settings and Consul is a configuration error (exit 2) whose
// message names the variables to fix; the right settings pass silently.
func TestConsulCheckTLSMisconfigured(t *testing.T) {
	var hits atomic.Int64
	srv, ca := tlsConsul(t, &hits, nil)
	port := srv.URL[strings.LastIndex(srv.URL, ":")+1:]
	plain := httptest.NewServer(fakeConsul(&hits))
	t.Cleanup(plain.Close)
	clientCA := consultest.NewCA(t, "client CA")
	mtls, mtlsCA := tlsConsul(t, &hits, clientCA)
	clientCert, clientKey := clientCA.Issue(t, "leadercron")

	cases := []struct {
		name  string
		vars  map[string]string
		code  int
		wants []string // in stderr
	}{
		{"right CA", map[string]string{"CONSUL_HTTP_ADDR": srv.URL, "CONSUL_CACERT": ca.File}, ExitOK, nil},
		{"no CA", map[string]string{"CONSUL_HTTP_ADDR": srv.URL}, ExitConfig,
			[]string{"configuration error", "CONSUL_HTTP_ADDR=\"" + srv.URL + "\"", "CONSUL_CACERT is not set", "set CONSUL_CACERT"}},
		{"another CA", map[string]string{"CONSUL_HTTP_ADDR": srv.URL, "CONSUL_CACERT": consultest.NewCA(t, "other").File}, ExitConfig,
			[]string{"CONSUL_HTTP_ADDR=", "does not trust", "CONSUL_CACERT=\"", "does not hold it"}},
		{"a name the certificate lacks", map[string]string{"CONSUL_HTTP_ADDR": "https://localhost:" + port, "CONSUL_CACERT": ca.File}, ExitConfig,
			[]string{"CONSUL_HTTP_ADDR=\"https://localhost:", "does not name the host", "CONSUL_TLS_SERVER_NAME"}},
		{"CONSUL_TLS_SERVER_NAME fixes the name", map[string]string{"CONSUL_HTTP_ADDR": "https://localhost:" + port, "CONSUL_CACERT": ca.File, "CONSUL_TLS_SERVER_NAME": "127.0.0.1"}, ExitOK, nil},
		{"CONSUL_HTTP_SSL with a bare address", map[string]string{"CONSUL_HTTP_ADDR": "127.0.0.1:" + port, "CONSUL_HTTP_SSL": "true", "CONSUL_CACERT": ca.File}, ExitOK, nil},
		{"http to the HTTPS port", map[string]string{"CONSUL_HTTP_ADDR": "http://127.0.0.1:" + port, "CONSUL_CACERT": ca.File}, ExitConfig,
			[]string{"CONSUL_HTTP_ADDR=\"http://127.0.0.1:", "serves HTTPS", "https://", "CONSUL_HTTP_SSL=true"}},
		{"bare address to the HTTPS port", map[string]string{"CONSUL_HTTP_ADDR": "127.0.0.1:" + port}, ExitConfig,
			[]string{"serves HTTPS", "CONSUL_CACERT"}},
		{"https to a plain HTTP port", map[string]string{"CONSUL_HTTP_ADDR": strings.Replace(plain.URL, "http://", "https://", 1)}, ExitConfig,
			[]string{"CONSUL_HTTP_ADDR=\"https://", "does not", "http://"}},
		{"client certificate demanded, none given", map[string]string{"CONSUL_HTTP_ADDR": mtls.URL, "CONSUL_CACERT": mtlsCA.File}, ExitConfig,
			[]string{"CONSUL_HTTP_ADDR=", "refused this client's certificate", "CONSUL_CLIENT_CERT", "CONSUL_CLIENT_KEY"}},
		{"client certificate given", map[string]string{"CONSUL_HTTP_ADDR": mtls.URL, "CONSUL_CACERT": mtlsCA.File, "CONSUL_CLIENT_CERT": clientCert, "CONSUL_CLIENT_KEY": clientKey}, ExitOK, nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, env := consulClient(t, tc.vars)
			r := check(t, context.Background(), 5*time.Second, c, env)
			if r.code != tc.code {
				t.Fatalf("exit %d, want %d; stderr %q; log %q", r.code, tc.code, r.stderr, r.log)
			}
			if tc.code == ExitOK && (r.stderr != "" || r.log != "") {
				t.Errorf("a passing check printed stderr %q, log %q; want nothing", r.stderr, r.log)
			}
			for _, w := range tc.wants {
				if !strings.Contains(r.stderr, w) {
					t.Errorf("stderr lacks %q:\n%s", w, r.stderr)
				}
			}
			if tc.code != ExitOK {
				t.Logf("what the operator sees:\n%s", r.stderr)
			}
		})
	}
}

// TestConsulCheckUnreachable: a Consul that cannot be reached now is not
// a configuration error (it may start after the sidecar): the check logs
// a warning naming the address and passes, within its timeout.
func TestConsulCheckUnreachable(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	refused := ln.Addr().String()
	ln.Close()

	// Accepts connections and never answers: a hung agent, or a TLS
	// handshake that never completes.
	hung, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = hung.Close() })
	go func() {
		var conns []net.Conn
		defer func() {
			for _, c := range conns {
				_ = c.Close()
			}
		}()
		for {
			c, err := hung.Accept()
			if err != nil {
				return
			}
			conns = append(conns, c)
		}
	}()

	// Closes every connection at once: an agent restarting.
	closing, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = closing.Close() })
	go func() {
		for {
			c, err := closing.Accept()
			if err != nil {
				return
			}
			_ = c.Close()
		}
	}()

	noLeader := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "No cluster leader", http.StatusInternalServerError)
	}))
	t.Cleanup(noLeader.Close)

	const timeout = 300 * time.Millisecond
	for _, tc := range []struct{ name, addr string }{
		{"connection refused", "http://" + refused},
		{"connection refused over https", "https://" + refused},
		{"no answer", "http://" + hung.Addr().String()},
		{"no TLS handshake", "https://" + hung.Addr().String()},
		{"connection closed", "http://" + closing.Addr().String()},
		{"connection closed during the TLS handshake", "https://" + closing.Addr().String()},
		{"no such host", "http://leadercron-no-such-host.invalid:8500"},
		{"consul without a leader", noLeader.URL},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, env := consulClient(t, map[string]string{"CONSUL_HTTP_ADDR": tc.addr})
			r := check(t, context.Background(), timeout, c, env)
			if r.code != ExitOK || r.stderr != "" {
				t.Fatalf("exit %d, stderr %q; want 0 and nothing on stderr", r.code, r.stderr)
			}
			for _, w := range []string{"[WARN]", "consul not reachable at start", "keeps retrying", tc.addr} {
				if !strings.Contains(r.log, w) {
					t.Errorf("log lacks %q: %s", w, r.log)
				}
			}
			if r.took > timeout+2*time.Second {
				t.Errorf("the check took %s, over its timeout %s", r.took, timeout)
			}
		})
	}

	t.Run("cancelled while checking", func(t *testing.T) {
		c, env := consulClient(t, map[string]string{"CONSUL_HTTP_ADDR": "http://" + hung.Addr().String()})
		ctx, cancel := context.WithCancel(context.Background())
		time.AfterFunc(50*time.Millisecond, cancel)
		r := check(t, ctx, 10*time.Second, c, env)
		if r.code != ExitOK || r.stderr != "" || r.log != "" || r.took > 5*time.Second {
			t.Errorf("cancelled check: %+v; want a quiet exit 0 at once", r)
		}
	})
	t.Run("standalone", func(t *testing.T) {
		if r := check(t, context.Background(), timeout, nil, nil); r.code != ExitOK || r.stderr != "" || r.log != "" {
			t.Errorf("check without a Consul client: %+v; want a quiet exit 0", r)
		}
	})
}

// TestConsulCheckOnlyForTheSidecar: validate does not contact Consul (it
// promises not to), so a TLS misconfiguration does not fail it; the fleet
// commands do not run the check, and their own first request fails at
// once with the certificate error (exit 1), not after fleetTimeout.
func TestConsulCheckOnlyForTheSidecar(t *testing.T) {
	var hits atomic.Int64
	srv, _ := tlsConsul(t, &hits, nil)
	consulClient(t, map[string]string{"CONSUL_HTTP_ADDR": srv.URL}) // no CONSUL_CACERT
	env := []string{"LEADERCRON_SERVICE=check", "LEADERCRON_ID=a", "LEADERCRON_JOB_REPORT=@every 1m"}

	var out, errb bytes.Buffer
	if code := Main(context.Background(), []string{"validate"}, env, &out, &errb); code != ExitOK {
		t.Fatalf("validate exit %d, want 0; stderr %s", code, errb.String())
	}
	if n := hits.Load(); n != 0 {
		t.Errorf("validate sent %d requests to Consul, want none", n)
	}

	out.Reset()
	errb.Reset()
	start := time.Now()
	code := Main(context.Background(), []string{"status"}, env, &out, &errb)
	if took := time.Since(start); code != ExitFailure || !strings.Contains(errb.String(), "certificate") || took > 5*time.Second {
		t.Errorf("status without CONSUL_CACERT: exit %d after %s, stderr %q; want exit 1 at once with the certificate error", code, took, errb.String())
	}
}
