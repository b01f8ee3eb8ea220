#!/usr/bin/env python3
"""Checks the Grafana dashboard and the alert rules against a real scrape.

    scripts/check-dashboard.py --scrape METRICS.txt [--promql-rules OUT.yml]
        [--dashboard examples/grafana/leadercron.json]
        [--alerts examples/prometheus/alerts.yml]

METRICS.txt is the body of GET /metrics from a running sidecar (the
Prometheus text format). The script fails (exit 1), naming the file, the
panel or rule, and the metric, when:

- the dashboard is not well-formed JSON, lacks the panels the issue asks
  for (Leadership, Slot outcomes per job, Slot delay, Consul errors), has
  a panel without a query, duplicate panel ids or refIds, a panel outside
  the 24-column grid, or uses a template variable it does not define;
- any metric name used in a dashboard query, a template variable query,
  or an alert rule's expr is not in the scrape.

The scrape, not the list of names the sidecar registers, is the reference,
so that the check sees what Prometheus will actually store. That works
because every metric the dashboard and the alerts use has a series in a
scrape once the sidecar has triggered one slot: the gauges always do;
leadercron_slots_total and leadercron_consul_errors_total are vectors, and
a vector without children appears in no scrape (not even its # HELP line),
but the sidecar creates a zero child for every configured job x outcome and
every Consul operation at start; leadercron_trigger_duration_seconds gets
its child at the first trigger, which is why scripts/test-monitoring.sh
waits for fired slots before it scrapes. A metric missing for that reason
is reported with that hint.

Names in the scrape: every sample's name, plus the # HELP/# TYPE name of
counters, gauges and untyped metrics. A histogram X is stored as X_bucket,
X_sum and X_count (and a summary as X, X_sum, X_count), never as X alone,
so a bare histogram name in a query is an error: it would select nothing.

With --promql-rules, the script also writes every dashboard query, with
Grafana's variables replaced by plain values ($__rate_interval -> 5m,
$fleet -> .*), as recording rules to OUT.yml, so that `promtool check
rules OUT.yml` can check that each one is valid PromQL.

Only the Python standard library is used. alerts.yml is read with a small
reader for the `expr:` keys (plain, quoted, or block scalars | and >),
which also checks that it found one expr per rule.
"""

import argparse
import json
import re
import sys

REQUIRED_PANELS = ["Leadership", "Slot outcomes per job", "Slot delay", "Consul errors"]

# PromQL words that are not metric names: operators, modifiers, literals.
KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left",
            "group_right", "bool", "offset", "inf", "nan", "start", "end"}

# Grafana's own variables ($__interval, $__rate_interval, $__range, ...).
GRAFANA_BUILTIN = re.compile(r"^__")
VAR = re.compile(r"\$\{([A-Za-z_]\w*)(?::[^}]*)?\}|\$([A-Za-z_]\w*)|\[\[([A-Za-z_]\w*)\]\]")

errors = []


def fail(msg):
    errors.append(msg)


# --- the scrape ------------------------------------------------------------

