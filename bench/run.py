#!/usr/bin/env python3
"""gateproxy benchmark harness: gateproxy vs nginx vs HAProxy (and proxy.py) on one machine.

    python bench/run.py --quick                 # ~2 minutes, indicative
    python bench/run.py                         # full suite, < 15 minutes
    python bench/run.py --only keepalive_small,prober_storm --rounds 3

See bench/README.md for what each scenario measures and how to read the results.
"""
from __future__ import annotations

import argparse
import datetime
import signal
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import env  # noqa: E402
import proxypy  # noqa: E402
import report  # noqa: E402
import targets  # noqa: E402
from scenarios import Opts, all_scenarios, run_scenario  # noqa: E402

import certs  # noqa: E402

QUICK = {"seconds": 1, "rounds": 2, "storm_n": 1000, "storm_seconds": 15}
FULL = {"seconds": 3, "rounds": 3, "storm_n": 100_000, "storm_seconds": 80}


def parse_args(argv=None) -> argparse.Namespace:
    names = [s.key for s in all_scenarios()]
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="short runs (~2 min), labeled as such")
    p.add_argument("--only", help="comma-separated scenarios: " + ", ".join(names))
    p.add_argument("--rounds", type=int, help="rounds per scenario (quick 2, full 3)")
    p.add_argument("--seconds", type=int, help="seconds per measurement (quick 1, full 3)")
    p.add_argument("--storm-n", type=int, help="prober connections (quick 1000, full 100000)")
    p.add_argument("--storm-seconds", type=int, help="time cap of the storm per proxy")
    p.add_argument("--storm-tls", choices=["1.2-id", "1.2", "1.3"], default="1.2-id",
                   help="prober/good client TLS: 1.2 session IDs (default), 1.2 tickets, 1.3")
    p.add_argument("--conns", type=int, default=50, help="wrk connections")
    p.add_argument("--tls-clients", type=int, default=8, help="parallel openssl s_time loops")
    p.add_argument("--proxies", default="nginx,haproxy,gateproxy,proxy.py")
    p.add_argument("--gateproxy", default=str(HERE.parent / ".venv" / "bin" / "gateproxy"),
                   help="gateproxy executable")
    p.add_argument("--out", default=str(HERE), help="where RESULTS.md and results.json go")
    args = p.parse_args(argv)
    if args.only:
        unknown = set(args.only.split(",")) - set(names)
        if unknown:
            p.error(f"unknown scenario(s): {', '.join(sorted(unknown))}")
    return args


def make_opts(args) -> Opts:
    base = dict(QUICK if args.quick else FULL)
    for key in ("seconds", "rounds", "storm_n", "storm_seconds"):
        if getattr(args, key) is not None:
            base[key] = getattr(args, key)
    return Opts(conns=args.conns, tls_clients=args.tls_clients, storm_tls=args.storm_tls,
                proxies=tuple(args.proxies.split(",")), **base)


def _sigterm(*_):
    raise SystemExit("terminated")


def run(args) -> dict:
    env.refuse_ci()
    env.ensure_tools()
    opts = make_opts(args)
    scratch = HERE / "out"
    scratch.mkdir(exist_ok=True)
    ctx = targets.Ctx(scratch=scratch, certs=certs.make_all(scratch / "certs"),
                      cores=env.core_plan(), gateproxy_bin=args.gateproxy)
    missing = []
    if "proxy.py" in opts.proxies:
        ctx.proxypy_bin, why = proxypy.install(scratch)
        if why:
            missing.append(f"proxy.py — {why}")
            opts.proxies = tuple(p for p in opts.proxies if p != "proxy.py")
    selected = [s for s in all_scenarios() if not args.only or s.key in args.only.split(",")]
    started = time.monotonic()
    results = {"meta": {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                        "command": " ".join(["python", "bench/run.py", *sys.argv[1:]]),
                        "quick": args.quick, "machine": env.machine(), "cores": ctx.cores,
                        "opts": vars(opts), "missing": missing,
                        "versions": env.versions(args.gateproxy, ctx.proxypy_bin)},
               "scenarios": {}}
    build = results["meta"]["versions"]["gateproxy"]
    if "pure-Python core" in build:  # a stale build measures the fallback, not the product
        print(f"WARNING: {build}: these figures are not the compiled gateproxy", flush=True)
    signal.signal(signal.SIGTERM, _sigterm)
    try:
        direct = targets.start_upstream(ctx)
        targets.check_target(direct)
        for sc in selected:
            results["scenarios"][sc.key] = run_scenario(sc, opts, ctx, direct)
    finally:
        for proc in reversed(ctx.procs):
            proc.stop()
    results["meta"]["elapsed_s"] = round(time.monotonic() - started, 1)
    return report.summarize(results)


def main() -> None:
    args = parse_args()
    results = run(args)
    report.write(results, Path(args.out))
    print(f"done in {results['meta']['elapsed_s']} s; wrote {args.out}/RESULTS.md and "
          f"{args.out}/results.json")


if __name__ == "__main__":
    main()
