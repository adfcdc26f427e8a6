"""Turns the benchmark's raw runs into medians, per-repetition ratios and the markdown report.

Kept apart from run.py (which drives the services and pgbench) so the arithmetic and the report
layout can be read, and changed, on their own. Standard library only.
"""

import os
import re
import statistics

LABEL = {"direct": "direct", "pgbouncer": "PgBouncer", "pgpool": "pgpool-II", "pgmemo": "pgmemo",
         "pgmemo-base": "pgmemo (base)", "limit": "responder"}
# Ratio columns beyond "peer ÷ direct", in report order: (numerator, denominator, heading).
VERSUS = (("pgmemo", "pgbouncer", "pgmemo ÷ PgBouncer"), ("pgmemo", "pgpool", "pgmemo ÷ pgpool-II"),
          ("pgmemo", "limit", "pgmemo % of ceiling"), ("pgmemo", "pgmemo-base", "pgmemo ÷ base"))


def fmt_tps(v):
    return "–" if v is None else f"{v:,.0f}"


def fmt_x(v):
    return "–" if v is None else f"{v:.2f}×"


def fmt_pct(v):
    return "–" if v is None else f"{100 * v:.1f} %"


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
    """Per cell: TPS and hit ratio per target per rep, and per-rep ratios (target / reference
    in that rep). Only targets that ran in a cell get columns (the responder runs for `point`)."""
    cells, cpu, hits, parts = {}, {}, {}, {}
    for r in runs:
        key = (r["workload"], r["mode"], r["clients"])
        cells.setdefault(key, {}).setdefault(r["rep"], {})[r["target"]] = r["tps"]
        if r.get("proxy_cpu_us_per_txn") is not None and r["tps"] is not None:
            cpu.setdefault(key, {}).setdefault(r["target"], []).append(r["proxy_cpu_us_per_txn"])
        if r["tps"] is not None:
            for part in ("client", "postgres", "proxy"):
                v = r.get(f"{part}_cpu_us_per_txn")
                if v is not None:
                    parts.setdefault(key, {}).setdefault(r["target"], {}) \
                        .setdefault(part, []).append(v)
        if "hit_ratio" in r:
            hits.setdefault(key, {}).setdefault(r["target"], []).append(r["hit_ratio"])
    out = []
    for (workload, mode, clients), reps in cells.items():
        ran = [t for t in targets if any(t in reps[k] for k in reps)]
        row = {"workload": workload, "mode": mode, "clients": clients, "targets": ran,
               "tps": {}, "ratio": {}, "hit_ratio": hits.get((workload, mode, clients), {}),
               "proxy_cpu_us_per_txn": cpu.get((workload, mode, clients), {}),
               "cpu_parts": parts.get((workload, mode, clients), {})}
        for t in ran:
            row["tps"][t] = [reps[k].get(t) for k in sorted(reps)]
        pairs = [(t, "direct") for t in ran if t != "direct"] + [(n, d) for n, d, _ in VERSUS]
        for num, den in pairs:
            if num in ran and den in ran:
                row["ratio"][f"{num}/{den}"] = [
                    (reps[k][num] / reps[k][den]) if reps[k].get(num) and reps[k].get(den) else None
                    for k in sorted(reps)]
        out.append(row)
    return out


def median_or_none(values):
    ok = [v for v in values if v is not None]
    return statistics.median(ok) if ok else None


