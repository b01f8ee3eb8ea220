package main

// Tests of the deployment artefacts against the code: the release build
// (scripts/build.sh, which the Dockerfile runs), the Dockerfile, and
// ecs-task-definition.json. No Docker engine or AWS account is needed; what
// those would check at deploy time is checked here from the files.

import (
	"bufio"
	"context"
	"debug/buildinfo"
	"debug/elf"
	"encoding/json"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/leadercron/leadercron/internal/cli"
	"github.com/leadercron/leadercron/internal/config"
	"github.com/leadercron/leadercron/internal/testkit"
)

const (
	sidecarName = "leadercron" // the sidecar's container name in the task definition
	testVersion = "v0.0.0-deploytest"
	// fargateMaxStopTimeout is Fargate's upper bound for stopTimeout.
	fargateMaxStopTimeout = 120
)

// buildRelease runs scripts/build.sh, exactly as the Dockerfile's builder
// stage does, for goarch, and returns the binary's path.
func buildRelease(t *testing.T, goarch string) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), "leadercron-"+goarch)
	cmd := exec.Command("./scripts/build.sh", "-o", out)
	cmd.Env = append(os.Environ(), "GOOS=linux", "GOARCH="+goarch, "VERSION="+testVersion)
	start := time.Now()
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("scripts/build.sh for linux/%s: %v\n%s", goarch, err, b)
	}
	fi, err := os.Stat(out)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("linux/%s release binary: %d bytes (%.1f MiB), built in %s", goarch, fi.Size(), float64(fi.Size())/(1<<20), time.Since(start).Round(100*time.Millisecond))
	return out
}

// checkStatic fails unless path is a static, stripped linux ELF for machine,
// built with the flags scripts/build.sh promises.
func checkStatic(t *testing.T, path string, machine elf.Machine) {
	t.Helper()
	f, err := elf.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if f.Machine != machine {
		t.Errorf("ELF machine %s, want %s", f.Machine, machine)
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP || p.Type == elf.PT_DYNAMIC {
			t.Errorf("binary has a %s program header: it is dynamically linked and would not run on distroless/static", p.Type)
		}
	}
	if f.Section(".dynamic") != nil || f.Section(".interp") != nil {
		t.Errorf("binary has a .dynamic or .interp section: it is not static")
	}
	if f.Section(".symtab") != nil {
		t.Errorf("binary has a symbol table: -ldflags -s was not applied")
	}

	bi, err := buildinfo.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	settings := map[string]string{}
	for _, s := range bi.Settings {
		settings[s.Key] = s.Value
	}
	if settings["CGO_ENABLED"] != "0" {
		t.Errorf("build setting CGO_ENABLED=%q, want 0", settings["CGO_ENABLED"])
	}
	if settings["-trimpath"] != "true" {
		t.Errorf("build setting -trimpath=%q, want true", settings["-trimpath"])
	}
	// -trimpath keeps -ldflags out of the build info, so check their
	// effects: -s above, -w here, and -X by the version subcommand.
	for _, sec := range f.Sections {
		if strings.HasPrefix(sec.Name, ".debug_") || strings.HasPrefix(sec.Name, ".zdebug_") {
			t.Errorf("binary has DWARF section %s: -ldflags -w was not applied", sec.Name)
		}
	}
}

