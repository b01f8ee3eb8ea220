package config

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"reflect"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/caarlos0/env/v11"
	"github.com/hashicorp/go-hclog"

	"github.com/leadercron/leadercron/internal/kvlayout"
)

// Lock modes accepted in LEADERCRON_LOCK.
const (
	LockConsul = "consul"
	LockNone   = "none"
)

// maxLockDelay is Consul's own cap (structs.MaxLockDelay): a larger value is
// silently cut to 60s by the server, which would make the documented
// failover arithmetic wrong, so it is refused here instead.
const maxLockDelay = 60 * time.Second

// Config is the validated configuration of one sidecar.
type Config struct {
	Service        string
	KVPrefix       string
	ID             string
	AppURL         *url.URL
	Listen         string
	Lock           string
	SessionTTL     time.Duration
	LockDelay      time.Duration
	DrainTimeout   time.Duration
	DrainInterval  time.Duration
	TriggerTimeout time.Duration
	LogLevel       hclog.Level
	LogJSON        bool
	Jobs           []Job

	// AppHealthURL, if set, gates leadership on the app's health: see
	// the README's "App health gate".
	AppHealthURL      *url.URL
	AppHealthInterval time.Duration
	AppHealthFailures int

	// TriggerSecret, if set, signs every request to the app
	// (Leadercron-Signature, v1). AdminToken, if set, lets callers that
	// are not on loopback use the admin port's mutating endpoints. Both
	// print as [redacted].
	TriggerSecret Secret
	AdminToken    Secret
}

// Keys is the fleet's Consul KV layout, under KVPrefix.
func (c Config) Keys() kvlayout.Layout { return kvlayout.New(c.KVPrefix) }

// Defaults are values that the caller discovered (for example from the ECS
// task metadata endpoint) and that apply when the variable is not set.
type Defaults struct {
	Service string // ECS task family
	ID      string // ECS task ARN, else hostname-pid
}

// globals is the raw shape of the global variables, parsed by caarlos0/env.
type globals struct {
	Service        string        `env:"LEADERCRON_SERVICE"`
	KVPrefix       string        `env:"LEADERCRON_KV_PREFIX"`
	ID             string        `env:"LEADERCRON_ID"`
	AppURL         string        `env:"LEADERCRON_APP_URL" envDefault:"http://127.0.0.1:8081"`
	Listen         string        `env:"LEADERCRON_LISTEN" envDefault:"127.0.0.1:9090"`
	Lock           string        `env:"LEADERCRON_LOCK" envDefault:"consul"`
	SessionTTL     time.Duration `env:"LEADERCRON_SESSION_TTL" envDefault:"15s"`
	LockDelay      time.Duration `env:"LEADERCRON_LOCK_DELAY" envDefault:"15s"`
	DrainTimeout   time.Duration `env:"LEADERCRON_DRAIN_TIMEOUT" envDefault:"25s"`
	DrainInterval  time.Duration `env:"LEADERCRON_DRAIN_INTERVAL" envDefault:"1s"`
	TriggerTimeout time.Duration `env:"LEADERCRON_TRIGGER_TIMEOUT" envDefault:"10m"`
	LogLevel       string        `env:"LEADERCRON_LOG_LEVEL" envDefault:"info"`
	LogFormat      string        `env:"LEADERCRON_LOG_FORMAT" envDefault:"json"`

	AppHealthURL      string        `env:"LEADERCRON_APP_HEALTH_URL"`
	AppHealthInterval time.Duration `env:"LEADERCRON_APP_HEALTH_INTERVAL" envDefault:"2s"`
	AppHealthFailures int           `env:"LEADERCRON_APP_HEALTH_FAILURES" envDefault:"3"`

	// The secrets are read by loadSecret, straight from the environment
	// map, not through these fields: they are here so that the variables
	// are known. (caarlos0/env's "file" option is not used for the _FILE
	// variables: its error would not say which rule failed, and it
	// neither trims the trailing newline nor bounds the read.)
	TriggerSecret     string `env:"LEADERCRON_TRIGGER_SECRET"`
	TriggerSecretFile string `env:"LEADERCRON_TRIGGER_SECRET_FILE"`
	AdminToken        string `env:"LEADERCRON_ADMIN_TOKEN"`
	AdminTokenFile    string `env:"LEADERCRON_ADMIN_TOKEN_FILE"`
}

// Problem is one configuration error, tied to the variable it is about.
type Problem struct {
	Var   string
	Value string
	Msg   string
}

func (p Problem) Error() string {
	if p.Value == "" {
		return fmt.Sprintf("%s: %s", p.Var, p.Msg)
	}
	return fmt.Sprintf("%s=%q: %s", p.Var, p.Value, p.Msg)
}

// Problems is every configuration error found by one Load, in a stable
// order. Its Error method prints one problem per line.
type Problems []Problem