def scrape_names(path):
    """The metric names a query can select, from a text-format scrape."""
    names, types = set(), {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            if line.startswith("#"):
                parts = line.split(None, 3)
                if len(parts) >= 3 and parts[1] == "TYPE":
                    types[parts[2]] = parts[3] if len(parts) > 3 else "untyped"
                elif len(parts) >= 3 and parts[1] == "HELP":
                    types.setdefault(parts[2], None)
                continue
            m = re.match(r"[A-Za-z_:][A-Za-z0-9_:]*", line)
            if m:
                names.add(m.group(0))
    for name, typ in types.items():
        if typ == "histogram":
            names.update({name + "_bucket", name + "_sum", name + "_count"})
        elif typ == "summary":
            names.update({name, name + "_sum", name + "_count"})
        elif typ is not None:
            names.add(name)
    return names, types


# --- metric names in a PromQL expression -------------------------------------

STRING = re.compile(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`')
NAME_MATCHER = re.compile(r'__name__\s*=\s*"((?:\\.|[^"\\])*)"')
GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", re.I)
IDENT = re.compile(r"(?<![\w.:$])[A-Za-z_:][A-Za-z0-9_:]*")


def metric_names(expr):
    """The metric names an expression selects (not functions, labels,
    keywords, label values, durations or Grafana variables)."""
    found = set(NAME_MATCHER.findall(expr))
    e = re.sub(r"#[^\n]*", " ", STRING.sub('""', expr))  # strings, then comments
    e = re.sub(r"\{[^}]*\}", " ", e)                       # label matchers
    e = re.sub(r"\[[^\]]*\]", " ", e)                      # ranges, subqueries
    e = GROUPING.sub(" ", e)                               # by (...), on (...)
    e = VAR.sub(" ", e)                                    # Grafana variables
    for m in IDENT.finditer(e):
        word = m.group(0)
        if word.lower() in KEYWORDS:
            continue
        if re.match(r"\s*\(", e[m.end():]):  # a function or an aggregation
            continue
        found.add(word)
    return found


def variable_query_expr(q):
    """The PromQL inside a Grafana Prometheus variable query, or None."""
    if isinstance(q, dict):
        q = q.get("query", "")
    q = (q or "").strip()
    m = re.fullmatch(r"label_values\((.*),\s*[A-Za-z_]\w*\s*\)", q, re.S)
    if m:
        return m.group(1)
    if re.fullmatch(r"label_values\(\s*[A-Za-z_]\w*\s*\)", q) or q.startswith("label_names(") \
            or q.startswith("metrics("):
        return None
    m = re.fullmatch(r"query_result\((.*)\)", q, re.S)
    if m:
        return m.group(1)
    return q or None


# --- the dashboard -----------------------------------------------------------

def all_panels(panels):
    for p in panels:
        yield p
        yield from all_panels(p.get("panels") or [])


def load_dashboard(path):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        fail(f"{path}: not valid JSON: {e}")
    except OSError as e:
        fail(f"{path}: {e}")
    return None


def check_dashboard(path, dash):
    """Structure checks; returns [(where, expr)] for every query."""
    queries = []
    if not isinstance(dash, dict):
        fail(f"{path}: the top level is not a JSON object")
        return queries
    for key, typ in (("title", str), ("uid", str), ("panels", list), ("schemaVersion", int)):
        if not isinstance(dash.get(key), typ):
            fail(f"{path}: top-level {key!r} missing or not a {typ.__name__}")
    variables = {}
    for v in (dash.get("templating") or {}).get("list") or []:
        name = v.get("name")
        if not name:
            fail(f"{path}: a template variable has no name")
            continue
        variables[name] = v
        if v.get("type") == "query":
            expr = variable_query_expr(v.get("query") or v.get("definition"))
            if expr:
                queries.append((f"{path}: template variable ${name}", expr))
    ids, titles = set(), {}
    for p in all_panels(dash.get("panels") or []):
        title = p.get("title") or "(untitled)"
        where = f"{path}: panel {title!r} (id {p.get('id')})"
        pid = p.get("id")
        if not isinstance(pid, int):
            fail(f"{where}: id missing or not an integer")
        elif pid in ids:
            fail(f"{where}: id {pid} used twice")
        ids.add(pid)
        g = p.get("gridPos") or {}
        if not all(isinstance(g.get(k), int) for k in "hwxy"):
            fail(f"{where}: gridPos needs integer h, w, x, y")
        elif g["x"] < 0 or g["w"] < 1 or g["x"] + g["w"] > 24:
            fail(f"{where}: gridPos x={g['x']} w={g['w']} is outside the 24-column grid")
        if p.get("type") == "row":
            continue
        targets = p.get("targets") or []
        exprs = [t for t in targets if (t.get("expr") or "").strip()]
        if not exprs:
            fail(f"{where}: no query (targets with an expr)")
        refs = [t.get("refId") for t in targets]
        if len(set(refs)) != len(refs) or None in refs:
            fail(f"{where}: refIds {refs} are not unique and set")
        for t in exprs:
            queries.append((f"{where} query {t.get('refId')}", t["expr"]))
        titles.setdefault(title, p)
    for want in REQUIRED_PANELS:
        if want not in titles:
            fail(f"{path}: no panel titled {want!r} (the issue asks for: {', '.join(REQUIRED_PANELS)})")
    for where, expr in queries:
        for m in VAR.finditer(expr):
            name = next(g for g in m.groups() if g)
            if not GRAFANA_BUILTIN.match(name) and name not in variables:
                fail(f"{where}: uses ${name}, which the dashboard's templating does not define")
    return queries


def grafana_to_promql(expr):
    """Replace Grafana variables with values PromQL accepts."""
    e = re.sub(r"\[\s*(?:\$\{?\w+\}?|\[\[\w+\]\])\s*\]", "[5m]", expr)
    e = re.sub(r"\$\{?__range_s\}?", "300", e)
    e = re.sub(r"\$\{?__range_ms\}?", "300000", e)
    return VAR.sub(".*", e)


# --- alerts.yml ---------------------------------------------------------------

def alert_exprs(path):
    """[(where, expr)] for every rule's expr in a Prometheus rules file."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().split("\n")
    except OSError as e:
        fail(f"{path}: {e}")
        return []
    out, rule, nrules = [], None, 0
    i = 0
    while i < len(lines):
        line = lines[i]
        m = re.match(r"\s*-\s*(alert|record):\s*(\S.*)$", line)
        if m:
            rule, nrules = m.group(2).strip(), nrules + 1
        m = re.match(r"(\s*)(?:-\s+)?expr:\s*(.*)$", line)
        if not m:
            i += 1
            continue
        indent, value, start = len(m.group(1)), m.group(2).strip(), i + 1
        where = f"{path}: rule {rule or '(unnamed)'} (line {start})"
        if value[:1] in ("|", ">"):
            body = []
            i += 1
            while i < len(lines) and (not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) > indent):
                body.append(lines[i].strip())
                i += 1
            value = "\n".join(body).strip()
        else:
            i += 1
            if value[:1] == '"':
                value = json.loads(value)
            elif value[:1] == "'":
                value = value[1:-1].replace("''", "'")
            elif not value:
                fail(f"{where}: expr is empty or in a YAML form this reader does not know")
                continue
        out.append((where, value))
    if nrules == 0:
        fail(f"{path}: no rules found")
    if len(out) != nrules:
        fail(f"{path}: found {nrules} rules but {len(out)} exprs")
    return out


# --- main ---------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scrape", required=True, help="a /metrics body from a running sidecar")
    ap.add_argument("--dashboard", default="examples/grafana/leadercron.json")
    ap.add_argument("--alerts", default="examples/prometheus/alerts.yml")
    ap.add_argument("--promql-rules", help="write the dashboard's queries here as recording rules")
    args = ap.parse_args()

    try:
        have, types = scrape_names(args.scrape)
    except OSError as e:
        print(f"check-dashboard: {e}", file=sys.stderr)
        return 2
    if not any(n.startswith("leadercron_") for n in have):
        print(f"check-dashboard: {args.scrape} has no leadercron_* metric: not a sidecar's scrape", file=sys.stderr)
        return 2

    dash = load_dashboard(args.dashboard)
    queries = check_dashboard(args.dashboard, dash) if dash is not None else []
    rules = alert_exprs(args.alerts)

    used = set()
    for where, expr in queries + rules:
        names = metric_names(expr)
        if not names:
            fail(f"{where}: no metric name found in {expr!r}")
        for n in sorted(names):
            used.add(n)
            if n in have:
                continue
            hint = ""
            base = re.sub(r"_(bucket|sum|count)$", "", n)
            if types.get(n) in ("histogram", "summary"):
                hint = f" ({n} is a {types[n]}: query {n}_bucket, _sum or _count)"
            elif base in types:
                hint = f" ({base} is in the scrape as a {types[base]})"
            elif n.startswith("leadercron_"):
                hint = " (misspelled? or a vector whose first child the run did not create)"
            fail(f"{where}: metric {n} is not in the scrape{hint}")

    if args.promql_rules and queries:
        with open(args.promql_rules, "w", encoding="utf-8") as f:
            f.write("# Generated by scripts/check-dashboard.py: the dashboard's queries,\n"
                    "# Grafana variables replaced, for promtool check rules.\n"
                    "groups:\n  - name: dashboard-queries\n    rules:\n")
            for n, (where, expr) in enumerate(queries):
                f.write(f"      # {where}\n      - record: dashboard:query_{n}\n"
                        f"        expr: {json.dumps(grafana_to_promql(expr))}\n")

    if errors:
        for e in errors:
            print(f"check-dashboard: {e}", file=sys.stderr)
        print(f"check-dashboard: FAILED ({len(errors)} problems)", file=sys.stderr)
        return 1
    unused = sorted(b for b, t in types.items() if b.startswith("leadercron_")
                    and not used & {b, b + "_bucket", b + "_sum", b + "_count"})
    print(f"check-dashboard: OK: {len(queries)} dashboard queries and {len(rules)} alert rules use "
          f"{len(used)} metric names, all in the scrape ({len(have)} names)")
    if unused:
        print(f"check-dashboard: in the scrape but used by neither: {', '.join(unused)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
