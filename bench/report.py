"""Turns the benchmark's raw runs into medians, per-repetition ratios and the markdown report.

Kept apart from run.py (which drives the services and pgbench) so the arithmetic and the report
layout can be read, and changed, on their own. Standard library only.
"""

import statistics

LABEL = {"direct": "direct", "pgbouncer": "PgBouncer", "pgmemo": "pgmemo"}

def fmt_tps(v):
    return "–" if v is None else f"{v:,.0f}"


def fmt_x(v):
    return "–" if v is None else f"{v:.2f}×"


def stat(values, fmt):
    """`median (min–max)`, with `k/n ok` when some repetitions failed."""
    ok = [v for v in values if v is not None]
    if not ok:
        return "error" if values else "–"
    s = fmt(statistics.median(ok))
    if len(ok) > 1:
        s += f" ({fmt(min(ok))}–{fmt(max(ok))})"
    if len(ok) < len(values):
        s += f" [{len(ok)}/{len(values)} ok]"
    return s


def summarize(runs, targets):
    """Per cell: TPS per target per rep, and per-rep ratios (target / reference in that rep)."""
    cells, cpu = {}, {}
    for r in runs:
        key = (r["workload"], r["mode"], r["clients"])
        cells.setdefault(key, {}).setdefault(r["rep"], {})[r["target"]] = r["tps"]
        if r.get("proxy_cpu_us_per_txn") is not None and r["tps"] is not None:
            cpu.setdefault(key, {}).setdefault(r["target"], []).append(r["proxy_cpu_us_per_txn"])
    out = []
    for (workload, mode, clients), reps in cells.items():
        row = {"workload": workload, "mode": mode, "clients": clients, "tps": {}, "ratio": {},
               "proxy_cpu_us_per_txn": cpu.get((workload, mode, clients), {})}
        for t in targets:
            row["tps"][t] = [reps[k].get(t) for k in sorted(reps)]
        for num, den in (("pgbouncer", "direct"), ("pgmemo", "direct"), ("pgmemo", "pgbouncer")):
            if num in targets and den in targets:
                row["ratio"][f"{num}/{den}"] = [
                    (reps[k][num] / reps[k][den]) if reps[k].get(num) and reps[k].get(den) else None
                    for k in sorted(reps)]
        out.append(row)
    return out


def median_or_none(values):
    ok = [v for v in values if v is not None]
    return statistics.median(ok) if ok else None


def acceptance(summary):
    """Issue 2's acceptance cells, checked from medians of per-repetition ratios."""
    lines = []
    for row in summary:
        pd = median_or_none(row["ratio"].get("pgmemo/direct", []))
        pb = median_or_none(row["ratio"].get("pgmemo/pgbouncer", []))
        cell = f"{row['workload']} `-M {row['mode']}` c={row['clients']}"
        if row["workload"] == "uncacheable" and row["mode"] == "prepared" and row["clients"] in (8, 32):
            ok = pd is not None and pb is not None and pd >= 0.7 and pb >= 1.3
            lines.append(f"- {cell}: pgmemo {fmt_x(pd)} direct (need ≥ 0.70×), "
                         f"{fmt_x(pb)} PgBouncer (need ≥ 1.30×): **{'pass' if ok else 'FAIL'}**")
        elif row["workload"] == "tpcb":
            ok = pd is not None and pd >= 0.9
            lines.append(f"- {cell}: pgmemo {fmt_x(pd)} direct (need ≥ 0.90×): "
                         f"**{'pass' if ok else 'FAIL'}**")
    return lines


