"""The six scenarios, and the loop that runs them: all proxies of a scenario are started with the
same settings, then measured one after the other, the order rotating round by round.

Every measurement reads the proxy process tree's CPU time before and after the load, so each
result carries both a per-wall-second and a per-proxy-CPU-second rate.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import loadgen
from targets import STARTERS, Ctx, Setup, StartError, Target, check_target


@dataclass
class Opts:
    seconds: int = 2
    rounds: int = 2
    conns: int = 50
    tls_clients: int = 8
    storm_n: int = 2000
    storm_clients: int = 2
    storm_seconds: int = 30
    storm_tls: str = "1.2-id"
    proxies: tuple = ("nginx", "haproxy", "gateproxy")


@dataclass
class Scenario:
    key: str
    title: str
    unit: str                     # what `amount` counts per second
    setup: Setup
    load: Callable                # (target, opts, ctx) -> {"amount": n, "seconds": s, ...}
    direct: bool = False          # also measure the bare upstream (plain HTTP)
    special: Callable | None = None


def _wrk_load(path: str, amount_key: str):
    def load(t: Target, o: Opts, ctx: Ctx) -> dict:
        r = loadgen.wrk(t.url(path), o.seconds, o.conns, ctx.cores["load"])
        amount = r["requests"] if amount_key == "requests" else r["bytes"] / 1e6
        # fewer requests than 2 per connection: the target stopped answering keep-alive requests
        return {"amount": amount, "stalled": r["requests"] < 2 * o.conns, **r}
    return load


def _stime_load(tls: str, resume: bool):
    def load(t: Target, o: Opts, ctx: Ctx) -> dict:
        r = loadgen.s_time(t.port, o.seconds, resume, tls, o.tls_clients, ctx.cores["load"],
                           ctx.scratch)
        r["resumed_fraction"] = round(r["resumed"] / r["connections"], 4) if r["connections"] else 0
        return {"amount": r["connections"], **r}
    return load


def measure(t: Target, sc: Scenario, o: Opts, ctx: Ctx) -> dict:
    cpu0 = t.proc.cpu_seconds()
    r = sc.load(t, o, ctx)
    cpu = t.proc.cpu_seconds() - cpu0
    r["proxy_cpu_s"] = round(cpu, 3)
    r["proxy_cpu_util"] = round(cpu / r["seconds"], 3) if r["seconds"] else None
    r["rate_wall"] = r["amount"] / r["seconds"] if r["seconds"] else 0.0
    r["rate_cpu"] = r["amount"] / cpu if cpu > 0 else None
    return r


def start_targets(ctx: Ctx, setup: Setup, names, skipped: dict) -> dict:
    started = {}
    for name in names:
        try:
            t = STARTERS[name](ctx, setup)
            check_target(t)
            started[name] = t
        except StartError as exc:
            skipped[name] = str(exc)
            print(f"  ! {exc}", flush=True)
            if name in STARTERS and ctx.procs and ctx.procs[-1].name == name:
                ctx.procs[-1].stop()
    return started


def run_rounds(sc: Scenario, targets: dict, o: Opts, ctx: Ctx) -> dict:
    rows: dict = {name: [] for name in targets}
    names = list(targets)
    for rnd in range(o.rounds):
        shift = rnd % len(names)
        for name in names[shift:] + names[:shift]:
            r = measure(targets[name], sc, o, ctx)
            rows[name].append(r)
            cpu = f"{r['rate_cpu']:.0f}/cpu-s" if r["rate_cpu"] else "cpu n/a"
            print(f"  round {rnd + 1} {name:9s} {r['rate_wall']:10.1f} {sc.unit}/s  {cpu}  "
                  f"proxy CPU {r['proxy_cpu_util']}", flush=True)
    return rows


def run_scenario(sc: Scenario, o: Opts, ctx: Ctx, direct: Target) -> dict:
    print(f"== {sc.key}: {sc.title}", flush=True)
    skipped: dict = {}
    targets = start_targets(ctx, sc.setup, o.proxies, skipped)
    if sc.direct:
        targets["direct"] = direct
    try:
        if sc.special:
            rows = {name: [sc.special(t, o, ctx)] for name, t in targets.items()}
        else:
            rows = run_rounds(sc, targets, o, ctx) if targets else {}
    finally:
        for name, t in targets.items():
            if name != "direct":
                t.proc.stop()
    return {"title": sc.title, "unit": sc.unit, "setup": vars(sc.setup), "rows": rows,
            "skipped": skipped}


def _cache_entries(t: Target):
    stats = t.stats()
    try:
        return stats["listeners"]["bench"]["tls"]["session_cache"]["entries"]
    except (TypeError, KeyError):
        return None


def storm(t: Target, o: Opts, ctx: Ctx) -> dict:
    """N never-resuming connections while a paced, resuming client measures its resumption rate."""
    tls, no_ticket = o.storm_tls[:3], o.storm_tls.endswith("-id")
    common = {"port": t.port, "tls": tls, "no_ticket": no_ticket, "seconds": o.storm_seconds}
    rss0, entries0, cpu0 = t.proc.rss_bytes(), _cache_entries(t), t.proc.cpu_seconds()
    load = ctx.cores["load"]
    good = loadgen.tlsclient(f"good-{t.name}", ctx.scratch, load, mode="good", interval=0.02,
                             **common)
    t0 = time.monotonic()
    share = -(-o.storm_n // o.storm_clients)
    probes = [loadgen.tlsclient(f"probe-{t.name}-{i}", ctx.scratch, load, mode="probe",
                                count=share, **common) for i in range(o.storm_clients)]
    results = [loadgen.tlsclient_result(p, o.storm_seconds + 15) for p in probes]
    wall = time.monotonic() - t0
    good.stop()
    g = loadgen.tlsclient_result(good, 5)
    cpu = t.proc.cpu_seconds() - cpu0
    done = sum(r["connections"] for r in results)
    return {"amount": done, "seconds": wall, "probe_errors": sum(r["errors"] for r in results),
            "probe_resumed": sum(r["resumed"] for r in results), "requested": o.storm_n,
            "rss_before": rss0, "rss_after": t.proc.rss_bytes(),
            "cache_entries_before": entries0, "cache_entries_after": _cache_entries(t),
            "good_connections": g["connections"], "good_resumed": g["resumed"],
            "good_resumption_rate": round(g["resumed"] / g["connections"], 4)
            if g["connections"] else None,
            "proxy_cpu_s": round(cpu, 3),
            "proxy_cpu_util": round(cpu / wall, 3) if wall else None,
            "rate_wall": done / wall if wall else 0.0,
            "rate_cpu": done / cpu if cpu > 0 else None}


def all_scenarios() -> list[Scenario]:
    ecdsa, rsa = Setup("ecdsa"), Setup("rsa")
    out = [
        Scenario("keepalive_small", "keep-alive, 64 B response (wrk, 50 conns)", "req",
                 ecdsa, _wrk_load("/", "requests"), direct=True),
        Scenario("keepalive_64k", "keep-alive, 64 KiB response (wrk, 50 conns)", "MB",
                 ecdsa, _wrk_load("/64k", "bytes"), direct=True),
    ]
    for cert, setup in (("ecdsa", ecdsa), ("rsa", rsa)):
        for tls in ("1.3", "1.2"):
            out.append(Scenario(f"full_tls{tls.replace('.', '')}_{cert}",
                                f"new TLS {tls} connection per request, {cert.upper()}, full "
                                "handshakes (s_time -new)", "handshake", setup,
                                _stime_load(tls, False)))
    out += [
        Scenario("resume_tls13_ticket", "TLS 1.3 ticket resumption (s_time -reuse)",
                 "handshake", ecdsa, _stime_load("1.3", True)),
        Scenario("resume_tls12_ticket", "TLS 1.2 ticket resumption (s_time -reuse)",
                 "handshake", ecdsa, _stime_load("1.2", True)),
        Scenario("resume_tls12_sessionid", "TLS 1.2 session-ID resumption (s_time -reuse, "
                 "server tickets off)", "handshake", Setup("ecdsa", tickets=False),
                 _stime_load("1.2", True)),
        Scenario("prober_storm", "prober storm: never-resuming clients + one resuming client",
                 "handshake", ecdsa, None, special=storm),
        Scenario("workers2_keepalive_small", "2 workers (nginx worker_processes 2, HAProxy "
                 "nbthread 2), keep-alive 64 B", "req", Setup("ecdsa", workers=2),
                 _wrk_load("/", "requests")),
    ]
    return out