def acceptance(summary):
    """The acceptance cells of issues 2, 3 and 4, checked from medians of per-repetition
    ratios (issue 4's heavy cell compares two cells, so it uses their median TPS)."""
    issue2, issue3, issue4 = [], [], []
    median_tps = {(row["workload"], row["mode"], row["clients"], t): median_or_none(v)
                  for row in summary for t, v in row["tps"].items()}
    for row in summary:
        r = {k: median_or_none(v) for k, v in row["ratio"].items()}
        pd, pb, pp = r.get("pgmemo/direct"), r.get("pgmemo/pgbouncer"), r.get("pgmemo/pgpool")
        hits = {t: median_or_none(v) for t, v in row["hit_ratio"].items()}
        cell = f"{row['workload']} `-M {row['mode']}` c={row['clients']}"
        if row["workload"] == "uncacheable" and row["mode"] == "prepared" and row["clients"] in (8, 32):
            ok = pd is not None and pb is not None and pd >= 0.7 and pb >= 1.3
            issue2.append(f"- {cell}: pgmemo {fmt_x(pd)} direct (need ≥ 0.70×), "
                          f"{fmt_x(pb)} PgBouncer (need ≥ 1.30×): **{'pass' if ok else 'FAIL'}**")
        elif row["workload"] == "tpcb":
            ok = pd is not None and pd >= 0.9
            issue2.append(f"- {cell}: pgmemo {fmt_x(pd)} direct (need ≥ 0.90×): "
                          f"**{'pass' if ok else 'FAIL'}**")
        elif row["workload"] == "point" and row["mode"] == "simple" and row["clients"] == 8:
            ok = pd is not None and pd >= 2.0
            issue3.append(f"- {cell}: pgmemo {fmt_x(pd)} direct (need ≥ 2.00×): "
                          f"**{'pass' if ok else 'FAIL'}**; pgpool-II {fmt_x(r.get('pgpool/direct'))} "
                          f"direct; pgmemo at {fmt_pct(r.get('pgmemo/limit'))} of the ceiling "
                          f"(goal 90 %); hits pgmemo {fmt_pct(hits.get('pgmemo'))}, "
                          f"pgpool-II {fmt_pct(hits.get('pgpool'))}")
        elif row["workload"] == "heavy" and row["mode"] == "simple" and row["clients"] == 8:
            ok = pp is not None and pp >= 1.2
            issue3.append(f"- {cell}: pgmemo {fmt_x(pp)} pgpool-II (need ≥ 1.20×): "
                          f"**{'pass' if ok else 'FAIL'}**; pgmemo {fmt_x(pd)} direct, pgpool-II "
                          f"{fmt_x(r.get('pgpool/direct'))} direct; hits pgmemo "
                          f"{fmt_pct(hits.get('pgmemo'))}, pgpool-II {fmt_pct(hits.get('pgpool'))}")
        if row["workload"] == "point" and row["mode"] == "prepared" and row["clients"] == 8:
            ok = pd is not None and pd >= 1.3
            issue4.append(f"- {cell}: pgmemo {fmt_x(pd)} direct (need ≥ 1.30×, target 1.50×): "
                          f"**{'pass' if ok else 'FAIL'}**; pgpool-II "
                          f"{fmt_x(r.get('pgpool/direct'))} direct; hits pgmemo "
                          f"{fmt_pct(hits.get('pgmemo'))}")
        elif row["workload"] == "heavy" and row["mode"] == "prepared" and row["clients"] == 8:
            mine = median_tps.get(("heavy", "prepared", 8, "pgmemo"))
            theirs = median_tps.get(("heavy", "simple", 8, "pgpool"))
            x = mine / theirs if mine and theirs else None
            ok = x is not None and x >= 1.2
            issue4.append(f"- {cell}: pgmemo {fmt_tps(mine) if mine else '–'} TPS = {fmt_x(x)} "
                          f"pgpool-II's `-M simple` {fmt_tps(theirs) if theirs else '–'} TPS "
                          f"(medians; need ≥ 1.20×): **{'pass' if ok else 'FAIL'}**; hits pgmemo "
                          f"{fmt_pct(hits.get('pgmemo'))}")
    if issue3:
        issue3.append("- the staleness checker's 1M-operation run (0 stale reads, its throughput "
                      "and hit ratio) is not part of this benchmark")
    return issue2, issue3, issue4