func TestReleaseBuild(t *testing.T) {
	// arm64 is cross-compiled only (Graviton; the Dockerfile builds both
	// from $BUILDPLATFORM); the native binary is also run below.
	t.Run("arm64", func(t *testing.T) {
		checkStatic(t, buildRelease(t, "arm64"), elf.EM_AARCH64)
	})

	native := map[string]elf.Machine{"amd64": elf.EM_X86_64, "arm64": elf.EM_AARCH64}
	if _, ok := native[runtime.GOARCH]; !ok {
		t.Fatalf("no ELF machine known for GOARCH=%s", runtime.GOARCH)
	}
	bin := buildRelease(t, runtime.GOARCH)
	checkStatic(t, bin, native[runtime.GOARCH])

	t.Run("version", func(t *testing.T) {
		out, code := run(t, bin, nil, "version")
		if code != 0 || strings.TrimSpace(out) != "leadercron "+testVersion {
			t.Errorf("version: exit %d, output %q; want exit 0 and %q", code, out, "leadercron "+testVersion)
		}
	})

	t.Run("validate the task definition's environment", func(t *testing.T) {
		td := readTaskDefinition(t)
		env := sidecarEnv(t, td)
		env["LEADERCRON_ID"] = "deploytest" // ECS would supply the task ARN
		out, code := run(t, bin, env, "validate")
		if code != 0 {
			t.Fatalf("validate exited %d:\n%s", code, out)
		}
		if want := "shutdown budget " + cli.ShutdownBudget(mustLoad(t, td)).String(); !strings.Contains(out, want) {
			t.Errorf("validate output does not state %q:\n%s", want, out)
		}
		for _, j := range mustLoad(t, td).Jobs {
			if !strings.Contains(out, "job "+j.Name+" ") {
				t.Errorf("validate output does not list job %s:\n%s", j.Name, out)
			}
		}
	})

	t.Run("bad configuration exits 2", func(t *testing.T) {
		out, code := run(t, bin, map[string]string{"LEADERCRON_SERVICE": "x", "LEADERCRON_SESION_TTL": "5s"}, "validate")
		if code != 2 || !strings.Contains(out, "LEADERCRON_SESION_TTL") {
			t.Errorf("validate with a misspelt variable: exit %d, output %q; want exit 2 naming the variable", code, out)
		}
	})

	t.Run("healthcheck", func(t *testing.T) {
		ports, err := testkit.FreePorts(2)
		if err != nil {
			t.Fatal(err)
		}
		listen := "127.0.0.1:" + strconv.Itoa(ports[0])
		env := map[string]string{
			"LEADERCRON_LOCK":       config.LockNone,
			"LEADERCRON_SERVICE":    "deploytest",
			"LEADERCRON_ID":         "deploytest",
			"LEADERCRON_LISTEN":     listen,
			"LEADERCRON_APP_URL":    "http://127.0.0.1:" + strconv.Itoa(ports[1]), // nothing listens: drain counts as done
			"LEADERCRON_LOG_FORMAT": "text",
			// A job that does not fall due during the test: the sidecar
			// leads (standalone) and never calls the app, which is not
			// running.
			"LEADERCRON_JOB_NEVER": "0 0 1 1 *",
		}
		if out, code := run(t, bin, env, "healthcheck"); code != 1 {
			t.Fatalf("healthcheck with no sidecar running: exit %d, want 1\n%s", code, out)
		}

		cmd := exec.Command(bin)
		cmd.Env = envList(env)
		sidecar := startProcess(t, cmd)
		sidecar.waitHealthy(t, bin, env)
		sidecar.stop(t)
		if out, code := run(t, bin, env, "healthcheck"); code != 1 {
			t.Errorf("healthcheck after the sidecar exited: exit %d, want 1\n%s", code, out)
		}
	})
}

// run runs bin with exactly env (nothing inherited) and returns its
// combined output and exit code.
func run(t *testing.T, bin string, env map[string]string, args ...string) (string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = envList(env)
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return string(out), 0
	case errors.As(err, &ee) && ctx.Err() == nil:
		return string(out), ee.ExitCode()
	default:
		t.Fatalf("run %s %v: %v\n%s", bin, args, err, out)
		return "", -1
	}
}

func envList(env map[string]string) []string {
	l := []string{}
	for k, v := range env {
		l = append(l, k+"="+v)
	}
	return l
}

// dockerfile is the Dockerfile as a list of instructions, with line
// continuations joined and comments dropped.
type instruction struct {
	Cmd  string // upper case: FROM, RUN, ...
	Args string
}

