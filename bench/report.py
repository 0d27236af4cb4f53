"""Medians, spreads and gateproxy/nginx ratios; writes results.json and RESULTS.md."""
from __future__ import annotations

import json
import statistics
from pathlib import Path

EXTRA_KEYS = ("proxy_cpu_util", "p50_ms", "p99_ms", "resumed_fraction", "socket_errors",
              "non_2xx", "stalled")
STORM_KEYS = ("requested", "amount", "probe_errors", "probe_resumed", "rss_before", "rss_after",
              "cache_entries_before", "cache_entries_after", "good_connections",
              "good_resumption_rate")


def _spread(values: list) -> dict:
    vals = [v for v in values if v is not None]
    if not vals:
        return {"median": None, "min": None, "max": None, "rel_spread": None, "n": 0}
    med = statistics.median(vals)
    rel = (max(vals) - min(vals)) / med if med else None
    return {"median": med, "min": min(vals), "max": max(vals),
            "rel_spread": round(rel, 4) if rel is not None else None, "n": len(vals)}


def summarize_target(rows: list[dict]) -> dict:
    out = {"rate_wall": _spread([r["rate_wall"] for r in rows]),
           "rate_cpu": _spread([r["rate_cpu"] for r in rows])}
    for key in EXTRA_KEYS:
        if any(r.get(key) is not None for r in rows):
            out[key] = _spread([r.get(key) for r in rows])["median"]
    if rows and "rss_before" in rows[0]:
        out.update({k: rows[0].get(k) for k in STORM_KEYS})
    return out


def _ratio(summary: dict, kind: str, peer: str = "nginx"):
    try:
        a, b = summary["gateproxy"][kind]["median"], summary[peer][kind]["median"]
        return round(a / b, 4) if a and b else None
    except KeyError:
        return None


def summarize(results: dict) -> dict:
    for sc in results["scenarios"].values():
        sc["summary"] = {name: summarize_target(rows) for name, rows in sc["rows"].items()}
        sc["ratio_gateproxy_nginx"] = {k: _ratio(sc["summary"], k) for k in ("rate_wall",
                                                                              "rate_cpu")}
        sc["ratio_gateproxy_proxypy"] = {k: _ratio(sc["summary"], k, "proxy.py")
                                         for k in ("rate_wall", "rate_cpu")}
    return results


def _num(v, digits=0) -> str:
    if v is None:
        return "—"
    return f"{v:,.{digits}f}" if isinstance(v, (int, float)) else str(v)


def _pct(stat: dict) -> str:
    if stat["n"] < 2 or stat["rel_spread"] is None:
        return f"n={stat['n']}"
    return f"±{stat['rel_spread'] * 50:.0f}%"


def _extra(s: dict) -> str:
    bits = []
    if s.get("proxy_cpu_util") is not None:
        bits.append(f"proxy CPU {s['proxy_cpu_util']:.2f}")
    if s.get("p50_ms") is not None:
        bits.append(f"p50 {s['p50_ms']:.2f} ms, p99 {s['p99_ms']:.2f} ms")
    if s.get("resumed_fraction") is not None:
        bits.append(f"resumed {s['resumed_fraction']:.1%}")
    if s.get("stalled"):
        bits.append("STALLED: keep-alive requests went unanswered, figure invalid")
    if s.get("socket_errors") or s.get("non_2xx"):
        bits.append(f"errors {s.get('socket_errors', 0)}, non-2xx {s.get('non_2xx', 0)}")
    if "rss_before" in s:
        mib = 2**20
        bits.append(f"{s['amount']:,}/{s['requested']:,} conns, RSS {s['rss_before'] / mib:.1f}"
                    f"→{s['rss_after'] / mib:.1f} MiB, cache entries "
                    f"{_num(s['cache_entries_before'])}→{_num(s['cache_entries_after'])}, "
                    f"good client resumed {_num(s['good_resumption_rate'], 3)} of "
                    f"{s['good_connections']}")
    return "; ".join(bits)


def scenario_md(key: str, sc: dict) -> list[str]:
    unit = sc["unit"]
    lines = [f"### {key}", "", sc["title"], "",
             f"| target | {unit}/s (wall) | spread | {unit}/proxy CPU-s | spread | notes |",
             "| --- | ---: | ---: | ---: | ---: | --- |"]
    for name, s in sc["summary"].items():
        w, c = s["rate_wall"], s["rate_cpu"]
        lines.append(f"| {name} | {_num(w['median'], 1)} | {_pct(w)} | "
                     f"{_num(c['median'], 1)} | {_pct(c)} | {_extra(s)} |")
    for name, why in sc["skipped"].items():
        lines.append(f"| {name} | — | | — | | skipped: {why.replace('|', '/')[:300]} |")
    r = sc["ratio_gateproxy_nginx"]
    lines += ["", f"gateproxy / nginx: wall {_num(r['rate_wall'], 3)}, "
                  f"per CPU-s {_num(r['rate_cpu'], 3)}", ""]
    return lines


def markdown(results: dict) -> str:
    m = results["meta"]
    mode = "QUICK MODE (short runs, few rounds: indicative only)" if m["quick"] else "full run"
    lines = [f"# gateproxy benchmark results — {mode}", "",
             f"- date: {m['date']}", f"- command: `{m['command']}`",
             f"- machine: {m['machine']['cpu']}, {m['machine']['cpus']} CPUs, "
             f"{m['machine']['memory_gib']} GiB, kernel {m['machine']['kernel']}, "
             f"load average at start {m['machine']['loadavg_at_start']}",
             f"- CPUs: proxy on {m['cores']['proxy']} (2-worker runs: {m['cores']['proxy2']}), "
             f"load generator and upstream on {m['cores']['load']}",
             f"- options: {m['opts']}", "- versions:"]
    lines += [f"  - {k}: {v}" for k, v in m["versions"].items()]
    lines += ["", "Spread is ±half the (max - min) range over the rounds, relative to the median. "
              "proxy CPU = proxy CPU-seconds per wall second (1.00 = one core saturated; below "
              "that the load generator was the limit, so compare the per CPU-s column). "
              "`direct` is the upstream over plain HTTP (no TLS, no proxy): the ceiling of the "
              "load generator + upstream.", "", "## Ratios gateproxy / nginx (and / proxy.py)",
              "", "| scenario | wall | per CPU-s | / proxy.py, wall | / proxy.py, per CPU-s |",
              "| --- | ---: | ---: | ---: | ---: |"]
    for key, sc in results["scenarios"].items():
        r = sc["ratio_gateproxy_nginx"]
        p = sc.get("ratio_gateproxy_proxypy") or {"rate_wall": None, "rate_cpu": None}
        lines.append(f"| {key} | {_num(r['rate_wall'], 3)} | {_num(r['rate_cpu'], 3)} | "
                     f"{_num(p['rate_wall'], 2)} | {_num(p['rate_cpu'], 2)} |")
    lines += ["", "## Scenarios", ""]
    for key, sc in results["scenarios"].items():
        lines += scenario_md(key, sc)
    lines += [f"Missing: {n}" for n in m.get("missing", [])]
    skipped = [k for k, sc in results["scenarios"].items() if "gateproxy" in sc["skipped"]]
    if skipped:
        lines.append(f"gateproxy was skipped in {len(skipped)} of {len(results['scenarios'])} "
                     f"scenarios (reasons in the notes): {', '.join(skipped)}")
    return "\n".join(lines) + "\n"


def write(results: dict, outdir: Path) -> None:
    outdir.mkdir(parents=True, exist_ok=True)
    (outdir / "results.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
    (outdir / "RESULTS.md").write_text(markdown(results))