def render(meta, summary, runs, invariants, skipped, configs, complete):
    targets = meta["targets"]
    md = ["# pgmemo macro benchmark", ""]
    if not complete:
        md += ["**INCOMPLETE: the run was interrupted or failed; tables hold what finished.**", ""]
    md += [f"Command: `{meta['command']}`", "",
           f"Started {meta['started']}, finished {meta.get('finished', '?')}. "
           f"{meta['reps']} repetition(s) × {meta['duration']} s per run; order within a "
           f"repetition: {meta['order']}. Proxies reach PostgreSQL over "
           f"{'its Unix socket' if meta.get('upstream_via') == 'unix' else 'loopback TCP'} "
           f"(`--upstream-via {meta.get('upstream_via', 'tcp')}`); clients always use TCP. Cells show `median (min–max)` over repetitions. "
           "Ratios are the median of per-repetition ratios (each run divided by the reference "
           "run of the same repetition), so slow drift cancels.", ""]
    for t, why in skipped.items():
        first, _, rest = why.partition("\n")
        md.append(f"- **{LABEL[t]} skipped:** {first}")
        if rest.strip():
            md += ["", "  ```text"] + [f"  {line.strip()}" for line in rest.splitlines()] + ["  ```"]
    if skipped:
        md.append("")
    groups = {}
    for row in summary:
        groups.setdefault((row["workload"], row["mode"]), []).append(row)
    for (workload, mode), rows in groups.items():
        md += [f"## {workload}, `-M {mode}` (TPS)", ""]
        head = ["clients"] + [f"{LABEL[t]} TPS" for t in targets]
        ratios = [k for k in ("pgbouncer/direct", "pgmemo/direct", "pgmemo/pgbouncer")
                  if k.split("/")[0] in targets and k.split("/")[1] in targets]
        head += [f"{LABEL[k.split('/')[0]]} ÷ {LABEL[k.split('/')[1]]}" for k in ratios]
        md += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for row in sorted(rows, key=lambda r: r["clients"]):
            cells = [str(row["clients"])] + [stat(row["tps"][t], fmt_tps) for t in targets]
            cells += [stat(row["ratio"][k], fmt_x) for k in ratios]
            md.append("| " + " | ".join(cells) + " |")
        md.append("")
    if invariants:
        md += ["## TPC-B balance invariant", ""]
        for inv in invariants:
            s = inv["sums"]
            md.append(f"- after tpcb `-M {inv['mode']}` c={inv['clients']}: "
                      f"{'**pass**' if inv['ok'] else '**FAIL**'} (accounts {s['accounts']}, "
                      f"branches {s['branches']}, tellers {s['tellers']}, history {s['history']})")
        md.append("")
    proxies = [t for t in targets if t != "direct"]
    if proxies:
        md += ["## Proxy CPU per transaction", "",
               "CPU time (user + system, all threads) the proxy process used during the run, "
               "divided by the transactions pgbench completed: `median (min–max)` µs. On this "
               "shared box every proxy µs is taken from pgbench and PostgreSQL.", "",
               "| workload | mode | clients | " + " | ".join(f"{LABEL[t]} µs/txn" for t in proxies)
               + " |", "|" + "---|" * (3 + len(proxies))]
        for row in summary:
            cells = [row["workload"], f"`-M {row['mode']}`", str(row["clients"])]
            cells += [stat(row["proxy_cpu_us_per_txn"].get(t, []), lambda v: f"{v:.1f}")
                      for t in proxies]
            md.append("| " + " | ".join(cells) + " |")
        md.append("")
    if "pgmemo" in targets:
        md += ["## Issue 2 acceptance (from this run)", ""] + acceptance(summary) + [""]
    errors = [r for r in runs if r.get("error")]
    contended = [r for r in runs if (r.get("foreign_cpu_pct") or 0) >= 5]
    md += ["## Run health", "",
           f"- {len(runs)} runs, {len(errors)} errors, {len(contended)} with ≥ 5 % of the machine's "
           "CPU used by processes outside the benchmark (other builds/tests on this host)."]
    for r in errors:
        md.append(f"  - error: {r['workload']} -M {r['mode']} c={r['clients']} rep {r['rep']} "
                  f"{r['target']}: {r['error']}")
    for r in contended:
        md.append(f"  - contended: {r['workload']} -M {r['mode']} c={r['clients']} rep {r['rep']} "
                  f"{r['target']}: {r['foreign_cpu_pct']} % ({', '.join(r['foreign_top'])})")
    m = meta["machine"]
    md += ["", "## Machine", "",
           f"- {m['nproc']} CPUs ({m['cpu']}), kernel {m['kernel']}, load average at start "
           f"{' '.join(m['loadavg_at_start'])}; {m['pgbench']}; Python {m['python']}; "
           f"git HEAD {m['git_head']}",
           "- pgbench, PostgreSQL, PgBouncer and pgmemo all share these CPUs over loopback.",
           "", "## Configs", ""]
    if "postgres" in configs:
        pg = configs["postgres"]
        md += [f"PostgreSQL {pg['version']}, scale {pg['scale']} (`pgbench -i -s {pg['scale']}`), data set "
               "prewarmed with pg_prewarm, CHECKPOINT before every cell. Settings changed from "
               f"initdb defaults: {', '.join(f'{k}={v}' for k, v in pg['non_default'].items())}. "
               "Effective: " + ", ".join(f"{k}={v}" for k, v in pg["effective"].items()) + ".",
               "", f"    {pg['command']}", ""]
    if "pgbouncer" in configs:
        pb = configs["pgbouncer"]
        md += [f"{pb['version']}: `{pb['command']}` with", "", "```ini", pb["ini"].rstrip(), "```",
               ""]
    if "pgmemo" in configs:
        pm = configs["pgmemo"]
        md += [f"pgmemo (binary built {pm['binary_mtime']}): `{pm['command']}`; "
               f"environment: {pm['env'] or 'no PGMEMO_*/RUST_LOG variables'}", ""]
    md += ["pgbench: `pgbench -n -h 127.0.0.1 -p PORT -U postgres -c C -j min(C,2) -T D -M MODE "
           "(-b tpcb-like | -f bench/workloads/uncacheable.sql) postgres`, PGSSLMODE=disable.", ""]
    return "\n".join(md)