func readDockerfile(t *testing.T) []instruction {
	t.Helper()
	f, err := os.Open("Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var ins []instruction
	var cur strings.Builder
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if strings.HasPrefix(line, "#") || (line == "" && cur.Len() == 0) {
			continue
		}
		if rest, ok := strings.CutSuffix(line, "\\"); ok {
			cur.WriteString(rest + " ")
			continue
		}
		cur.WriteString(line)
		cmd, args, _ := strings.Cut(strings.TrimSpace(cur.String()), " ")
		ins = append(ins, instruction{Cmd: strings.ToUpper(cmd), Args: strings.TrimSpace(args)})
		cur.Reset()
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return ins
}

// execForm parses a JSON array argument (exec form); ok is false for the
// shell form.
func execForm(args string) ([]string, bool) {
	var v []string
	if err := json.Unmarshal([]byte(args), &v); err != nil || len(v) == 0 {
		return nil, false
	}
	return v, true
}

// imageEntrypoint checks the Dockerfile and returns the ENTRYPOINT of its
// final stage.
func imageEntrypoint(t *testing.T) []string {
	t.Helper()
	ins := readDockerfile(t)
	last := -1
	for i, in := range ins {
		if in.Cmd == "FROM" {
			last = i
		}
	}
	if last < 0 {
		t.Fatal("Dockerfile has no FROM")
	}
	base := strings.Fields(ins[last].Args)[0]
	if name, _, _ := strings.Cut(base, "@"); name != "gcr.io/distroless/static-debian12:nonroot" {
		t.Errorf("final base image %q, want gcr.io/distroless/static-debian12:nonroot (optionally @sha256:...)", base)
	}

	buildCalls := 0
	for _, in := range ins[:last] {
		if in.Cmd == "RUN" && strings.Contains(in.Args, "./scripts/build.sh") {
			buildCalls++
		}
		if strings.Contains(in.Args, "go build") {
			t.Errorf("Dockerfile runs go build itself (%s %s): build flags belong in scripts/build.sh only", in.Cmd, in.Args)
		}
	}
	if buildCalls != 1 {
		t.Errorf("builder stage runs ./scripts/build.sh %d times, want once", buildCalls)
	}

	var entrypoint, health []string
	var user string
	for _, in := range ins[last+1:] {
		switch in.Cmd {
		case "ENTRYPOINT":
			v, ok := execForm(in.Args)
			if !ok {
				t.Errorf("ENTRYPOINT %s is not exec form (a JSON array): the image has no shell", in.Args)
			}
			entrypoint = v
		case "CMD":
			if _, ok := execForm(in.Args); !ok {
				t.Errorf("CMD %s is not exec form", in.Args)
			}
		case "USER":
			user = in.Args
		case "HEALTHCHECK":
			_, cmd, ok := strings.Cut(in.Args, "CMD ")
			v, isExec := execForm(strings.TrimSpace(cmd))
			if !ok || !isExec {
				t.Errorf("HEALTHCHECK %s: want CMD in exec form", in.Args)
			}
			health = v
		}
	}
	if len(entrypoint) != 1 || !strings.HasPrefix(entrypoint[0], "/") {
		t.Fatalf("final stage ENTRYPOINT %q, want the binary's absolute path alone", entrypoint)
	}
	if !slices.Equal(health, []string{entrypoint[0], "healthcheck"}) {
		t.Errorf("HEALTHCHECK CMD %q, want [%q \"healthcheck\"]", health, entrypoint[0])
	}
	if user != "65532:65532" && user != "nonroot" && user != "nonroot:nonroot" {
		t.Errorf("final stage USER %q, want distroless's nonroot (65532:65532)", user)
	}
	return entrypoint
}

func TestDockerfile(t *testing.T) {
	imageEntrypoint(t)

	t.Run("pinned by digest", func(t *testing.T) {
		b, err := os.ReadFile("Dockerfile")
		if err != nil {
			t.Fatal(err)
		}
		pinned := regexp.MustCompile(`^[^@\s]+:[^@\s]+@sha256:[0-9a-f]{64}$`)
		first, _, _ := strings.Cut(string(b), "\n")
		if syntax, ok := strings.CutPrefix(first, "# syntax="); !ok || !pinned.MatchString(syntax) {
			t.Errorf("Dockerfile's first line %q: want # syntax=docker/dockerfile:<version>@sha256:<digest>", first)
		}
		gomod, err := os.ReadFile("go.mod")
		if err != nil {
			t.Fatal(err)
		}
		goVersion := mustMatch(t, "go.mod", string(gomod), `(?m)^go (\S+)$`)[1]
		stages := map[string]bool{"scratch": true}
		golang := 0
		for _, in := range readDockerfile(t) {
			if in.Cmd != "FROM" {
				continue
			}
			f := strings.Fields(in.Args)
			for len(f) > 0 && strings.HasPrefix(f[0], "--") {
				f = f[1:]
			}
			if len(f) == 0 {
				t.Fatalf("FROM %s names no image", in.Args)
			}
			image := f[0]
			if len(f) == 3 && strings.EqualFold(f[1], "AS") {
				stages[f[2]] = true // later stages may build FROM it
			}
			if stages[image] && image != f[len(f)-1] {
				continue
			}
			if !pinned.MatchString(image) {
				t.Errorf("FROM %s: want <image>:<tag>@sha256:<digest>", image)
			}
			if strings.HasPrefix(image, "golang:") {
				golang++
				if want := "golang:" + goVersion + "-"; !strings.HasPrefix(image, want) {
					t.Errorf("FROM %s: the builder's Go is not go.mod's go %s (scripts/build.sh runs with GOTOOLCHAIN=local)", image, goVersion)
				}
			}
		}
		if golang != 1 {
			t.Errorf("%d golang builder stages, want 1", golang)
		}
	})
}

// taskDefinition is the part of an ECS task definition the tests read.
type taskDefinition struct {
	Family                  string      `json:"family"`
	RequiresCompatibilities []string    `json:"requiresCompatibilities"`
	NetworkMode             string      `json:"networkMode"`
	ContainerDefinitions    []container `json:"containerDefinitions"`
}

type container struct {
	Name                   string                        `json:"name"`
	Image                  string                        `json:"image"`
	Essential              *bool                         `json:"essential"`
	User                   string                        `json:"user"`
	ReadonlyRootFilesystem bool                          `json:"readonlyRootFilesystem"`
	PortMappings           []struct{ ContainerPort int } `json:"portMappings"`
	Environment            []nameValue                   `json:"environment"`
	Secrets                []struct {
		Name      string `json:"name"`
		ValueFrom string `json:"valueFrom"`
	} `json:"secrets"`
	DependsOn []struct {
		ContainerName string `json:"containerName"`
		Condition     string `json:"condition"`
	} `json:"dependsOn"`
	HealthCheck *struct {
		Command []string `json:"command"`
	} `json:"healthCheck"`
	StopTimeout      int `json:"stopTimeout"`
	LogConfiguration *struct {
		LogDriver string            `json:"logDriver"`
		Options   map[string]string `json:"options"`
	} `json:"logConfiguration"`
	LinuxParameters *struct {
		Capabilities struct {
			Drop []string `json:"drop"`
		} `json:"capabilities"`
	} `json:"linuxParameters"`
}

type nameValue struct {
	Name  string `json:"name"`
	Value string `json:"value"`
}

func readTaskDefinition(t *testing.T) taskDefinition {
	t.Helper()
	b, err := os.ReadFile("ecs-task-definition.json")
	if err != nil {
		t.Fatal(err)
	}
	var td taskDefinition
	if err := json.Unmarshal(b, &td); err != nil {
		t.Fatalf("ecs-task-definition.json: %v", err)
	}
	return td
}

func (td taskDefinition) container(t *testing.T, name string) container {
	t.Helper()
	for _, c := range td.ContainerDefinitions {
		if c.Name == name {
			return c
		}
	}
	t.Fatalf("ecs-task-definition.json has no container %q", name)
	return container{}
}

// sidecarEnv is the sidecar container's environment as ECS would set it,
// with each secret given a placeholder value.
func sidecarEnv(t *testing.T, td taskDefinition) map[string]string {
	t.Helper()
	env := map[string]string{}
	c := td.container(t, sidecarName)
	for _, e := range c.Environment {
		if _, dup := env[e.Name]; dup {
			t.Errorf("sidecar environment sets %s twice", e.Name)
		}
		env[e.Name] = e.Value
	}
	for _, s := range c.Secrets {
		if _, dup := env[s.Name]; dup {
			t.Errorf("sidecar sets %s both in environment and secrets", s.Name)
		}
		env[s.Name] = strings.Repeat("s", 64) // a stand-in as long as a real secret
	}
	return env
}

// mustLoad loads the sidecar's configuration as the binary would on ECS,
// with the task family and a task ARN as the metadata defaults.
func mustLoad(t *testing.T, td taskDefinition) config.Config {
	t.Helper()
	cfg, err := config.Load(sidecarEnv(t, td), config.Defaults{
		Service: td.Family,
		ID:      "arn:aws:ecs:eu-west-1:111122223333:task/prod/0123456789abcdef0123456789abcdef",
	})
	if err != nil {
		t.Fatalf("the sidecar's environment in ecs-task-definition.json does not load:\n%v", err)
	}
	return cfg
}

func TestECSTaskDefinition(t *testing.T) {
	td := readTaskDefinition(t)
	if !slices.Contains(td.RequiresCompatibilities, "FARGATE") || td.NetworkMode != "awsvpc" {
		t.Errorf("requiresCompatibilities %v, networkMode %q: want FARGATE and awsvpc (the shared localhost)", td.RequiresCompatibilities, td.NetworkMode)
	}
	sc := td.container(t, sidecarName)
	env := sidecarEnv(t, td)

	t.Run("every LEADERCRON_ variable is known", func(t *testing.T) {
		for name := range env {
			if strings.HasPrefix(name, "LEADERCRON_") && !config.IsKnown(name) {
				t.Errorf("%s is not a variable the sidecar reads (known: %v, and %s<NAME>)", name, config.KnownVariables(), config.JobPrefix)
			}
		}
	})

	cfg := mustLoad(t, td)
	if cfg.Lock != config.LockConsul {
		t.Errorf("LEADERCRON_LOCK=%s: a fleet needs the consul lock", cfg.Lock)
	}
	for _, j := range cfg.Jobs {
		if j.Timeout >= cfg.DrainTimeout {
			t.Errorf("job %s: timeout %s is not below LEADERCRON_DRAIN_TIMEOUT %s: a run the drain cannot wait for is cut off by a deploy", j.Name, j.Timeout, cfg.DrainTimeout)
		}
	}
	if len(cfg.Jobs) == 0 {
		t.Errorf("the task definition configures no jobs")
	}

	t.Run("stopTimeout covers the drain", func(t *testing.T) {
		stop := time.Duration(sc.StopTimeout) * time.Second
		if sc.StopTimeout == 0 {
			stop = 30 * time.Second // ECS's default
		}
		if budget := cli.ShutdownBudget(cfg); stop <= budget {
			t.Errorf("sidecar stopTimeout %s <= the shutdown budget %s (LEADERCRON_DRAIN_TIMEOUT %s + release, destroy, history flush, admin shutdown): ECS would SIGKILL a draining leader", stop, budget, cfg.DrainTimeout)
		}
		if sc.StopTimeout > fargateMaxStopTimeout {
			t.Errorf("sidecar stopTimeout %d exceeds Fargate's maximum of %d", sc.StopTimeout, fargateMaxStopTimeout)
		}
		t.Logf("drain timeout %s, sidecar stopTimeout %s: %s of margin", cfg.DrainTimeout, stop, stop-cfg.DrainTimeout)
	})

	t.Run("sidecar stops before the app", func(t *testing.T) {
		found := false
		for _, d := range sc.DependsOn {
			if d.Condition == "HEALTHY" {
				app := td.container(t, d.ContainerName)
				found = true
				if app.HealthCheck == nil {
					t.Errorf("the sidecar waits for %s to be HEALTHY, but %s has no healthCheck", app.Name, app.Name)
				}
			}
		}
		if !found {
			t.Errorf("sidecar dependsOn %+v: want the app with condition HEALTHY (ECS then stops the sidecar first)", sc.DependsOn)
		}
	})

	t.Run("health checks", func(t *testing.T) {
		entrypoint := imageEntrypoint(t)
		want := []string{"CMD", entrypoint[0], "healthcheck"}
		if sc.HealthCheck == nil || !slices.Equal(sc.HealthCheck.Command, want) {
			t.Errorf("sidecar healthCheck %+v, want command %q (the image has no shell)", sc.HealthCheck, want)
		}
		for _, c := range td.ContainerDefinitions {
			if c.HealthCheck != nil && (len(c.HealthCheck.Command) < 2 || c.HealthCheck.Command[0] != "CMD") {
				t.Errorf("container %s: healthCheck %q is not CMD form", c.Name, c.HealthCheck.Command)
			}
		}
	})

	t.Run("consul token from secrets manager", func(t *testing.T) {
		for _, e := range sc.Environment {
			if e.Name == "CONSUL_HTTP_TOKEN" {
				t.Errorf("CONSUL_HTTP_TOKEN is in plain environment")
			}
		}
		ok := false
		for _, s := range sc.Secrets {
			if s.Name == "CONSUL_HTTP_TOKEN" {
				ok = strings.HasPrefix(s.ValueFrom, "arn:aws:secretsmanager:")
			}
		}
		if !ok {
			t.Errorf("CONSUL_HTTP_TOKEN is not a secret from Secrets Manager: %+v", sc.Secrets)
		}
	})

	t.Run("signed triggers on a private port", func(t *testing.T) {
		cfg := mustLoad(t, td)
		if !cfg.TriggerSecret.IsSet() || !net.ParseIP(cfg.AppURL.Hostname()).IsLoopback() {
			t.Errorf("sidecar: trigger secret set %v, LEADERCRON_APP_URL %s: want a secret and a loopback URL", cfg.TriggerSecret.IsSet(), cfg.AppURL)
		}
		arn := func(c container) string {
			for _, s := range c.Secrets {
				if s.Name == "LEADERCRON_TRIGGER_SECRET" && strings.HasPrefix(s.ValueFrom, "arn:aws:secretsmanager:") {
					return s.ValueFrom
				}
			}
			return ""
		}
		app := td.container(t, sc.DependsOn[0].ContainerName)
		if a, b := arn(sc), arn(app); a == "" || a != b {
			t.Errorf("LEADERCRON_TRIGGER_SECRET from Secrets Manager: sidecar %q, app %q; want the same secret in both", a, b)
		}
		listen := ""
		for _, e := range app.Environment {
			if e.Name == "LEADERCRON_APP_LISTEN" {
				listen = e.Value
			}
		}
		if host, port, _ := net.SplitHostPort(listen); !net.ParseIP(host).IsLoopback() || port != cfg.AppURL.Port() {
			t.Errorf("app LEADERCRON_APP_LISTEN=%q: want a loopback address on the port of LEADERCRON_APP_URL (%s)", listen, cfg.AppURL)
		}
		for _, pm := range app.PortMappings {
			if strconv.Itoa(pm.ContainerPort) == cfg.AppURL.Port() {
				t.Errorf("the app's trigger port %d is mapped: the contract must not be reachable from outside the task", pm.ContainerPort)
			}
		}
	})

	t.Run("logs", func(t *testing.T) {
		for _, c := range td.ContainerDefinitions {
			lc := c.LogConfiguration
			if lc == nil || lc.LogDriver != "awslogs" {
				t.Errorf("container %s: want the awslogs driver", c.Name)
				continue
			}
			if m := lc.Options["mode"]; m != "blocking" && m != "non-blocking" {
				t.Errorf("container %s: awslogs mode %q: set it explicitly (the account default changed in 2025)", c.Name, m)
			}
			if lc.Options["awslogs-stream-prefix"] == "" {
				t.Errorf("container %s: awslogs-stream-prefix is required on Fargate", c.Name)
			}
		}
	})

	t.Run("hardening", func(t *testing.T) {
		if !sc.ReadonlyRootFilesystem {
			t.Errorf("sidecar readonlyRootFilesystem is false")
		}
		uid, _, _ := strings.Cut(sc.User, ":")
		if n, err := strconv.Atoi(uid); err != nil || n <= 0 {
			t.Errorf("sidecar user %q, want a numeric non-root uid such as 65532:65532", sc.User)
		}
		if sc.LinuxParameters == nil || !slices.Contains(sc.LinuxParameters.Capabilities.Drop, "ALL") {
			t.Errorf("sidecar does not drop all capabilities")
		}
	})

	t.Run("localhost wiring", func(t *testing.T) {
		if host, _, _ := net.SplitHostPort(cfg.Listen); !net.ParseIP(host).IsLoopback() {
			t.Errorf("LEADERCRON_LISTEN=%s: the admin endpoints (POST /handover) should stay on loopback", cfg.Listen)
		}
		if len(sc.PortMappings) > 0 {
			t.Errorf("sidecar has portMappings %v: nothing outside the task needs its admin port", sc.PortMappings)
		}
		// The app's trigger port is loopback-only and not mapped: see
		// "signed triggers on a private port".
		if !net.ParseIP(cfg.AppURL.Hostname()).IsLoopback() {
			t.Errorf("LEADERCRON_APP_URL=%s: the app is in the same task, reach it on 127.0.0.1", cfg.AppURL)
		}
	})
}

// The Kubernetes and Nomad manifests are read with regular expressions:
// a YAML or HCL library would be a new module dependency for two example
// files. The expressions match the layout of the shipped files; if an edit
// changes the layout, the test fails loudly rather than passing vacuously.

func mustMatch(t *testing.T, file, text, expr string) []string {
	t.Helper()
	m := regexp.MustCompile(expr).FindStringSubmatch(text)
	if m == nil {
		t.Fatalf("%s: no match for %s", file, expr)
	}
	return m
}

// checkManifestEnv checks that every LEADERCRON_ variable in a manifest is
// known and that together they load; it returns the loaded config.
func checkManifestEnv(t *testing.T, file string, env map[string]string) config.Config {
	t.Helper()
	if len(env) < 3 {
		t.Fatalf("%s: found only %d LEADERCRON_ variables: %v", file, len(env), env)
	}
	for name := range env {
		if !config.IsKnown(name) {
			t.Errorf("%s: %s is not a variable the sidecar reads", file, name)
		}
	}
	// A *_FILE variable names a file the platform mounts from its secret
	// store; stand in a file of the right size for it.
	for name, path := range env {
		if strings.HasSuffix(name, "_FILE") {
			stand := filepath.Join(t.TempDir(), filepath.Base(path))
			if err := os.WriteFile(stand, []byte(strings.Repeat("0", 64)+"\n"), 0o600); err != nil {
				t.Fatal(err)
			}
			env[name] = stand
		}
	}
	cfg, err := config.Load(env, config.Defaults{ID: "placeholder"})
	if err != nil {
		t.Fatalf("%s: the sidecar's environment does not load:\n%v", file, err)
	}
	if !cfg.TriggerSecret.IsSet() {
		t.Errorf("%s: no LEADERCRON_TRIGGER_SECRET(_FILE): the app would take unsigned triggers", file)
	}
	if host := cfg.AppURL.Hostname(); !net.ParseIP(host).IsLoopback() {
		t.Errorf("%s: LEADERCRON_APP_URL=%s: the job contract belongs on a loopback-only listener", file, cfg.AppURL)
	}
	if cfg.Lock != config.LockConsul {
		t.Errorf("%s: LEADERCRON_LOCK=%s, a fleet needs consul", file, cfg.Lock)
	}
	if host, _, _ := net.SplitHostPort(cfg.Listen); !net.ParseIP(host).IsLoopback() {
		t.Errorf("%s: LEADERCRON_LISTEN=%s should stay on loopback", file, cfg.Listen)
	}
	for _, j := range cfg.Jobs {
		if j.Timeout >= cfg.DrainTimeout {
			t.Errorf("%s: job %s: timeout %s is not below LEADERCRON_DRAIN_TIMEOUT %s: a run the drain cannot wait for is cut off by a deploy", file, j.Name, j.Timeout, cfg.DrainTimeout)
		}
	}
	return cfg
}

func TestKubernetesManifest(t *testing.T) {
	const file = "examples/kubernetes/deployment.yaml"
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	text := string(b)

	env := map[string]string{}
	for _, m := range regexp.MustCompile(`(?m)^\s*- name: (LEADERCRON_\w+)(?:[^\n]*)\n\s*(value|valueFrom): (.*)$`).FindAllStringSubmatch(text, -1) {
		v := strings.TrimSpace(m[3])
		switch {
		case m[2] == "valueFrom":
			v = "from-" + m[1]
		case strings.HasPrefix(v, `"`):
			v, _, _ = strings.Cut(v[1:], `"`)
		default:
			v, _, _ = strings.Cut(v, " #") // a YAML comment
		}
		env[m[1]] = strings.TrimSpace(v)
	}
	cfg := checkManifestEnv(t, file, env)

	sidecar := mustMatch(t, file, text, `(?s)initContainers:\n\s*- name: leadercron\n(.*?)\n\s*containers:`)[1]
	if !regexp.MustCompile(`(?m)^\s*restartPolicy: Always\b`).MatchString(sidecar) {
		t.Errorf("%s: the leadercron initContainer lacks restartPolicy: Always (a native sidecar)", file)
	}
	if !strings.Contains(sidecar, `["/leadercron", "healthcheck"]`) {
		t.Errorf("%s: the sidecar's probes do not run /leadercron healthcheck", file)
	}

	grace, _ := strconv.Atoi(mustMatch(t, file, text, `terminationGracePeriodSeconds: (\d+)`)[1])
	hook := mustMatch(t, file, text, `(?s)preStop:\n(.*?)\n\s*volumes:`)[1]
	_, port, _ := net.SplitHostPort(cfg.Listen)
	if !strings.Contains(hook, "http://127.0.0.1:"+port+"/handover") || !strings.Contains(hook, "method: 'POST'") {
		t.Errorf("%s: the app's preStop hook does not POST to the sidecar's /handover on port %s:\n%s", file, port, hook)
	}
	hookMS, _ := strconv.Atoi(mustMatch(t, file, hook, `AbortSignal\.timeout\((\d+)\)`)[1])
	hookTimeout := time.Duration(hookMS) * time.Millisecond
	if hookTimeout <= cfg.DrainTimeout || hookTimeout >= time.Duration(grace)*time.Second {
		t.Errorf("%s: the hook's timeout %s must lie between LEADERCRON_DRAIN_TIMEOUT %s and terminationGracePeriodSeconds %ds", file, hookTimeout, cfg.DrainTimeout, grace)
	}
	if min := cfg.DrainTimeout + 20*time.Second; time.Duration(grace)*time.Second < min {
		t.Errorf("%s: terminationGracePeriodSeconds %d < LEADERCRON_DRAIN_TIMEOUT + 20s (%s): no time left for the app to exit", file, grace, min)
	}
}

func TestNomadJob(t *testing.T) {
	const file = "examples/nomad/orders-api.nomad.hcl"
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	task := mustMatch(t, file, string(b), `(?s)\n\s*task "leadercron" \{\n(.*)$`)[1]
	env := map[string]string{}
	for _, m := range regexp.MustCompile(`(?m)^\s*(LEADERCRON_\w+)\s*=\s*"(.*)"\s*$`).FindAllStringSubmatch(task, -1) {
		env[m[1]] = m[2]
	}
	cfg := checkManifestEnv(t, file, env)
	if !regexp.MustCompile(`(?m)^\s*leader\s*=\s*true\s*$`).MatchString(task) {
		t.Errorf("%s: the leadercron task is not leader = true, so Nomad would not stop it first", file)
	}
	if regexp.MustCompile(`(?m)^\s*lifecycle\s*\{`).MatchString(task) {
		t.Errorf("%s: the leadercron task has a lifecycle block; lifecycle sidecars are stopped last", file)
	}
	// The header promises that a sidecar that fails for good stops the
	// group; mode = "delay" never gives up.
	restart := mustMatch(t, file, task, `(?s)\n\s*restart \{\n(.*?)\n\s*\}`)[1]
	if !regexp.MustCompile(`(?m)^\s*mode\s*=\s*"fail"\s*$`).MatchString(restart) {
		t.Errorf("%s: the leadercron task's restart block is not mode = \"fail\": it would restart forever and the group would never stop\n%s", file, restart)
	}
	kill, err := time.ParseDuration(mustMatch(t, file, task, `(?m)^\s*kill_timeout\s*=\s*"([^"]+)"`)[1])
	if err != nil {
		t.Fatal(err)
	}
	if budget := cli.ShutdownBudget(cfg); kill <= budget {
		t.Errorf("%s: kill_timeout %s <= the shutdown budget %s (LEADERCRON_DRAIN_TIMEOUT %s + release, destroy, history flush, admin shutdown)", file, kill, budget, cfg.DrainTimeout)
	}
}
