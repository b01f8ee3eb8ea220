package jobs

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"
)

// MinSecretLen is the shortest secret accepted in Options.Secrets and by
// SecretsFromEnv: 32 bytes, an HMAC-SHA256 key as strong as the hash.
const MinSecretLen = 32

// SignatureTolerance is how far the time of a signature (its t=) may be
// from the Handler's clock, in either direction.
const SignatureTolerance = 30 * time.Second

// maxSecretFileBytes bounds what SecretsFromEnv reads from a _FILE
// variable's file, as the sidecar does.
const maxSecretFileBytes = 4 << 10

// signedHeaders are the headers covered by the signature, in the order of
// lines 5 to 12 of the signed string.
var signedHeaders = [...]string{
	HeaderJob,
	HeaderSlot,
	HeaderFencingToken,
	HeaderDeadline,
	HeaderIdempotencyKey,
	HeaderAttempt,
	HeaderRunNow,
	HeaderID,
}

// KeyID returns the key id of secret, as sent in the kid= of a
// Leadercron-Signature: the first 8 lowercase hex characters of
// SHA-256("leadercron-kid\n" + secret). It reveals nothing useful about
// the secret and may be logged.
func KeyID(secret []byte) string {
	h := sha256.New()
	h.Write([]byte("leadercron-kid\n"))
	h.Write(secret)
	return hex.EncodeToString(h.Sum(nil))[:8]
}

// SignRequest sets the Leadercron-Signature header of r as the sidecar
// does, with secret, at time t (whole seconds), for the given body (r.Body
// is not read). It signs r.Method, the path r is sent with, the headers
// listed in the package documentation as they are set on r when it is
// called, and body. It is meant for tests of handlers that have Secrets;
// it does not check the secret's length.
func SignRequest(r *http.Request, body, secret []byte, t time.Time) {
	ts := strconv.FormatInt(t.Unix(), 10)
	mac := computeMAC(secret, r.Method, wirePath(r), ts, r.Header, body)
	r.Header.Set(HeaderSignature, "t="+ts+",kid="+KeyID(secret)+",v1="+hex.EncodeToString(mac))
}

// computeMAC returns HMAC-SHA256(secret, S), S being the 13 lines of the
// v1 signed string.
func computeMAC(secret []byte, method, path, ts string, hdr http.Header, body []byte) []byte {
	bodySum := sha256.Sum256(body)
	m := hmac.New(sha256.New, secret)
	io.WriteString(m, "leadercron-v1\n")
	io.WriteString(m, method+"\n")
	io.WriteString(m, path+"\n")
	io.WriteString(m, ts+"\n")
	for _, name := range signedHeaders {
		io.WriteString(m, hdr.Get(name)+"\n")
	}
	io.WriteString(m, hex.EncodeToString(bodySum[:]))
	return m.Sum(nil)
}

// wirePath is the path of r as it was sent: the path of the request line,
// without the query, before any http.StripPrefix. For a request that was
// not received by a server (no RequestURI), the path it will be sent with.
func wirePath(r *http.Request) string {
	if u := r.RequestURI; u != "" {
		if strings.HasPrefix(u, "/") {
			p, _, _ := strings.Cut(u, "?")
			return p
		}
		if pu, err := url.ParseRequestURI(u); err == nil { // absolute form
			return pu.EscapedPath()
		}
	}
	return r.URL.EscapedPath()
}

// key is a configured secret and its key id.
type key struct {
	id     string
	secret []byte
}

// newKeys validates and copies the secrets; duplicates are dropped.
func newKeys(secrets [][]byte) ([]key, error) {
	var keys []key
	for i, s := range secrets {
		if len(s) < MinSecretLen {
			return nil, fmt.Errorf("jobs: Options.Secrets[%d] has %d bytes, want at least %d", i, len(s), MinSecretLen)
		}
		dup := false
		for _, k := range keys {
			dup = dup || hmac.Equal(k.secret, s)
		}
		if !dup {
			keys = append(keys, key{id: KeyID(s), secret: bytes.Clone(s)})
		}
	}
	return keys, nil
}

