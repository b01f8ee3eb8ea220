package consultest

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
)

// TestTLSCAIssue checks the certificates without Consul: the server
// certificate verifies against its CA for the names it was issued for,
// and not for another name or against another CA.
func TestTLSCAIssue(t *testing.T) {
	ca := NewCA(t, "test CA")
	certFile, keyFile := ca.Issue(t, "127.0.0.1", "localhost")
	pair, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		t.Fatalf("load issued pair: %v", err)
	}
	leaf, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	verify := func(pool *x509.CertPool, name string) error {
		_, err := leaf.Verify(x509.VerifyOptions{Roots: pool, DNSName: name, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})
		return err
	}
	for _, name := range []string{"127.0.0.1", "localhost"} {
		if err := verify(ca.Pool(), name); err != nil {
			t.Errorf("certificate does not verify for %s: %v", name, err)
		}
	}
	var hostErr x509.HostnameError
	if err := verify(ca.Pool(), "consul.example"); !errors.As(err, &hostErr) {
		t.Errorf("certificate for another name: err %v, want a HostnameError", err)
	}
	var authErr x509.UnknownAuthorityError
	if err := verify(NewCA(t, "other CA").Pool(), "127.0.0.1"); !errors.As(err, &authErr) {
		t.Errorf("certificate against another CA: err %v, want an UnknownAuthorityError", err)
	}
}

// TestTLSAgent checks the fixture against a real agent: its HTTPS API
// answers a client that trusts its CA, and refuses (in the ways the
// sidecar's start-up check must recognise) a client that trusts another
// CA, one that trusts only the system roots, and plain HTTP sent to the
// HTTPS port.
func TestTLSAgent(t *testing.T) {
	a := StartTLS(t)
	leader, err := a.TLSClient(t).Status().Leader()
	if err != nil || leader == "" {
		t.Fatalf("leader over HTTPS: %q, %v", leader, err)
	}
	if _, err := Client(t, a.Addr).Status().Leader(); err != nil {
		t.Fatalf("leader over plain HTTP: %v", err)
	}

	call := func(scheme, caFile string) error {
		cfg := api.DefaultNonPooledConfig()
		cfg.Address, cfg.Scheme, cfg.Token = a.HTTPSAddr, scheme, ""
		cfg.TLSConfig = api.TLSConfig{CAFile: caFile}
		c, err := api.NewClient(cfg)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_, err = c.Status().LeaderWithQueryOptions((&api.QueryOptions{}).WithContext(ctx))
		return err
	}
	var verr *tls.CertificateVerificationError
	if err := call("https", NewCA(t, "other CA").File); !errors.As(err, &verr) {
		t.Errorf("HTTPS trusting another CA: err %v, want a certificate verification error", err)
	}
	if err := call("https", ""); !errors.As(err, &verr) {
		t.Errorf("HTTPS trusting the system roots: err %v, want a certificate verification error", err)
	}
	var serr api.StatusError
	if err := call("http", ""); !errors.As(err, &serr) || serr.Code != 400 || !strings.Contains(serr.Body, "HTTPS") {
		t.Errorf("plain HTTP to the HTTPS port: err %v, want a 400 about HTTPS", err)
	}
}
