package config_test

import (
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/hashicorp/go-hclog"

	"github.com/leadercron/leadercron/internal/config"
)

// The secrets of these tests: 32 and 40 bytes, and one byte short.
const (
	secret32 = "0123456789abcdef0123456789abcdef"
	token40  = "admin-token-0123456789-0123456789-abcdef"
	short31  = "0123456789abcdef0123456789abcde"
)

// writeFile writes content to a new file in a test directory.
func writeFile(t *testing.T, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// noSecretIn fails the test if text shows any of secrets, raw, in hex or
// as decimal bytes.
func noSecretIn(t *testing.T, what, text string, secrets ...string) {
	t.Helper()
	for _, s := range secrets {
		if s == "" {
			continue
		}
		decimal := strings.Trim(fmt.Sprint([]byte(s)), "[]") // as %d or %v of a []byte shows it
		if strings.Contains(text, s) || strings.Contains(text, hex.EncodeToString([]byte(s))) || strings.Contains(text, decimal) {
			t.Errorf("%s shows the secret %q:\n%s", what, s, text)
		}
	}
}

func TestSecrets(t *testing.T) {
	t.Parallel()
	cfg := mustLoad(t, nil, ecs)
	if cfg.TriggerSecret.IsSet() || cfg.AdminToken.IsSet() {
		t.Fatalf("secrets set by default: trigger %v, admin %v", cfg.TriggerSecret.IsSet(), cfg.AdminToken.IsSet())
	}
	cfg = mustLoad(t, map[string]string{"LEADERCRON_TRIGGER_SECRET": secret32, "LEADERCRON_ADMIN_TOKEN": token40}, ecs)
	if got := string(cfg.TriggerSecret.Bytes()); got != secret32 {
		t.Errorf("trigger secret %q, want %q", got, secret32)
	}
	if got := string(cfg.AdminToken.Bytes()); got != token40 {
		t.Errorf("admin token %q, want %q", got, token40)
	}
	// Bytes is a copy: the caller cannot change the Config's secret.
	b := cfg.TriggerSecret.Bytes()
	b[0] = 'X'
	if got := string(cfg.TriggerSecret.Bytes()); got != secret32 {
		t.Errorf("changing what Bytes returned changed the secret to %q", got)
	}
}

func TestSecretFile(t *testing.T) {
	t.Parallel()
	tests := []struct{ name, content, want string }{
		{"no trailing newline", secret32, secret32},
		{"one trailing newline trimmed", secret32 + "\n", secret32},
		{"one trailing CRLF trimmed", secret32 + "\r\n", secret32},
		{"only one newline trimmed", secret32 + "\n\n", secret32 + "\n"},
		{"leading and inner spaces kept", " " + secret32 + " x", " " + secret32 + " x"},
		{"a trailing CR alone kept", secret32 + "\r", secret32 + "\r"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			for _, name := range []string{"LEADERCRON_TRIGGER_SECRET", "LEADERCRON_ADMIN_TOKEN"} {
				cfg := mustLoad(t, map[string]string{name + "_FILE": writeFile(t, tc.content)}, ecs)
				got := cfg.TriggerSecret
				if name == "LEADERCRON_ADMIN_TOKEN" {
					got = cfg.AdminToken
				}
				if string(got.Bytes()) != tc.want {
					t.Errorf("%s_FILE holding %q: secret %q, want %q", name, tc.content, got.Bytes(), tc.want)
				}
			}
		})
	}
}