// signature is a parsed Leadercron-Signature header.
type signature struct {
	ts  string // t= as sent, signed as is
	t   int64
	kid string
	mac []byte
}

// parseSignature parses "t=<decimal>,kid=<8 hex>,v1=<64 hex>" exactly:
// fields in this order, no spaces, lowercase hex, t without sign or
// leading zero.
func parseSignature(s string) (signature, bool) {
	rest, ok := strings.CutPrefix(s, "t=")
	if !ok {
		return signature{}, false
	}
	ts, rest, ok := strings.Cut(rest, ",kid=")
	if !ok || !isDecimal(ts) {
		return signature{}, false
	}
	t, err := strconv.ParseInt(ts, 10, 64)
	if err != nil {
		return signature{}, false
	}
	kid, v1, ok := strings.Cut(rest, ",v1=")
	if !ok || len(kid) != 8 || !isLowerHex(kid) || len(v1) != 2*sha256.Size || !isLowerHex(v1) {
		return signature{}, false
	}
	mac, err := hex.DecodeString(v1)
	if err != nil {
		return signature{}, false
	}
	return signature{ts: ts, t: t, kid: kid, mac: mac}, true
}

func isDecimal(s string) bool {
	if s == "" || len(s) > 19 || (s[0] == '0' && len(s) > 1) {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

func isLowerHex(s string) bool {
	for i := 0; i < len(s); i++ {
		if (s[i] < '0' || s[i] > '9') && (s[i] < 'a' || s[i] > 'f') {
			return false
		}
	}
	return true
}

// verify checks the signature of r, whose body is body. It returns status
// 0 if r is signed by one of h.keys within SignatureTolerance of h.now.
// It reads no state.
func (h *Handler) verify(r *http.Request, body []byte) (status int, code, msg string) {
	bad := func(msg string) (int, string, string) {
		return http.StatusUnauthorized, CodeBadSignature, msg
	}
	vals := r.Header.Values(HeaderSignature)
	switch {
	case len(vals) == 0:
		return bad("missing " + HeaderSignature + " header: this app requires signed triggers")
	case len(vals) > 1:
		return bad(HeaderSignature + " header given more than once")
	}
	sig, ok := parseSignature(vals[0])
	if !ok {
		return bad("malformed " + HeaderSignature + " header, want t=<unix seconds>,kid=<8 hex>,v1=<64 hex>")
	}
	for _, name := range signedHeaders {
		// A signed header must have one unambiguous value: two values, or
		// a line break that would shift the lines of the signed string,
		// cannot be what the sidecar signed.
		v := r.Header.Values(name)
		if len(v) > 1 {
			return bad("signed header " + name + " given more than once")
		}
		if len(v) == 1 && strings.ContainsAny(v[0], "\r\n") {
			return bad("signed header " + name + " contains a line break")
		}
	}
	known, valid := false, false
	path := wirePath(r)
	for _, k := range h.keys {
		if k.id != sig.kid {
			continue
		}
		known = true
		if hmac.Equal(computeMAC(k.secret, r.Method, path, sig.ts, r.Header, body), sig.mac) {
			valid = true
			break
		}
	}
	switch {
	case !known:
		return bad("unknown key id " + sig.kid + ": the sidecar's secret is not one of this app's")
	case !valid:
		return bad("signature mismatch: wrong secret, or the request was altered")
	}
	now := h.now()
	if d := now.Sub(time.Unix(sig.t, 0)); d > SignatureTolerance || d < -SignatureTolerance {
		return http.StatusUnauthorized, CodeStaleSignature, fmt.Sprintf(
			"signature time %d is more than %s away from this app's clock (%d)",
			sig.t, SignatureTolerance, now.Unix())
	}
	return 0, "", ""
}

// loopbackPeer reports whether remoteAddr ("host:port", as in
// http.Request.RemoteAddr) is a loopback IP address: 127.0.0.0/8 or ::1,
// IPv4-mapped forms included.
func loopbackPeer(remoteAddr string) bool {
	host, _, err := net.SplitHostPort(remoteAddr)
	if err != nil {
		return false
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return false
	}
	return ip.WithZone("").Unmap().IsLoopback()
}

// Environment variables read by SecretsFromEnv.
const (
	envSecret         = "LEADERCRON_TRIGGER_SECRET"
	envSecretPrevious = "LEADERCRON_TRIGGER_SECRET_PREVIOUS"
)

// SecretsFromEnv returns the secrets configured in the environment, for
// Options.Secrets: the current one first, then the previous one, or nil
// if none is configured.
//
// The current secret is LEADERCRON_TRIGGER_SECRET (the value itself) or
// LEADERCRON_TRIGGER_SECRET_FILE (the path of a file holding it; one
// trailing "\n" or "\r\n" is removed, nothing else). The previous secret,
// accepted too during a rotation, is LEADERCRON_TRIGGER_SECRET_PREVIOUS or
// LEADERCRON_TRIGGER_SECRET_PREVIOUS_FILE, the same way. It is an error to
// set both forms of one secret, to set a previous secret without a current
// one, or to give a secret shorter than MinSecretLen bytes; setting a
// variable to the empty string counts as setting it (and is an error), so
// that a template that rendered nothing does not silently turn signatures
// off. Errors name the variable, never the secret.
func SecretsFromEnv() ([][]byte, error) {
	cur, err := secretFromEnv(envSecret)
	if err != nil {
		return nil, err
	}
	prev, err := secretFromEnv(envSecretPrevious)
	if err != nil {
		return nil, err
	}
	switch {
	case cur == nil && prev == nil:
		return nil, nil
	case cur == nil:
		return nil, fmt.Errorf("%s is set but %s is not: set the current secret too (the previous one is only accepted during a rotation)",
			envSecretPrevious, envSecret)
	case prev == nil:
		return [][]byte{cur}, nil
	}
	return [][]byte{cur, prev}, nil
}

// secretFromEnv reads NAME or NAME_FILE; nil if neither is set.
func secretFromEnv(name string) ([]byte, error) {
	fileVar := name + "_FILE"
	raw, rawSet := os.LookupEnv(name)
	path, fileSet := os.LookupEnv(fileVar)
	var b []byte
	from := name
	switch {
	case rawSet && fileSet:
		return nil, fmt.Errorf("%s and %s are both set: set only one of them", name, fileVar)
	case rawSet:
		b = []byte(raw)
	case fileSet:
		var err error
		if b, err = readSecretFile(path); err != nil {
			return nil, fmt.Errorf("%s: %w", fileVar, err)
		}
		from = fileVar + " (the file's content, less one trailing newline)"
	default:
		return nil, nil
	}
	if len(b) < MinSecretLen {
		return nil, fmt.Errorf("%s has %d bytes, want at least %d (generate one with: openssl rand -hex 32)",
			from, len(b), MinSecretLen)
	}
	return b, nil
}

// readSecretFile reads a secret file and removes one trailing "\n" or
// "\r\n". Its errors name the path, never the content.
func readSecretFile(path string) ([]byte, error) {
	if path == "" {
		return nil, errors.New("empty: it must be the path of a file holding the secret")
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if st, err := f.Stat(); err == nil && st.IsDir() {
		return nil, fmt.Errorf("%s is a directory, not a file", path)
	}
	b, err := io.ReadAll(io.LimitReader(f, maxSecretFileBytes+1))
	if err != nil {
		return nil, err
	}
	if len(b) > maxSecretFileBytes {
		return nil, fmt.Errorf("%s is larger than %d bytes: not a secret file?", path, maxSecretFileBytes)
	}
	if t, ok := bytes.CutSuffix(b, []byte("\r\n")); ok {
		return t, nil
	}
	b, _ = bytes.CutSuffix(b, []byte("\n"))
	return b, nil
}
