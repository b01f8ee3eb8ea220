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
	l := &loader{environ: environ}
	g, err := env.ParseAsWithOptions[globals](env.Options{Environment: environ})
	if err != nil {
		l.ps = append(l.ps, envProblems(err, environ)...)
	}
	l.g = g
	l.cfg = Config{
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
	l.identity()
	l.endpoints()
	l.durations()
	l.logging()
	var sps Problems
	l.cfg.TriggerSecret, sps = loadSecret(environ, triggerSecretVar)
	l.ps = append(l.ps, sps...)
	l.cfg.AdminToken, sps = loadSecret(environ, adminTokenVar)
	l.ps = append(l.ps, sps...)
	l.unknownVariables()
	jobs, jps := loadJobs(environ, g.TriggerTimeout)
	l.ps = append(l.ps, jps...)
	l.cfg.Jobs = jobs
	if len(l.ps) > 0 {
		return Config{}, l.ps
	}
	return l.cfg, nil
}

// loader collects every problem of one Load, so that all are reported at
// once; each method checks one group of variables.
type loader struct {
	environ map[string]string
	g       globals
	cfg     Config
	ps      Problems
}

func (l *loader) add(v, value, format string, args ...any) {
	l.ps = append(l.ps, Problem{Var: v, Value: value, Msg: fmt.Sprintf(format, args...)})
}

// identity: the service, the sidecar's ID and the KV prefix.
func (l *loader) identity() {
	switch {
	case l.cfg.Service == "":
		l.add("LEADERCRON_SERVICE", "", "required: not set, and no ECS task metadata to take the task family from")
	case !serviceRE.MatchString(l.cfg.Service):
		l.add("LEADERCRON_SERVICE", l.cfg.Service, "must be letters, digits, '.', '_' or '-'")
	}
	if strings.TrimSpace(l.cfg.ID) == "" {
		l.add("LEADERCRON_ID", l.g.ID, "must not be empty")
	}

	l.cfg.KVPrefix = strings.TrimSuffix(l.g.KVPrefix, "/")
	if l.g.KVPrefix == "" && l.cfg.Service != "" {
		l.cfg.KVPrefix = "leadercron/" + l.cfg.Service
	}
	if strings.HasPrefix(l.g.KVPrefix, "/") || strings.ContainsAny(l.g.KVPrefix, " \t\n") {
		l.add("LEADERCRON_KV_PREFIX", l.g.KVPrefix, "must be a relative Consul key path without spaces, such as leadercron/my-service")
	}

}

// endpoints: the app's URLs, the admin listener and the lock mode.
func (l *loader) endpoints() {
	if u, msg := parseAppURL(l.g.AppURL); msg != "" {
		l.add("LEADERCRON_APP_URL", l.g.AppURL, "%s", msg)
	} else {
		l.cfg.AppURL = u
	}
	if l.g.AppHealthURL != "" {
		if u, msg := parseAppURL(l.g.AppHealthURL); msg != "" {
			l.add("LEADERCRON_APP_HEALTH_URL", l.g.AppHealthURL, "%s", msg)
		} else {
			l.cfg.AppHealthURL = u
		}
	}
	l.cfg.AppHealthInterval = l.g.AppHealthInterval
	l.cfg.AppHealthFailures = l.g.AppHealthFailures
	if l.g.AppHealthFailures < 1 && l.environ["LEADERCRON_APP_HEALTH_FAILURES"] != "" && !hasProblem(l.ps, "LEADERCRON_APP_HEALTH_FAILURES") {
		l.add("LEADERCRON_APP_HEALTH_FAILURES", l.environ["LEADERCRON_APP_HEALTH_FAILURES"], "must be at least 1")
	}
	if _, port, err := net.SplitHostPort(l.g.Listen); err != nil {
		l.add("LEADERCRON_LISTEN", l.g.Listen, "must be host:port, such as 127.0.0.1:9090")
	} else if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
		l.add("LEADERCRON_LISTEN", l.g.Listen, "port must be a number from 0 to 65535")
	}
	if l.g.Lock != LockConsul && l.g.Lock != LockNone {
		l.add("LEADERCRON_LOCK", l.g.Lock, "must be %q or %q", LockConsul, LockNone)
	}

}

// durations: every duration must be positive, and within Consul's caps.
func (l *loader) durations() {
	positive := []struct {
		name string
		d    time.Duration
	}{
		{"LEADERCRON_SESSION_TTL", l.g.SessionTTL},
		{"LEADERCRON_LOCK_DELAY", l.g.LockDelay},
		{"LEADERCRON_DRAIN_TIMEOUT", l.g.DrainTimeout},
		{"LEADERCRON_DRAIN_INTERVAL", l.g.DrainInterval},
		{"LEADERCRON_TRIGGER_TIMEOUT", l.g.TriggerTimeout},
		{"LEADERCRON_APP_HEALTH_INTERVAL", l.g.AppHealthInterval},
	}
	for _, p := range positive {
		if p.d <= 0 && l.environ[p.name] != "" && !hasProblem(l.ps, p.name) {
			l.add(p.name, l.environ[p.name], "must be a positive duration")
		}
	}
	if l.g.SessionTTL > 24*time.Hour {
		l.add("LEADERCRON_SESSION_TTL", l.environ["LEADERCRON_SESSION_TTL"], "must be at most 24h (Consul's maximum)")
	}
	if l.g.LockDelay > maxLockDelay {
		l.add("LEADERCRON_LOCK_DELAY", l.environ["LEADERCRON_LOCK_DELAY"], "must be at most 60s (Consul caps it there)")
	}

}

// logging: the level and the format.
func (l *loader) logging() {
	l.cfg.LogLevel = hclog.LevelFromString(l.g.LogLevel)
	if l.cfg.LogLevel == hclog.NoLevel {
		l.add("LEADERCRON_LOG_LEVEL", l.g.LogLevel, "must be trace, debug, info, warn, error or off")
	}
	switch l.g.LogFormat {
	case "json":
		l.cfg.LogJSON = true
	case "text":
	default:
		l.add("LEADERCRON_LOG_FORMAT", l.g.LogFormat, "must be json or text")
	}

}

// unknownVariables: a LEADERCRON_ variable the sidecar does not know is a
// problem (a typo such as LEADERCRON_SESION_TTL), never ignored.
func (l *loader) unknownVariables() {
	known := knownGlobals()
	for _, k := range sortedKeys(l.environ, "LEADERCRON_") {
		if !strings.HasPrefix(k, JobPrefix) && !known[k] {
			value := l.environ[k]
			if sensitiveName(k) {
				value = "" // a misspelt secret variable still holds the secret
			}
			l.add(k, value, "unknown variable (a typo? jobs are %s<NAME>)", JobPrefix)
		}
	}

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
