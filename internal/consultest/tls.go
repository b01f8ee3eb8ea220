package consultest

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/leadercron/leadercron/internal/testkit"
)

// CA is a certificate authority made for one test: a self-signed ECDSA
// P-256 certificate whose key never leaves the test process.
type CA struct {
	Cert    *x509.Certificate
	CertPEM []byte
	// File holds CertPEM: the value for CONSUL_CACERT.
	File string

	key *ecdsa.PrivateKey
	dir string
}

// NewCA makes a CA valid from an hour ago for a day, and writes its
// certificate to a file under t.TempDir.
func NewCA(t testing.TB, name string) *CA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatalf("CA key: %v", err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial(t),
		Subject:               pkix.Name{CommonName: name, Organization: []string{"leadercron tests"}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		MaxPathLenZero:        true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatalf("CA certificate: %v", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatalf("CA certificate: %v", err)
	}
	ca := &CA{Cert: cert, CertPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), key: key, dir: t.TempDir()}
	ca.File = filepath.Join(ca.dir, "ca.pem")
	if err := os.WriteFile(ca.File, ca.CertPEM, 0o600); err != nil {
		t.Fatalf("write CA certificate: %v", err)
	}
	return ca
}

// Pool returns a certificate pool that trusts only ca.
func (ca *CA) Pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.Cert)
	return p
}

// Issue signs a certificate for hosts (IP addresses or DNS names; the first
// is also its common name), usable by a server and a client, and writes it
// and its key (PKCS #8) as PEM files under the CA's directory. It returns
// the two paths.
func (ca *CA) Issue(t testing.TB, hosts ...string) (certFile, keyFile string) {
	t.Helper()
	if len(hosts) == 0 {
		t.Fatal("issue certificate: no hosts")
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatalf("certificate key: %v", err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial(t),
		Subject:      pkix.Name{CommonName: hosts[0], Organization: []string{"leadercron tests"}},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatalf("sign certificate: %v", err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatalf("encode certificate key: %v", err)
	}
	base := filepath.Join(ca.dir, fmt.Sprintf("%s-%x", hosts[0], tmpl.SerialNumber.Bytes()[:4]))
	certFile, keyFile = base+".pem", base+"-key.pem"
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatalf("write certificate: %v", err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		t.Fatalf("write certificate key: %v", err)
	}
	return certFile, keyFile
}

func serial(t testing.TB) *big.Int {
	t.Helper()
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		t.Fatalf("certificate serial: %v", err)
	}
	return n.Add(n, big.NewInt(1<<32)) // at least 4 bytes, never 0
}

// TLSAgent is a dev agent that also serves its HTTP API over HTTPS, with a
// certificate from a CA made for the test.
//
// Its plain HTTP API (Agent.Addr) stays open: the readiness check and a
// test's own bookkeeping then do not depend on the TLS set-up under test.
// Point the code under test at HTTPSAddr.
type TLSAgent struct {
	*Agent
	// HTTPSAddr is host:port of the HTTPS API; its certificate names
	// 127.0.0.1 and localhost.
	HTTPSAddr string
	// CA signed the agent's certificate; CA.File is the CONSUL_CACERT.
	CA *CA
}

// StartTLS starts a dev agent like Start that also serves HTTPS on a free
// port, with a certificate from a new CA. The agent does not ask clients
// for a certificate (verify_incoming = false): any client that trusts the
// CA may call it.
func StartTLS(t testing.TB) *TLSAgent {
	t.Helper()
	return StartTLSWith(t, nil, 0)
}

// StartTLSWith is StartTLS with a given CA (nil: a new one) and HTTPS port
// (0: a free one), for a test that points a client at the agent before it
// runs.
func StartTLSWith(t testing.TB, ca *CA, port int) *TLSAgent {
	t.Helper()
	bin := Require(t)
	if ca == nil {
		ca = NewCA(t, "leadercron test CA")
	}
	certFile, keyFile := ca.Issue(t, "127.0.0.1", "localhost")
	var lastErr error
	for attempt := range 3 {
		https := port
		if https == 0 {
			ports, err := testkit.FreePorts(1)
			if err != nil {
				t.Fatalf("start consul with TLS: %v", err)
			}
			https = ports[0]
		}
		// tls.defaults applies to every interface (HTTPS, internal RPC,
		// gRPC) unless tls.https and the others override it. Incoming
		// connections are not asked for a certificate, so the HTTPS API
		// works with CONSUL_CACERT alone, and the dev server's own RPC
		// stays plain.
		o := Options{Args: []string{
			"-hcl", fmt.Sprintf(`tls {
  defaults {
    ca_file         = %q
    cert_file       = %q
    key_file        = %q
    verify_incoming = false
    verify_outgoing = false
  }
}`, ca.File, certFile, keyFile),
			"-hcl", fmt.Sprintf(`ports { https = %d }`, https),
		}}
		a, err := start(bin, attempt, o)
		if err != nil {
			lastErr = err
			continue
		}
		ta := &TLSAgent{Agent: a, HTTPSAddr: "127.0.0.1:" + strconv.Itoa(https), CA: ca}
		if err := ta.waitHTTPS(10 * time.Second); err != nil {
			a.Stop()
			lastErr = err
			continue
		}
		t.Cleanup(a.Stop)
		return ta
	}
	t.Fatalf("start consul with TLS: %v", lastErr)
	return nil
}

// waitHTTPS polls the HTTPS API, trusting only the agent's CA, until it
// reports a leader.
func (a *TLSAgent) waitHTTPS(timeout time.Duration) error {
	c, err := a.newTLSClient()
	if err != nil {
		return err
	}
	deadline := time.Now().Add(timeout)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		leader, err := c.Status().LeaderWithQueryOptions((&api.QueryOptions{}).WithContext(ctx))
		cancel()
		if err == nil && leader != "" {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("consul HTTPS API on %s not ready after %s: %v; output: %s", a.HTTPSAddr, timeout, err, a.Output())
		}
		time.Sleep(50 * time.Millisecond) // polling an external process
	}
}

// HTTPSURL returns https://HTTPSAddr: the value for CONSUL_HTTP_ADDR.
func (a *TLSAgent) HTTPSURL() string { return "https://" + a.HTTPSAddr }

// TLSClient returns a client for the agent's HTTPS API that trusts only the
// agent's CA.
func (a *TLSAgent) TLSClient(t testing.TB) *api.Client {
	t.Helper()
	c, err := a.newTLSClient()
	if err != nil {
		t.Fatalf("consul TLS client: %v", err)
	}
	return c
}

func (a *TLSAgent) newTLSClient() (*api.Client, error) {
	cfg := api.DefaultNonPooledConfig()
	cfg.Address = a.HTTPSAddr
	cfg.Scheme = "https"
	cfg.Token = ""
	cfg.TLSConfig = api.TLSConfig{CAFile: a.CA.File}
	return api.NewClient(cfg)
}
