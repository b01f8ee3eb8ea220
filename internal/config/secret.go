package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
)

// MinSecretBytes is the shortest LEADERCRON_TRIGGER_SECRET or
// LEADERCRON_ADMIN_TOKEN accepted: 32 bytes, the size of an HMAC-SHA256
// key that is as strong as the hash.
const MinSecretBytes = 32

// maxSecretFileBytes bounds what is read from a _FILE variable's file: a
// path to something that is not a secret (a log, /dev/zero) is refused
// instead of being read whole.
const maxSecretFileBytes = 4 << 10

// redacted is what a set Secret prints as, wherever it is printed.
const redacted = "[redacted]"

// Secret is a secret value read from the environment or from a file. It
// never prints itself: String, Format (every verb, so %v, %+v, %#v, %s,
// %q and %x of a Config too), MarshalText and MarshalJSON show only
// whether it is set. Bytes returns the value.
type Secret struct{ b []byte }

// IsSet reports whether a secret was configured.
func (s Secret) IsSet() bool { return len(s.b) > 0 }

// Bytes returns a copy of the secret, nil if none is set.
func (s Secret) Bytes() []byte { return bytes.Clone(s.b) }

// String returns "[redacted]" when set and "none" otherwise.
func (s Secret) String() string {
	if !s.IsSet() {
		return "none"
	}
	return redacted
}

// GoString is String: %#v must not show the bytes either.
func (s Secret) GoString() string { return s.String() }

// Format writes String for every verb.
func (s Secret) Format(f fmt.State, _ rune) { _, _ = io.WriteString(f, s.String()) }

// MarshalText returns String, so that logs and JSON show no secret.
func (s Secret) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// secretVar describes one secret and its two variables, NAME and NAME_FILE.
type secretVar struct {
	name  string // e.g. LEADERCRON_TRIGGER_SECRET
	unset string // what leaving both unset means, for the "empty" problem
}

var (
	triggerSecretVar = secretVar{"LEADERCRON_TRIGGER_SECRET", "unset it to send unsigned requests to the app"}
	adminTokenVar    = secretVar{"LEADERCRON_ADMIN_TOKEN", "unset it to let only loopback callers use POST /handover"}
)

// secretVarNames are the variables that hold a secret or the path to one.
// Their values are never printed; nor is the value of an unknown variable
// whose name is close to theirs (a misspelt secret variable).
var secretVarNames = []string{
	triggerSecretVar.name, triggerSecretVar.name + "_FILE",
	adminTokenVar.name, adminTokenVar.name + "_FILE",
}

// loadSecret reads v from NAME or NAME_FILE. Setting a variable, even to
// the empty string, counts as setting it: an empty value is an error, not
// a way to turn the feature off (a template that rendered nothing must
// not start a sidecar without the secret its operator meant to give it).
// No Problem it returns carries the secret: NAME's problems have no Value,
// NAME_FILE's carry the path.
func loadSecret(environ map[string]string, v secretVar) (Secret, Problems) {
	fileVar := v.name + "_FILE"
	raw, rawSet := environ[v.name]
	path, fileSet := environ[fileVar]
	switch {
	case rawSet && fileSet:
		return Secret{}, Problems{{Var: v.name, Msg: fmt.Sprintf("set together with %s: set only one of them", fileVar)}}
	case rawSet:
		if msg := secretLengthProblem([]byte(raw), v); msg != "" {
			return Secret{}, Problems{{Var: v.name, Msg: msg}}
		}
		return Secret{b: []byte(raw)}, nil
	case fileSet:
		b, msg := readSecretFile(path)
		if msg == "" {
			msg = secretLengthProblem(b, v)
			if msg != "" {
				msg = "the file's content, less one trailing newline, " + msg
			}
		}
		if msg != "" {
			return Secret{}, Problems{{Var: fileVar, Value: path, Msg: msg}}
		}
		return Secret{b: b}, nil
	}
	return Secret{}, nil
}

// secretLengthProblem says what is wrong with the secret's length, or "".
// It gives the length of a refused secret (a value one byte short is
// usually a trimmed or truncated one), never its content.
func secretLengthProblem(b []byte, v secretVar) string {
	switch {
	case len(b) == 0:
		return fmt.Sprintf("is empty; it must be at least %d bytes (%s)", MinSecretBytes, v.unset)
	case len(b) < MinSecretBytes:
		return fmt.Sprintf("must be at least %d bytes, it has %d (generate one with: openssl rand -hex 32)", MinSecretBytes, len(b))
	}
	return ""
}

// readSecretFile reads a secret file and removes one trailing "\n" or
// "\r\n" (what an editor or `echo` adds), and nothing else. The message it
// returns names the problem, never the content.
func readSecretFile(path string) ([]byte, string) {
	if path == "" {
		return nil, "must be the path of a file holding the secret"
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, "cannot read the file: " + pathErrorText(err)
	}
	defer f.Close()
	if st, err := f.Stat(); err == nil && st.IsDir() {
		return nil, "is a directory, not a file"
	}
	b, err := io.ReadAll(io.LimitReader(f, maxSecretFileBytes+1))
	if err != nil {
		return nil, "cannot read the file: " + pathErrorText(err)
	}
	if len(b) > maxSecretFileBytes {
		return nil, fmt.Sprintf("the file is larger than %d bytes: not a secret file?", maxSecretFileBytes)
	}
	if t, ok := bytes.CutSuffix(b, []byte("\r\n")); ok {
		return t, ""
	}
	b, _ = bytes.CutSuffix(b, []byte("\n"))
	return b, ""
}

// pathErrorText is the error's cause without the path, which the Problem
// already shows as its value.
func pathErrorText(err error) string {
	var pe *os.PathError
	if errors.As(err, &pe) {
		return pe.Err.Error()
	}
	return err.Error()
}

// sensitiveName reports whether the value of the unknown variable name
// must not be printed: its name says it holds a secret, or it is close to
// the name of a secret variable (LEADERCRON_TRIGER_SECRET, a misspelling,
// still holds the secret).
func sensitiveName(name string) bool {
	for _, marker := range []string{"SECRET", "TOKEN", "PASSW", "CREDENTIAL", "KEY"} {
		if strings.Contains(name, marker) {
			return true
		}
	}
	for _, s := range secretVarNames {
		if editDistance(name, s) <= 3 {
			return true
		}
	}
	return false
}

// editDistance is the Levenshtein distance between a and b, in bytes.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
