#!/usr/bin/env python3
"""Direct-RTT recall of real `brume node` daemons' maps on a testnet (issue 17).

Two steps, both without third-party modules:

  # 1. cut a neighbourhood out of a matrix `brume bench overlay --write-matrix` wrote:
  #    the COUNT hosts nearest host CENTRE (an RTT matrix is what `brume testnet up` takes)
  scripts/testnet-maps.py cut /tmp/metro1000-s1.txt --centre 3 --count 48 > /tmp/metro48.txt

  # 2. with a testnet of process nodes on that matrix up and settled
  #    (brume testnet up --nodes 48 --processes --rtt-matrix /tmp/metro48.txt --name m17; sleep 40),
  #    map from every third node at each budget with `brume map --fresh --json` and score
  #    each map against the matrix: recall and precision by direct RTT
  scripts/testnet-maps.py measure --net m17 --matrix /tmp/metro48.txt --brume target/release/brume

The truth of a map from host o with budget B is every host whose emulated RTT from o is at
most B. The testnet's router never delivers sooner than a pair's RTT, so every RTT a daemon
measures is at least the emulated one: a host on the budget's edge may be measured beyond it
(`edge` counts the misses within 2 ms of B).
"""

import argparse
import json
import statistics
import subprocess
import sys
import time


def read_matrix(path):
    rows = [line.split() for line in open(path) if line.strip() and not line.startswith("#")]
    m = [[float(x) for x in r] for r in rows]
    if any(len(r) != len(m) for r in m):
        sys.exit(f"{path}: not a square matrix")
    return m


def cut(args):
    m = read_matrix(args.matrix)
    if not 0 <= args.centre < len(m) or not 0 < args.count <= len(m):
        sys.exit(f"--centre must be below {len(m)} and --count at most {len(m)}")
    near = sorted(range(len(m)), key=lambda j: m[args.centre][j])[: args.count]
    print(f"# the {args.count} hosts nearest host {args.centre} of {args.matrix}; RTT in ms")
    for a in near:
        print(" ".join(f"{m[a][b]:.3f}" for b in near))


def one_map(args, net, o, budget, n, m):
    control = f"/run/brume-testnet/nets/{net}/node-{o}/control.sock"
    started = time.monotonic()
    p = subprocess.run(
        [args.brume, "map", "--control", control, "--budget", f"{budget}ms", "--fresh", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    ms = (time.monotonic() - started) * 1000
    if p.returncode != 0:
        return {"budget": budget, "origin": o, "error": p.stderr.strip()[-300:]}
    got_map = json.loads(p.stdout)
    prefix = f"brume-tn-{net}-"
    index = {
        r["id"]: int(r["name"][len(prefix):])
        for r in got_map["nodes"]
        if (r.get("name") or "").startswith(prefix)
    }
    got = {index[r["id"]] for r in got_map["nodes"] if r["id"] in index} - {o}
    truth = {j for j in range(n) if j != o and m[o][j] <= budget}
    hows = {}
    for proof in got_map["proofs"]:
        hows[proof["how"]] = hows.get(proof["how"], 0) + 1
    missed = truth - got
    return {
        "budget": budget,
        "origin": o,
        "truth": len(truth),
        "got": len(got),
        "hit": len(got & truth),
        "beyond": sorted(got - truth),
        "edge": sum(1 for j in missed if m[o][j] > budget - 2),
        "ms": round(ms),
        "hows": hows,
    }


def probe_totals(args, origins):
    """How the origins' probes were answered so far (`brume status`), summed over the origins."""
    totals = {}
    for o in origins:
        control = f"/run/brume-testnet/nets/{args.net}/node-{o}/control.sock"
        p = subprocess.run(
            [args.brume, "status", "--control", control, "--json"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if p.returncode != 0:
            continue
        for k, v in (json.loads(p.stdout).get("probes") or {}).items():
            totals[k] = totals.get(k, 0) + v
    return totals


def measure(args):
    m = read_matrix(args.matrix)
    n = len(m)
    origins = range(0, n, args.every)
    results = []
    probes = {}
    before = probe_totals(args, origins)
    for budget in args.budgets:
        for o in origins:
            for attempt in range(args.repeat):
                r = one_map(args, args.net, o, budget, n, m)
                r["attempt"] = attempt
                results.append(r)
                print(json.dumps(r), flush=True)
        after = probe_totals(args, origins)
        probes[budget] = {k: v - before.get(k, 0) for k, v in after.items()}
        before = after
    print()
    for budget in args.budgets:
        for attempt in range(args.repeat):
            which = [r for r in results if r["budget"] == budget and r["attempt"] == attempt]
            rs = [r for r in which if "error" not in r]
            errors = len(which) - len(rs)
            truth = sum(r["truth"] for r in rs)
            hit = sum(r["hit"] for r in rs)
            got = sum(r["got"] for r in rs)
            label = f"B={budget} ms" if args.repeat == 1 else f"B={budget} ms, map {attempt + 1} of each origin"
            print(
                f"{label}: {len(rs)} maps ({errors} failed), recall {100 * hit / max(truth, 1):.2f}% "
                f"of {truth}, precision {100 * hit / max(got, 1):.2f}%, missed within 2 ms of B "
                f"{sum(r['edge'] for r in rs)}, median map {statistics.median([r['ms'] for r in rs]) if rs else 0:.0f} ms"
            )
        print(f"B={budget} ms: probes answered by {probes.get(budget) or 'unknown (an older brume)'}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("cut", help="write the hosts nearest one host as a smaller matrix")
    c.add_argument("matrix")
    c.add_argument("--centre", type=int, required=True)
    c.add_argument("--count", type=int, required=True)
    c.set_defaults(run=cut)
    s = sub.add_parser("measure", help="map from a testnet's nodes and score the maps")
    s.add_argument("--net", required=True, help="the testnet's name (brume testnet up --name)")
    s.add_argument("--matrix", required=True, help="the RTT matrix the testnet was started with")
    s.add_argument("--brume", default="brume", help="the brume program (default: on PATH)")
    s.add_argument("--budgets", type=int, nargs="+", default=[25, 50, 80])
    s.add_argument("--every", type=int, default=3, help="map from every this many-th node")
    s.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="maps in a row from each origin at each budget, reported apart (an origin's first "
        "map dials what later ones may find connected)",
    )
    s.set_defaults(run=measure)
    args = ap.parse_args()
    args.run(args)


if __name__ == "__main__":
    main()