func (ps Problems) Error() string {
	lines := make([]string, len(ps))
	for i, p := range ps {
		lines[i] = p.Error()
	}
	return strings.Join(lines, "\n")
}

var serviceRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]*$`)

// Load reads and validates the configuration from environ. On any problem it
// returns a Problems error listing all of them.
func Load(environ map[string]string, def Defaults) (Config, error) {
	if environ == nil {
		// caarlos0/env reads the process environment when given a nil map.
		environ = map[string]string{}
	}
	var ps Problems
	add := func(v, value, format string, args ...any) {
		ps = append(ps, Problem{Var: v, Value: value, Msg: fmt.Sprintf(format, args...)})
	}

	g, err := env.ParseAsWithOptions[globals](env.Options{Environment: environ})
	if err != nil {
		ps = append(ps, envProblems(err, environ)...)
	}

	cfg := Config{
		Service:        firstNonEmpty(g.Service, def.Service),
		ID:             firstNonEmpty(g.ID, def.ID),
		Listen:         g.Listen,
		Lock:           g.Lock,
		SessionTTL:     g.SessionTTL,
		LockDelay:      g.LockDelay,
		DrainTimeout:   g.DrainTimeout,
		DrainInterval:  g.DrainInterval,
		TriggerTimeout: g.TriggerTimeout,
	}

	switch {
	case cfg.Service == "":
		add("LEADERCRON_SERVICE", "", "required: not set, and no ECS task metadata to take the task family from")
	case !serviceRE.MatchString(cfg.Service):
		add("LEADERCRON_SERVICE", cfg.Service, "must be letters, digits, '.', '_' or '-'")
	}
	if strings.TrimSpace(cfg.ID) == "" {
		add("LEADERCRON_ID", g.ID, "must not be empty")
	}

	cfg.KVPrefix = strings.TrimSuffix(g.KVPrefix, "/")
	if g.KVPrefix == "" && cfg.Service != "" {
		cfg.KVPrefix = "leadercron/" + cfg.Service
	}
	if strings.HasPrefix(g.KVPrefix, "/") || strings.ContainsAny(g.KVPrefix, " \t\n") {
		add("LEADERCRON_KV_PREFIX", g.KVPrefix, "must be a relative Consul key path without spaces, such as leadercron/my-service")
	}

	if u, msg := parseAppURL(g.AppURL); msg != "" {
		add("LEADERCRON_APP_URL", g.AppURL, "%s", msg)
	} else {
		cfg.AppURL = u
	}
	if g.AppHealthURL != "" {
		if u, msg := parseAppURL(g.AppHealthURL); msg != "" {
			add("LEADERCRON_APP_HEALTH_URL", g.AppHealthURL, "%s", msg)
		} else {
			cfg.AppHealthURL = u
		}
	}
	cfg.AppHealthInterval = g.AppHealthInterval
	cfg.AppHealthFailures = g.AppHealthFailures
	if g.AppHealthFailures < 1 && environ["LEADERCRON_APP_HEALTH_FAILURES"] != "" && !hasProblem(ps, "LEADERCRON_APP_HEALTH_FAILURES") {
		add("LEADERCRON_APP_HEALTH_FAILURES", environ["LEADERCRON_APP_HEALTH_FAILURES"], "must be at least 1")
	}
	if _, port, err := net.SplitHostPort(g.Listen); err != nil {
		add("LEADERCRON_LISTEN", g.Listen, "must be host:port, such as 127.0.0.1:9090")
	} else if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
		add("LEADERCRON_LISTEN", g.Listen, "port must be a number from 0 to 65535")
	}
	if g.Lock != LockConsul && g.Lock != LockNone {
		add("LEADERCRON_LOCK", g.Lock, "must be %q or %q", LockConsul, LockNone)
	}

	positive := []struct {
		name string
		d    time.Duration
	}{
		{"LEADERCRON_SESSION_TTL", g.SessionTTL},
		{"LEADERCRON_LOCK_DELAY", g.LockDelay},
		{"LEADERCRON_DRAIN_TIMEOUT", g.DrainTimeout},
		{"LEADERCRON_DRAIN_INTERVAL", g.DrainInterval},
		{"LEADERCRON_TRIGGER_TIMEOUT", g.TriggerTimeout},
		{"LEADERCRON_APP_HEALTH_INTERVAL", g.AppHealthInterval},
	}
	for _, p := range positive {
		if p.d <= 0 && environ[p.name] != "" && !hasProblem(ps, p.name) {
			add(p.name, environ[p.name], "must be a positive duration")
		}
	}
	if g.SessionTTL > 24*time.Hour {
		add("LEADERCRON_SESSION_TTL", environ["LEADERCRON_SESSION_TTL"], "must be at most 24h (Consul's maximum)")
	}
	if g.LockDelay > maxLockDelay {
		add("LEADERCRON_LOCK_DELAY", environ["LEADERCRON_LOCK_DELAY"], "must be at most 60s (Consul caps it there)")
	}

	cfg.LogLevel = hclog.LevelFromString(g.LogLevel)
	if cfg.LogLevel == hclog.NoLevel {
		add("LEADERCRON_LOG_LEVEL", g.LogLevel, "must be trace, debug, info, warn, error or off")
	}
	switch g.LogFormat {
	case "json":
		cfg.LogJSON = true
	case "text":
	default:
		add("LEADERCRON_LOG_FORMAT", g.LogFormat, "must be json or text")
	}

	var sps Problems
	cfg.TriggerSecret, sps = loadSecret(environ, triggerSecretVar)
	ps = append(ps, sps...)
	cfg.AdminToken, sps = loadSecret(environ, adminTokenVar)
	ps = append(ps, sps...)

	known := knownGlobals()
	for _, k := range sortedKeys(environ, "LEADERCRON_") {
		if !strings.HasPrefix(k, JobPrefix) && !known[k] {
			value := environ[k]
			if sensitiveName(k) {
				value = "" // a misspelt secret variable still holds the secret
			}
			add(k, value, "unknown variable (a typo? jobs are %s<NAME>)", JobPrefix)
		}
	}

	jobs, jps := loadJobs(environ, g.TriggerTimeout)
	ps = append(ps, jps...)
	cfg.Jobs = jobs

	if len(ps) > 0 {
		return Config{}, ps
	}
	return cfg, nil
}

func parseAppURL(raw string) (*url.URL, string) {
	u, err := url.Parse(raw)
	if err != nil {
		return nil, "not a URL"
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return nil, "must start with http:// or https://"
	}
	if u.Host == "" {
		return nil, "must name a host, such as http://127.0.0.1:8080"
	}
	if u.RawQuery != "" || u.Fragment != "" || u.User != nil {
		return nil, "must not carry a query, fragment or user info"
	}
	u.Path = strings.TrimSuffix(u.Path, "/")
	return u, ""
}

// knownGlobals is the set of global variable names, read from the env tags.
func knownGlobals() map[string]bool {
	known := map[string]bool{}
	for _, k := range envKeys() {
		known[k] = true
	}
	for _, k := range appSideVariables {
		known[k] = true
	}
	return known
}

// appSideVariables are read by the app packages (examples/go/jobs, the
// NestJS module), not by the sidecar: where the app and the sidecar share
// one environment (a shell, a Nomad group's template) they must not make
// the sidecar refuse to start as misspelt names would.
var appSideVariables = []string{
	"LEADERCRON_APP_LISTEN",
	"LEADERCRON_TRIGGER_SECRET_PREVIOUS",
	"LEADERCRON_TRIGGER_SECRET_PREVIOUS_FILE",
}

// envKeys maps each field of globals to its variable name.
func envKeys() map[string]string {
	keys := map[string]string{}
	t := reflect.TypeFor[globals]()
	for i := range t.NumField() {
		f := t.Field(i)
		keys[f.Name], _, _ = strings.Cut(f.Tag.Get("env"), ",")
	}
	return keys
}

// envProblems turns caarlos0/env's errors, which name struct fields, into
// Problems that name the variable and its value.
func envProblems(err error, environ map[string]string) Problems {
	keys := envKeys()
	var errs []error
	var agg env.AggregateError
	if errors.As(err, &agg) {
		errs = agg.Errors
	} else {
		errs = []error{err}
	}
	var ps Problems
	for _, e := range errs {
		var pe env.ParseError
		if errors.As(e, &pe) {
			key := keys[pe.Name]
			msg := "invalid value"
			switch pe.Type {
			case reflect.TypeFor[time.Duration]():
				msg = "not a duration (use Go syntax such as 15s, 1m30s or 250ms)"
			case reflect.TypeFor[int]():
				msg = "not a whole number"
			}
			ps = append(ps, Problem{Var: key, Value: environ[key], Msg: msg})
			continue
		}
		ps = append(ps, Problem{Var: "environment", Msg: e.Error()})
	}
	return ps
}

func hasProblem(ps Problems, name string) bool {
	for _, p := range ps {
		if p.Var == name {
			return true
		}
	}
	return false
}

func firstNonEmpty(vs ...string) string {
	for _, v := range vs {
		if v != "" {
			return v
		}
	}
	return ""
}

// sortedKeys returns the keys of environ that start with prefix, sorted, so
// that problems and jobs come out in a stable order.
func sortedKeys(environ map[string]string, prefix string) []string {
	var ks []string
	for k := range environ {
		if strings.HasPrefix(k, prefix) {
			ks = append(ks, k)
		}
	}
	sort.Strings(ks)
	return ks
}