def ratio_table(rows, targets):
    """The headline table of one workload and mode: direct TPS, every peer ÷ direct, pgmemo
    against the other caches and the ceiling, and the caches' hit ratios."""
    ran = [t for t in targets if any(t in r["targets"] for r in rows)]
    cols = [(f"{t}/direct", f"{LABEL[t]} ÷ direct", fmt_x) for t in ran if t != "direct"]
    cols += [(f"{n}/{d}", head, fmt_pct if d == "limit" else fmt_x) for n, d, head in VERSUS
             if any(f"{n}/{d}" in r["ratio"] for r in rows)]
    hit_targets = [t for t in ran if any(v is not None for r in rows
                                         for v in r["hit_ratio"].get(t, []))]
    head = ["clients", "direct TPS"] + [h for _, h, _ in cols]
    head += [f"{LABEL[t]} hits" for t in hit_targets]
    md = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [str(row["clients"]), stat(row["tps"].get("direct", []), fmt_tps)]
        cells += [stat(row["ratio"].get(k, []), f) for k, _, f in cols]
        cells += [stat(row["hit_ratio"].get(t, []), fmt_pct) for t in hit_targets]
        md.append("| " + " | ".join(cells) + " |")
    return md


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
           "run of the same repetition), so slow drift cancels. `% of ceiling` is pgmemo ÷ the "
           "instant responder (`point` only); `hits` are the cache's own counters over the timed "
           "run (pgpool-II: `SHOW pool_cache`; pgmemo: admin `/metrics`)."
           + (f" Cacheable workloads (point, heavy, mixed) get one untimed {meta['warmup']} s "
              "warm-up run per target before each cell." if meta.get("warmup") else ""), ""]
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
        rows = sorted(rows, key=lambda r: r["clients"])
        md += [f"## {workload}, `-M {mode}`", ""] + ratio_table(rows, targets) + [""]
        ran = [t for t in targets if any(t in r["targets"] for r in rows)]
        head = ["clients"] + [f"{LABEL[t]} TPS" for t in ran]
        md += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for row in rows:
            cells = [str(row["clients"])] + [stat(row["tps"].get(t, []), fmt_tps) for t in ran]
            md.append("| " + " | ".join(cells) + " |")
        md.append("")
    if invariants:
        md += ["## TPC-B balance invariant", ""]
        md += ["Over each TPC-B cell the four sums must change by the same amount (checked as "
               "changes because `mixed` updates accounts alone).", ""]
        for inv in invariants:
            s = inv["delta"]
            md.append(f"- after tpcb `-M {inv['mode']}` c={inv['clients']}: "
                      f"{'**pass**' if inv['ok'] else '**FAIL**'} (change in accounts "
                      f"{s['accounts']}, branches {s['branches']}, tellers {s['tellers']}, "
                      f"history {s['history']})")
        md.append("")
    proxies = [t for t in targets if t != "direct"]
    if proxies:
        md += ["## Proxy CPU per transaction", "",
               "CPU time (user + system, all threads, and child processes: pgpool-II forks one "
               "per client) the proxy process used during the run, "
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
    if any(row.get("cpu_parts") for row in summary):
        md += ["## CPU per transaction, by process", "",
               "Medians of each process's CPU (user + system) during the run ÷ transactions: "
               "pgbench (the client), PostgreSQL (postmaster and every backend, the proxies' "
               "included), the proxy. `box` is what the machine's CPUs offer per transaction at "
               "that TPS (CPUs × 1 s ÷ TPS): the sum cannot exceed it, so a target's TPS is "
               "bounded by CPUs × 1 s ÷ (the sum of its parts).", "",
               "| workload | mode | clients | target | pgbench µs | PostgreSQL µs | proxy µs "
               "| sum µs | box µs |", "|" + "---|" * 9]
        ncpu = os.cpu_count() or 1
        for row in summary:
            for t in row["targets"]:
                got = row["cpu_parts"].get(t)
                if not got:
                    continue
                med = {k: statistics.median(v) for k, v in got.items() if v}
                tps = [v for v in row["tps"].get(t, []) if v]
                box = f"{ncpu * 1e6 / statistics.median(tps):.1f}" if tps else "–"
                cells = [row["workload"], f"`-M {row['mode']}`", str(row["clients"]), LABEL[t]]
                cells += [f"{med[k]:.1f}" if k in med else "–"
                          for k in ("client", "postgres", "proxy")]
                cells += [f"{sum(med.values()):.1f}", box]
                md.append("| " + " | ".join(cells) + " |")
        md.append("")
    if "pgmemo" in targets:
        issue2, issue3, issue4 = acceptance(summary)
        if issue4:
            md += ["## Issue 4 acceptance (from this run)", ""] + issue4 + [""]
        if issue3:
            md += ["## Issue 3 acceptance (from this run)", ""] + issue3 + [""]
        if issue2:
            md += ["## Issue 2 acceptance (from this run)", ""] + issue2 + [""]
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
           "- pgbench, PostgreSQL and every proxy share these CPUs over loopback.",
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
    if "pgpool" in configs:
        pp = configs["pgpool"]
        md += [f"{pp['version']}: `{pp['command']}` with", "", "```ini", pp["conf"].rstrip(),
               "```", ""]
    for name in ("pgmemo", "pgmemo-base"):
        if name in configs:
            pm = configs[name]
            md += [f"{LABEL[name]} (binary built {pm['binary_mtime']}): `{pm['command']}`; "
                   f"environment: {pm['env'] or 'no PGMEMO_*/RUST_LOG variables'}", ""]
    if "limit" in configs:
        md += [f"Instant responder (`shared/tools/limit`, the ceiling for `point`): "
               f"`{configs['limit']['command']}`", ""]
    warm = meta.get("warmup", 0)
    md += ["pgbench (PORT is the target's; PGSSLMODE=disable"
           + (f"; cacheable workloads first get one untimed {warm} s run per target and cell"
              if warm else "") + "):", ""]
    seen = set()
    for r in runs:  # one command per cell, as run against PostgreSQL directly
        key = (r["workload"], r["mode"], r["clients"])
        if r["target"] == "direct" and r.get("command") and key not in seen:
            seen.add(key)
            md.append("    " + re.sub(r" -p \d+ ", " -p PORT ", r["command"], count=1))
    md.append("")
    return "\n".join(md)
