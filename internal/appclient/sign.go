package appclient

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"time"
)

// Headers of the signed app contract.
const (
	// HeaderSignature is t=<unix seconds>,kid=<key id>,v1=<hex HMAC>.
	HeaderSignature = "Leadercron-Signature"
	// HeaderAttempt is the trigger's attempt, decimal, on every trigger
	// (signed or not), as in the body's "attempt".
	HeaderAttempt = "Leadercron-Attempt"
)

// MinSecretBytes is the shortest secret NewSigner accepts.
const MinSecretBytes = 32

// signedHeaders are the headers whose values are lines 5 to 12 of the
// signed string, in this order; an absent header is an empty line.
var signedHeaders = [...]string{
	"Leadercron-Job",
	"Leadercron-Slot",
	"Leadercron-Fencing-Token",
	"Leadercron-Deadline",
	"Idempotency-Key",
	HeaderAttempt,
	"Leadercron-Run-Now",
	"Leadercron-Id",
}

// Signer signs the requests the Client sends to the app with
// Leadercron-Signature, v1 (the spec shared with the app packages):
//
//	v1 = hex(HMAC-SHA256(secret, S)), S = these 13 lines joined by "\n":
//	"leadercron-v1", method, path as sent (URL.EscapedPath), t, then the
//	values of the 8 signedHeaders ("" when absent), then the lowercase hex
//	SHA-256 of the body.
//
// The app recomputes it from the request it read, checks that |now - t|
// is at most 30 s, and refuses anything else with 401 before touching any
// state. A Signer holds one secret; rotation is the apps' concern (they
// accept the old and the new secret while the sidecars switch). It is safe
// for concurrent use, and never shows its secret.
type Signer struct {
	secret []byte
	kid    string
	now    func() time.Time
}

// NewSigner returns a Signer for secret (at least MinSecretBytes; copied)
// whose signatures carry the time now returns (nil means time.Now).
func NewSigner(secret []byte, now func() time.Time) (*Signer, error) {
	if len(secret) < MinSecretBytes {
		return nil, fmt.Errorf("signing secret must be at least %d bytes, it has %d", MinSecretBytes, len(secret))
	}
	if now == nil {
		now = time.Now
	}
	sum := sha256.Sum256(append([]byte("leadercron-kid\n"), secret...))
	return &Signer{secret: bytes.Clone(secret), kid: hex.EncodeToString(sum[:4]), now: now}, nil
}

// KeyID is the secret's key id: the first 8 hex characters of
// SHA-256("leadercron-kid\n" + secret). It is sent with every signature,
// so it is not a secret, and it may be logged.
func (s *Signer) KeyID() string { return s.kid }

// Sign sets req's Leadercron-Signature for body, which must be the bytes
// req sends (nil for none), over the headers req carries now: call it
// after every signed header is set, and change none of them after.
func (s *Signer) Sign(req *http.Request, body []byte) {
	t := strconv.FormatInt(s.now().Unix(), 10)
	req.Header.Set(HeaderSignature, "t="+t+",kid="+s.kid+",v1="+s.mac(req, t, body))
}

// String shows the key id, never the secret.
func (s Signer) String() string { return "appclient.Signer{kid: " + s.kid + "}" }

// Format writes String for every verb (%d or %x of a Signer must not
// show its secret either).
func (s Signer) Format(f fmt.State, _ rune) { _, _ = io.WriteString(f, s.String()) }

// mac returns hex(HMAC-SHA256(secret, S)) for req at t.
func (s *Signer) mac(req *http.Request, t string, body []byte) string {
	bodySum := sha256.Sum256(body)
	buf := make([]byte, 0, 512)
	buf = append(buf, "leadercron-v1\n"...)
	buf = append(buf, req.Method...)
	buf = append(buf, '\n')
	buf = append(buf, req.URL.EscapedPath()...)
	buf = append(buf, '\n')
	buf = append(buf, t...)
	for _, h := range signedHeaders {
		buf = append(buf, '\n')
		buf = append(buf, req.Header.Get(h)...)
	}
	buf = append(buf, '\n')
	buf = hex.AppendEncode(buf, bodySum[:])
	m := hmac.New(sha256.New, s.secret)
	m.Write(buf)
	return hex.EncodeToString(m.Sum(nil))
}