func TestSecretProblems(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	missing := filepath.Join(dir, "missing")
	shortFile := writeFile(t, short31+"\n")
	big := writeFile(t, strings.Repeat(secret32, 200))
	for _, v := range []string{"LEADERCRON_TRIGGER_SECRET", "LEADERCRON_ADMIN_TOKEN"} {
		f := v + "_FILE"
		tests := []struct {
			name    string
			environ map[string]string
			want    wantProblem
		}{
			{"too short", map[string]string{v: short31},
				wantProblem{v, "", "must be at least 32 bytes, it has 31"}},
			{"empty", map[string]string{v: ""},
				wantProblem{v, "", "is empty; it must be at least 32 bytes"}},
			{"both set", map[string]string{v: secret32, f: writeFile(t, secret32)},
				wantProblem{v, "", "set together with " + f + ": set only one"}},
			{"both set, one empty", map[string]string{v: "", f: writeFile(t, secret32)},
				wantProblem{v, "", "set together with " + f}},
			{"file too short after the trim", map[string]string{f: shortFile},
				wantProblem{f, shortFile, "the file's content, less one trailing newline, must be at least 32 bytes, it has 31"}},
			{"file unreadable", map[string]string{f: missing},
				wantProblem{f, missing, "cannot read the file: no such file or directory"}},
			{"file is a directory", map[string]string{f: dir},
				wantProblem{f, dir, "is a directory"}},
			{"file too large", map[string]string{f: big},
				wantProblem{f, big, "larger than 4096 bytes"}},
			{"file path empty", map[string]string{f: ""},
				wantProblem{f, "", "must be the path of a file"}},
		}
		for _, tc := range tests {
			t.Run(v+"/"+tc.name, func(t *testing.T) {
				t.Parallel()
				ps := loadProblems(t, tc.environ, ecs)
				checkProblems(t, ps, tc.want)
				noSecretIn(t, "the error", ps.Error(), secret32, short31)
			})
		}
	}
}

func TestSecretsKnown(t *testing.T) {
	t.Parallel()
	known := config.KnownVariables()
	for _, v := range []string{"LEADERCRON_TRIGGER_SECRET", "LEADERCRON_TRIGGER_SECRET_FILE",
		"LEADERCRON_ADMIN_TOKEN", "LEADERCRON_ADMIN_TOKEN_FILE"} {
		if !slices.Contains(known, v) || !config.IsKnown(v) {
			t.Errorf("%s is not a known variable (KnownVariables: %v)", v, known)
		}
	}
}

// TestSecretNeverShown loads a configuration with both secrets and checks
// every way it could be printed or logged, then misspelt secret variables,
// whose values are secrets too.
func TestSecretNeverShown(t *testing.T) {
	t.Parallel()
	cfg := mustLoad(t, map[string]string{"LEADERCRON_TRIGGER_SECRET": secret32, "LEADERCRON_ADMIN_TOKEN_FILE": writeFile(t, token40)}, ecs)
	for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%q", "%x", "%X", "%d"} {
		noSecretIn(t, "fmt "+verb+" of Config", fmt.Sprintf(verb, cfg), secret32, token40)
		noSecretIn(t, "fmt "+verb+" of the secret", fmt.Sprintf(verb, cfg.TriggerSecret), secret32)
	}
	if got := fmt.Sprint(cfg.TriggerSecret, config.Secret{}); got != "[redacted] none" {
		t.Errorf("Secret prints as %q, want \"[redacted] none\"", got)
	}
	b, err := json.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	noSecretIn(t, "JSON of Config", string(b), secret32, token40)
	var logs strings.Builder
	for _, jsonFormat := range []bool{true, false} {
		log := hclog.New(&hclog.LoggerOptions{Output: &logs, JSONFormat: jsonFormat})
		log.Info("config", "config", cfg, "secret", cfg.TriggerSecret, "token", cfg.AdminToken)
	}
	noSecretIn(t, "logs", logs.String(), secret32, token40)

	// A misspelt secret variable is an unknown variable: named, its value
	// not shown. Other unknown variables still show theirs.
	for _, name := range []string{"LEADERCRON_TRIGER_SECRET", "LEADERCRON_TRIGGER_SECRT_FILE", "LEADERCRON_ADMIN_TOKN",
		"LEADERCRON_ADMN_TOKN", "LEADERCRON_APP_SECRET", "LEADERCRON_API_KEY"} {
		ps := loadProblems(t, map[string]string{name: secret32}, ecs)
		checkProblems(t, ps, wantProblem{name, "", "unknown variable"})
		noSecretIn(t, "the error", ps.Error(), secret32)
	}
}

// The variables only the app packages read are known, so that an
// environment shared by app and sidecar does not stop the sidecar.
func TestAppSideVariablesKnown(t *testing.T) {
	for _, name := range []string{"LEADERCRON_APP_LISTEN", "LEADERCRON_TRIGGER_SECRET_PREVIOUS", "LEADERCRON_TRIGGER_SECRET_PREVIOUS_FILE"} {
		if !config.IsKnown(name) {
			t.Errorf("%s is not known: a shared environment would stop the sidecar", name)
		}
	}
}
