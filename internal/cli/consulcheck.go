package cli

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"

	"github.com/leadercron/leadercron/internal/config"
)

// consulCheckTimeout bounds the start-up check's one request. A Consul
// that answers takes milliseconds; one that does not answer in time is
// only logged, so a slow start never costs more than this.
const consulCheckTimeout = 3 * time.Second

// checkConsul is the sidecar's start-up check of its Consul client
// settings: one GET /v1/status/leader, bounded by consulCheckTimeout.
//
// A request that cannot succeed whatever Consul's state, because the
// client and Consul disagree on TLS, is a configuration error: it prints
// the problem, naming CONSUL_HTTP_ADDR and the variable to fix, and
// returns ExitConfig, so that the sidecar does not start half-configured
// and retry forever. Those cases are: Consul's certificate does not verify
// (unknown authority: CONSUL_CACERT; wrong name: CONSUL_HTTP_ADDR or
// CONSUL_TLS_SERVER_NAME; expired or otherwise invalid), Consul refused
// the client's certificate (CONSUL_CLIENT_CERT, CONSUL_CLIENT_KEY), plain
// HTTP sent to Consul's HTTPS port, and TLS sent to a port that answers
// plain HTTP.
//
// Anything else (connection refused, a timeout, a DNS failure, an error
// status from Consul) only means Consul is not reachable now: Consul may
// start after the sidecar, so it logs a warning and returns ExitOK, and
// the sidecar keeps retrying as it always does. consul nil (standalone
// mode) checks nothing.
//
// Only the sidecar runs it (Main, before Run). validate does not: it
// promises not to contact Consul. The fleet commands (pause, resume, run,
// status) do not either: their own first request to Consul fails at once
// with the same TLS error, which they print, exiting 1.
func checkConsul(ctx context.Context, consul *api.Client, env map[string]string, stderr io.Writer, log hclog.Logger) int {
	return checkConsulWithin(ctx, consulCheckTimeout, consul, env, stderr, log)
}

func checkConsulWithin(ctx context.Context, timeout time.Duration, consul *api.Client, env map[string]string, stderr io.Writer, log hclog.Logger) int {
	if consul == nil {
		return ExitOK
	}
	cctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	_, err := consul.Status().LeaderWithQueryOptions((&api.QueryOptions{}).WithContext(cctx))
	if err == nil || ctx.Err() != nil {
		return ExitOK
	}
	if p, ok := consulConfigProblem(err, env); ok {
		fmt.Fprintln(stderr, "leadercron: configuration error:")
		fmt.Fprintln(stderr, "  "+p.Error())
		return ExitConfig
	}
	log.Warn("consul not reachable at start; the sidecar starts anyway and keeps retrying",
		"consul_http_addr", consulAddr(env), "timeout", timeout, "error", err)
	return ExitOK
}

// consulAddr is CONSUL_HTTP_ADDR as api.DefaultConfig reads it.
func consulAddr(env map[string]string) string {
	if a := env["CONSUL_HTTP_ADDR"]; a != "" {
		return a
	}
	return "127.0.0.1:8500" // api.DefaultConfig's default
}

// consulConfigProblem tells a TLS disagreement between the client settings
// and Consul (a configuration error) from any other failure of the check's
// request, and words it for the operator.
func consulConfigProblem(err error, env map[string]string) (config.Problem, bool) {
	p := config.Problem{Var: "CONSUL_HTTP_ADDR", Value: consulAddr(env)}
	trust := "CONSUL_CACERT is not set, so only the system's CAs are trusted"
	if ca := env["CONSUL_CACERT"]; ca != "" {
		trust = fmt.Sprintf("CONSUL_CACERT=%q does not hold it", ca)
	} else if dir := env["CONSUL_CAPATH"]; dir != "" {
		trust = fmt.Sprintf("CONSUL_CAPATH=%q does not hold it", dir)
	}

	var (
		unknownCA x509.UnknownAuthorityError
		hostname  x509.HostnameError
		invalid   x509.CertificateInvalidError
		verify    *tls.CertificateVerificationError
		record    tls.RecordHeaderError
		status    api.StatusError
		op        *net.OpError
	)
	switch {
	case errors.As(err, &unknownCA):
		p.Msg = fmt.Sprintf("Consul's certificate is signed by a CA this sidecar does not trust (%v); %s: set CONSUL_CACERT to the PEM file of the CA that signed Consul's certificate", err, trust)
	case errors.As(err, &hostname):
		p.Msg = fmt.Sprintf("Consul's certificate does not name the host in CONSUL_HTTP_ADDR (%v): use a host name the certificate lists, or set CONSUL_TLS_SERVER_NAME to one", err)
	case errors.As(err, &invalid), errors.As(err, &verify):
		p.Msg = fmt.Sprintf("Consul's certificate does not verify (%v): check the certificate Consul serves and CONSUL_CACERT", err)
	case errors.As(err, &status) && status.Code == http.StatusBadRequest && strings.Contains(status.Body, "HTTP request to an HTTPS server"):
		p.Msg = "this address serves HTTPS and the sidecar spoke plain HTTP to it: write https://<host>:<port> in CONSUL_HTTP_ADDR (or set CONSUL_HTTP_SSL=true), and set CONSUL_CACERT to the PEM file of the CA that signed Consul's certificate"
	case errors.Is(err, http.ErrSchemeMismatch), errors.As(err, &record):
		p.Msg = fmt.Sprintf("the sidecar spoke TLS (https) and this address does not (%v): use http:// for Consul's plain HTTP port, or the address of its HTTPS port", err)
	case errors.As(err, &op) && op.Op == "remote error" && strings.Contains(op.Err.Error(), "certificate"):
		// A TLS alert from Consul about this client's certificate: with
		// verify_incoming, Consul wants one signed by its CA.
		p.Msg = fmt.Sprintf("Consul refused this client's certificate (%v): set CONSUL_CLIENT_CERT and CONSUL_CLIENT_KEY to a certificate and key signed by a CA that Consul trusts", err)
	default:
		return config.Problem{}, false
	}
	return p, true
}
