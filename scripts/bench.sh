#!/usr/bin/env bash
# Runs the benchmarks of BENCHMARKS.md and prints one table: benchmark, target, verdict, paired
# ratio with its spread, criterion's ratio.
#
#   scripts/bench.sh            full mode: criterion's default warm-up and measurement times
#   scripts/bench.sh --quick    quick mode (the default when CI is set): 1 s warm-up, 2 s
#                               measurement per benchmark; about 4 minutes on 2 cores once built
#   scripts/bench.sh --table    only print the table from the last run's results
#   scripts/bench.sh [--quick] request_path storms ...   only these benchmark files
#   --strict                    exit 1 when a target is missed (not when it is inconclusive)
#   scripts/bench.sh --self-test   checks the table's verdicts on made-up results (no build, no
#                               benchmark; BENCH_SCRIPT=<other script> checks that one instead)
#
# Each target's verdict comes from its paired check (`PAIRED` lines in the logs, see
# benches/common/paired.rs): met when the whole confidence interval of the paired ratio (97.5 %)
# is on the good side of the target, missed when it is all on the bad side, inconclusive
# otherwise. Criterion's ratio, from the median point estimates in
# target/criterion/<group>/<benchmark>/new/estimates.json, is shown for information. The storms
# benchmarks (and destinations' storm, whose target is 100 calls, one per key) print
# `STORM_SOURCE_CALLS <benchmark> <calls per storm> <storms>` in their log.
set -euo pipefail
cd "$(dirname "$0")/.."

mode=full
[[ -n "${CI:-}" ]] && mode=quick
strict=0
run=1
self_test=0
benches=()
for arg in "$@"; do
    case "$arg" in
        --quick) mode=quick ;;
        --full) mode=full ;;
        --strict) strict=1 ;;
        --table) run=0 ;;
        --self-test) self_test=1 ;;
        -h|--help) sed -n '2,/^set /{/^#/p}' "$0"; exit 0 ;;
        -*) echo "unknown option: $arg" >&2; exit 2 ;;
        *) benches+=("$arg") ;;
    esac
done
if ((self_test)); then
    # The table's verdicts on made-up results: criterion estimates and logs in a temporary target
    # directory, read by `--table` (of this script, or of $BENCH_SCRIPT).
    SCRIPT="${BENCH_SCRIPT:-$0}" python3 - <<'EOF'
import json, os, subprocess, sys, tempfile

script = os.path.abspath(os.environ["SCRIPT"])
failures = []

# Time ratios as the benchmarks print them: median, q1, q3, and the interval's low and high.
# Their throughput (den / num, all but request_path) inverts each value, so the bounds swap.
DECIDED = {
    # 1.05 in 1.03–1.07, all ≤ 1.10: met, although criterion's ratio (1.20) is over.
    "request_path/bearer_no_replay:add_authorization": (1.05, 1.04, 1.06, 1.03, 1.07),
    # 1.12–1.18, all > 1.10: missed, although criterion's ratio (1.05) is under.
    "request_path/bearer_replay:floor_replay": (1.15, 1.14, 1.16, 1.12, 1.18),
    "request_path/add_authorization:add_authorization": (1.0, 0.999, 1.001, 0.998, 1.002),
    # Throughput 0.952 in 0.926–0.971, around 0.95: inconclusive.
    "contention/bearer_replay:add_authorization": (1.05, 1.04, 1.06, 1.03, 1.08),
    # Throughput 1.031–1.075, all ≥ 0.95: met.
    "contention/bearer_no_replay:add_authorization": (0.95, 0.94, 0.96, 0.93, 0.97),
    "contention/add_authorization:add_authorization": (1.001, 0.998, 1.003, 0.995, 1.006),
    # Throughput 0.980 (IQR 0.971–0.990) in 0.952–1.000: inconclusive for ≥ 0.97. The time
    # interval 1.00–1.05 is all ≥ 0.97, and so is its lower bound inverted (1.000): a table
    # that does not invert, or inverts without swapping, says met.
    "loopback/http1_bearer:http1_bare": (1.02, 1.01, 1.03, 1.0, 1.05),
    # Throughput 0.893–0.926, all < 0.97: missed.
    "loopback/http2_bearer:http2_bare": (1.10, 1.09, 1.11, 1.08, 1.12),
    "loopback/http1_bare:http1_bare": (1.0, 0.997, 1.002, 0.995, 1.004),
    # An A/A check whose interval excludes 1.
    "loopback/http2_bare:http2_bare": (1.01, 1.007, 1.013, 1.005, 1.02),
    # Speed 1.124–1.176, all ≥ 1.00: met.
    "acquisition/tower_bearer:oauth2_crate": (0.87, 0.86, 0.88, 0.85, 0.89),
    "acquisition/tower_bearer:tower_bearer": (1.0, 0.99, 1.01, 0.98, 1.02),
    # 1.08 in 1.06–1.10, all ≤ 1.15: met; criterion's ratio (1.30) would say missed.
    "destinations/keyed_no_replay:add_authorization": (1.08, 1.07, 1.09, 1.06, 1.10),
    "destinations/bearer_no_replay:add_authorization": (1.06, 1.05, 1.07, 1.04, 1.08),
    "destinations/add_authorization:add_authorization": (1.0, 0.99, 1.01, 0.98, 1.02),
    # Throughput 0.99–1.01 of one key's, all ≥ 0.95: met.
    "destinations/contention_100_keys:contention_one_key": (1.0, 0.995, 1.005, 0.99, 1.01),
}
# The same with neither miss: 1.08–1.12 straddles 1.10, throughput 0.962–1.000 straddles 0.97.
UNDECIDED = dict(DECIDED)
UNDECIDED["request_path/bearer_replay:floor_replay"] = (1.10, 1.09, 1.11, 1.08, 1.12)
UNDECIDED["loopback/http2_bearer:http2_bare"] = (1.02, 1.01, 1.03, 1.0, 1.04)
CRITERION = {  # ns
    "request_path": {"bearer_no_replay": 600, "add_authorization": 500, "bearer_replay": 525,
                     "floor_replay": 500},
    "contention": {"bearer_replay": 9e6, "bearer_no_replay": 8e6, "add_authorization": 8.5e6},
    "storms": {"expired_10000": 28e6, "fresh_10000": 22e6, "rejected_1000": 6e6,
               "accepted_1000": 2.4e6},
    "loopback": {"http1_bearer": 6.1e6, "http1_bare": 5.9e6, "http2_bearer": 7e6,
                 "http2_bare": 5.5e6},
    "acquisition": {"tower_bearer": 117e3, "oauth2_crate": 134e3},
    "destinations": {"keyed_no_replay": 650, "bearer_no_replay": 530, "add_authorization": 500,
                     "contention_100_keys": 9e6, "contention_one_key": 9e6,
                     "storm_expired_10000_100_keys": 40e6, "storm_fresh_10000_100_keys": 25e6},
}

def table(checks, *args, ran=None):
    """Writes the results (of the files in `ran`, if given) into a temporary target directory;
    returns --table's exit code and output."""
    with tempfile.TemporaryDirectory() as target:
        for group, benches in CRITERION.items():
            for bench, ns in benches.items():
                path = os.path.join(target, "criterion", group, bench, "new")
                os.makedirs(path)
                with open(os.path.join(path, "estimates.json"), "w") as f:
                    json.dump({"median": {"point_estimate": ns}}, f)
        logs = os.path.join(target, "bench-logs")
        os.makedirs(logs)
        with open(os.path.join(logs, "mode"), "w") as f:
            f.write("quick\n")
        if ran:
            with open(os.path.join(logs, "benches"), "w") as f:
                f.write(" ".join(ran) + "\n")
        for group in CRITERION:
            with open(os.path.join(logs, group + ".log"), "w") as f:
                for label, (m, q1, q3, lo, hi) in checks.items():
                    if label.startswith(group + "/"):
                        f.write("PAIRED %s %.4f 640 q1=%.4f q3=%.4f ci=%.4f..%.4f blocks=16\n"
                                % (label, m, q1, q3, lo, hi))
                if group == "storms":
                    f.write("STORM_SOURCE_CALLS storms/expired_10000 1 45\n")
                    f.write("STORM_SOURCE_CALLS storms/rejected_1000 1 357\n")
                if group == "destinations":
                    # One source call per key: 100 per storm is the target, not 1.
                    f.write("STORM_SOURCE_CALLS "
                            "destinations/storm_expired_10000_100_keys 100 12\n")
        run = subprocess.run([script, "--table", *args], capture_output=True, text=True,
                             env=dict(os.environ, CARGO_TARGET_DIR=target))
        return run.returncode, run.stdout + run.stderr

def cells(output):
    """The table's rows by benchmark name, each a dict by column name."""
    lines = [l for l in output.splitlines() if l.startswith("| ")]
    if not lines:
        return {}
    split = lambda l: [c.strip() for c in l.strip().strip("|").split("|")]
    head = split(lines[0])
    return {r[0]: dict(zip(head, r)) for r in map(split, lines[1:])}

def expect(what, got, want):
    if got != want:
        failures.append("%s: %r, expected %r" % (what, got, want))

status, out = table(DECIDED)
rows = cells(out)
expect("exit code without --strict", status, 0)
for prefix, column, want in [
    ("1. cached path, replay off", "verdict", "met"),
    ("1. cached path, replay on", "verdict", "missed"),
    ("1. A/A", "verdict", "1 inside CI"),
    ("1. A/A", "paired CI", "0.998–1.002"),
    ("2. contention, replay on", "verdict", "inconclusive"),
    ("2. contention, replay off", "verdict", "met"),
    ("2. contention, replay off", "paired CI", "1.031–1.075"),
    ("3. storm: 10,000", "verdict", "met"),
    ("4. loopback HTTP/1.1", "verdict", "inconclusive"),
    ("4. loopback HTTP/1.1", "paired", "0.980"),
    ("4. loopback HTTP/1.1", "paired IQR", "0.971–0.990"),
    ("4. loopback HTTP/1.1", "paired CI", "0.952–1.000"),
    ("4. loopback HTTP/2: throughput", "verdict", "missed"),
    ("4. HTTP/1.1, A/A", "verdict", "1 inside CI"),
    ("4. HTTP/2, A/A", "verdict", "CI excludes 1"),
    ("4. HTTP/2, A/A", "paired CI", "0.980–0.995"),
    ("5. client credentials", "verdict", "met"),
    ("5. client credentials", "paired CI", "1.124–1.176"),
    ("5. A/A", "verdict", "1 inside CI"),
    ("6. 100 destinations, origin table", "verdict", "met"),
    ("6. 100 destinations, origin table", "criterion", "1.300"),
    ("6. one key, single-key layer", "verdict", "met"),
    ("6. contention, 256 tasks over 100 keys", "verdict", "met"),
    ("6. contention, 256 tasks over 100 keys", "paired CI", "0.990–1.010"),
    ("6. storm: 10,000 requests over 100 expired keys", "verdict", "met"),
    ("6. storm: 10,000 requests over 100 expired keys", "criterion", "100 calls"),
    ("6. storm: 10,000 requests over 100 expired keys", "target", "= 100 calls"),
    ("6. A/A", "verdict", "1 inside CI"),
]:
    row = [r for name, r in rows.items() if name.startswith(prefix)]
    expect("%s, %s" % (prefix, column), row[0].get(column) if row else None, want)
expect("summary", "targets: 9 met, 2 missed, 2 inconclusive, 0 without a paired check" in out, True)
expect("A/A warning", 'warning: the interval of "4. HTTP/2, A/A' in out, True)
expect("exit code of --strict with a miss", table(DECIDED, "--strict")[0], 1)

status, out = table(UNDECIDED, "--strict", ran=["request_path", "loopback"])
rows = cells(out)
expect("exit code of --strict with inconclusive targets and no miss", status, 0)
for prefix in ("1. cached path, replay on", "4. loopback HTTP/2: throughput"):
    row = [r for name, r in rows.items() if name.startswith(prefix)]
    expect("%s, undecided" % prefix, row[0].get("verdict") if row else None, "inconclusive")
expect("rows of the files not run", [n for n in rows if n[:2] in ("2.", "3.", "5.", "6.")], [])
expect("summary of request_path and loopback",
       "targets: 1 met, 0 missed, 3 inconclusive, 0 without a paired check" in out, True)

if failures:
    print(out)
    print("self-test of %s failed:" % script)
    print("\n".join("  " + f for f in failures))
    sys.exit(1)
print("self-test passed: the table's verdicts on made-up results (%s)" % script)
EOF
    exit
fi
((${#benches[@]})) || benches=(request_path contention storms loopback acquisition destinations)

target_dir=${CARGO_TARGET_DIR:-$(cargo metadata --format-version 1 --no-deps 2>/dev/null |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')}
criterion_dir="$target_dir/criterion"
log_dir="$target_dir/bench-logs"
mkdir -p "$log_dir"

criterion_args=(--noplot)
if [[ $mode == quick ]]; then
    criterion_args+=(--warm-up-time 1 --measurement-time 2)
fi

if ((run)); then
    echo "==> machine: $(nproc) cores, $(lscpu | sed -n 's/^Model name: *//p' | head -1), $(rustc -V)"
    echo "==> load average before: $(cut -d' ' -f1-3 /proc/loadavg) (other work on the machine skews every number)"
    busy=$(ps -eo pcpu=,comm= --sort=-pcpu | awk '$1 >= 20 {printf "%s%s (%s%%)", sep, $2, $1; sep=", "}')
    [[ -z $busy ]] || echo "    warning: busy processes besides this run: $busy"
    echo "==> building the benchmarks: cargo bench --all-features --no-run ${benches[*]/#/--bench=}"
    start=$SECONDS
    # Built once, then run directly: sources edited during the run cannot trigger a rebuild
    # between two benchmarks.
    cargo bench --all-features --no-run --message-format=json "${benches[@]/#/--bench=}" \
        >"$log_dir/build.json"
    echo "    built in $((SECONDS - start)) s"
    for bench in "${benches[@]}"; do
        exe=$(BENCH="$bench" python3 -c '
import json, os, sys
for line in open(sys.argv[1]):
    m = json.loads(line)
    t = m.get("target", {})
    if m.get("reason") == "compiler-artifact" and "bench" in t.get("kind", []) \
            and t.get("name") == os.environ["BENCH"] and m.get("executable"):
        print(m["executable"])' "$log_dir/build.json" | tail -n 1)
        [[ -n $exe ]] || { echo "no executable for bench $bench" >&2; exit 1; }
        echo "==> $bench ($mode): $exe --bench ${criterion_args[*]}"
        rm -rf "${criterion_dir:?}/$bench"
        start=$SECONDS
        set +e
        CRITERION_HOME="$criterion_dir" "$exe" --bench "${criterion_args[@]}" 2>&1 |
            tee "$log_dir/$bench.log" |
            grep -E '^[a-z0-9_]+/[a-z0-9_]+ +time:|^ +time:|STORM_SOURCE_CALLS|^PAIRED |panicked'
        status=${PIPESTATUS[0]}
        set -e
        if [[ $status -ne 0 ]]; then
            echo "benchmark $bench failed; see $log_dir/$bench.log" >&2
            exit 1
        fi
        echo "    $bench took $((SECONDS - start)) s"
    done
    echo "$mode" >"$log_dir/mode"
    echo "${benches[*]}" >"$log_dir/benches"
    echo "==> load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
    busy=$(ps -eo pcpu=,comm= --sort=-pcpu | awk '$1 >= 20 {printf "%s%s (%s%%)", sep, $2, $1; sep=", "}')
    [[ -z $busy ]] || echo "    warning: busy processes at the end: $busy"
fi

CRITERION_DIR="$criterion_dir" LOG_DIR="$log_dir" STRICT="$strict" python3 - <<'EOF'
import json, os, re, sys

crit, logs = os.environ["CRITERION_DIR"], os.environ["LOG_DIR"]

def median(group, bench):
    path = os.path.join(crit, group, bench, "new", "estimates.json")
    try:
        with open(path) as f:
            return json.load(f)["median"]["point_estimate"]
    except (OSError, KeyError, ValueError):
        return None

def log(group):
    try:
        with open(os.path.join(logs, group + ".log")) as f:
            return f.read()
    except OSError:
        return ""

def calls(name):
    found = re.findall(r"^STORM_SOURCE_CALLS %s (\d+) (\d+)$" % re.escape(name),
                       log(name.split("/")[0]), re.M)
    return (int(found[-1][0]), int(found[-1][1])) if found else None

NUM = r"([0-9.]+|inf|nan)"

def paired(group, num, den, throughput):
    """The paired check of num against den from the log, or None: a dict of the median, the
    quartiles (q1, q3) and the confidence interval (lo, hi) of the time ratio num/den, converted to
    den/num when `throughput` (each value inverted, so the bounds swap)."""
    found = re.findall(r"^PAIRED %s/%s:%s %s (\d+) q1=%s q3=%s ci=%s\.\.%s blocks=(\d+)$"
                       % (group, num, den, NUM, NUM, NUM, NUM, NUM), log(group), re.M)
    if not found:
        return None
    m, rounds, q1, q3, lo, hi, blocks = found[-1]
    m, q1, q3, lo, hi = (float(x) for x in (m, q1, q3, lo, hi))
    if throughput:
        m, q1, q3, lo, hi = 1 / m, 1 / q3, 1 / q1, 1 / hi, 1 / lo
    return dict(median=m, q1=q1, q3=q3, lo=lo, hi=hi, rounds=int(rounds), blocks=int(blocks))

def ns(v):
    if v is None:
        return "-"
    for unit, scale in (("s", 1e9), ("ms", 1e6), ("µs", 1e3)):
        if v >= scale:
            return "%.3g %s" % (v / scale, unit)
    return "%.3g ns" % v

rows, verdicts, aa_off = [], [], []
try:
    # The files the last run ran: the table leaves out the rows of the others.
    with open(os.path.join(logs, "benches")) as f:
        ran = set(f.read().split())
except OSError:
    ran = None

def verdict(p, limit, at_most):
    """met when the whole interval is on the good side of `limit`, missed when it is all on the
    bad side, inconclusive when it straddles the limit."""
    if p is None:
        return "no paired check"
    if at_most:
        return "met" if p["hi"] <= limit else "missed" if p["lo"] > limit else "inconclusive"
    return "met" if p["lo"] >= limit else "missed" if p["hi"] < limit else "inconclusive"

def row(group, name, target, result, p, crit_ratio, detail):
    if ran is not None and group not in ran:
        return
    if result not in ("-", "1 inside CI", "CI excludes 1"):
        verdicts.append(result)
    spread = ("-", "-", "-") if p is None else (
        "%.3f" % p["median"], "%.3f–%.3f" % (p["q1"], p["q3"]), "%.3f–%.3f" % (p["lo"], p["hi"]))
    if p is not None:
        detail = (detail + "; " if detail else "") + "%d blocks, %d rounds" % (p["blocks"], p["rounds"])
    rows.append((name, target, result) + spread + (crit_ratio, detail))

def compare(label, group, ours, base, limit, throughput):
    a, b = median(group, ours), median(group, base)
    p = paired(group, ours, base, throughput)
    sign = "≥" if throughput else "≤"
    target = "%s %.2f" % (sign, limit) if limit else "(info)"
    result = verdict(p, limit, not throughput) if limit else "-"
    if a is None or b is None:
        row(group, label, target, result, p, "missing", "")
    else:
        r = b / a if throughput else a / b
        row(group, label, target, result, p, "%.3f" % r, "%s vs %s" % (ns(a), ns(b)))

def time_ratio(label, group, num, den, limit):
    """num/den of times; the target is met if the ratio is <= limit (None: for information)."""
    compare(label, group, num, den, limit, False)

def throughput_ratio(label, group, ours, base, limit):
    """Throughput of `ours` relative to `base` (base time / our time); met if >= limit."""
    compare(label, group, ours, base, limit, True)

def same(label, group, bench, throughput):
    """An A/A check: the same service on both sides, so 1 should lie inside its interval."""
    p = paired(group, bench, bench, throughput)
    result = "-"
    if p is not None:
        result = "1 inside CI" if p["lo"] <= 1 <= p["hi"] else "CI excludes 1"
        if result != "1 inside CI":
            aa_off.append(label)
    row(group, label, "(info)", result, p, "-", "paired check only")

def storm(label, name, base, group="storms", expected=1):
    """A storm: met when its source calls per storm (the most of any storm) are `expected`."""
    c = calls(group + "/" + name)
    a, b = median(group, name), median(group, base)
    detail = "drain %s (%.2f × %s: %s)" % (ns(a), a / b, base, ns(b)) if a and b else ""
    plural = lambda n: "%d call%s" % (n, "" if n == 1 else "s")
    if c is None:
        row(group, label, "= " + plural(expected), "missed", None, "missing", detail)
    else:
        row(group, label, "= " + plural(expected), "met" if c[0] == expected else "missed", None,
            plural(c[0]), detail + ", %d storms" % c[1])

time_ratio("1. cached path, replay off / AddAuthorization", "request_path",
           "bearer_no_replay", "add_authorization", 1.10)
time_ratio("1. cached path, replay on / hand-written floor with replay", "request_path",
           "bearer_replay", "floor_replay", 1.10)
time_ratio("1. hand-written floor / AddAuthorization", "request_path",
           "floor", "add_authorization", None)
time_ratio("1. floor with one plain atomic load / AddAuthorization", "request_path",
           "floor_local", "add_authorization", None)
time_ratio("1. Arc<Mutex<Option<Token>>> / AddAuthorization", "request_path",
           "mutex_cache", "add_authorization", None)
time_ratio("1. replay on / AddAuthorization", "request_path",
           "bearer_replay", "add_authorization", None)
time_ratio("1. cloned for every request, replay off / AddAuthorization cloned", "request_path",
           "bearer_no_replay_cloned", "add_authorization_cloned", None)
same("1. A/A: AddAuthorization / itself (the check's own noise)", "request_path",
     "add_authorization", False)
throughput_ratio("2. contention, replay on: throughput / AddAuthorization", "contention",
                 "bearer_replay", "add_authorization", 0.95)
throughput_ratio("2. contention, replay off: throughput / AddAuthorization", "contention",
                 "bearer_no_replay", "add_authorization", 0.95)
throughput_ratio("2. contention, floor (ArcSwap load) / AddAuthorization", "contention",
                 "floor", "add_authorization", None)
throughput_ratio("2. contention, floor with replay / AddAuthorization", "contention",
                 "floor_replay", "add_authorization", None)
throughput_ratio("2. contention, Arc<Mutex<..>> / AddAuthorization", "contention",
                 "mutex_cache", "add_authorization", None)
same("2. contention, A/A: AddAuthorization / itself (the check's own noise)",
     "contention", "add_authorization", True)
storm("3. storm: 10,000 requests on an expired token", "expired_10000", "fresh_10000")
storm("3. storm: 1,000 concurrent 401s for one token", "rejected_1000", "accepted_1000")
throughput_ratio("4. loopback HTTP/1.1: throughput / bare", "loopback",
                 "http1_bearer", "http1_bare", 0.97)
throughput_ratio("4. loopback HTTP/2: throughput / bare", "loopback",
                 "http2_bearer", "http2_bare", 0.97)
throughput_ratio("4. HTTP/1.1: layer / static AddAuthorization header", "loopback",
                 "http1_bearer", "http1_add_authorization", None)
throughput_ratio("4. HTTP/1.1: layer, replay off / static AddAuthorization header", "loopback",
                 "http1_bearer_no_replay", "http1_add_authorization", None)
throughput_ratio("4. HTTP/1.1: layer, replay off / bare", "loopback",
                 "http1_bearer_no_replay", "http1_bare", None)
throughput_ratio("4. HTTP/1.1: layer, replay on / replay off", "loopback",
                 "http1_bearer", "http1_bearer_no_replay", None)
same("4. HTTP/1.1, A/A: bare / itself (the check's own noise)", "loopback", "http1_bare", True)
throughput_ratio("4. HTTP/2: layer / static AddAuthorization header", "loopback",
                 "http2_bearer", "http2_add_authorization", None)
throughput_ratio("4. HTTP/2: static AddAuthorization header / bare", "loopback",
                 "http2_add_authorization", "http2_bare", None)
throughput_ratio("4. HTTP/2: same header, indexable (not sensitive) / bare", "loopback",
                 "http2_add_authorization_indexed", "http2_bare", None)
throughput_ratio("4. HTTP/2: static header sensitive / indexable", "loopback",
                 "http2_add_authorization", "http2_add_authorization_indexed", None)
same("4. HTTP/2, A/A: bare / itself (the check's own noise)", "loopback", "http2_bare", True)
throughput_ratio("5. client credentials: speed / oauth2 crate", "acquisition",
                 "tower_bearer", "oauth2_crate", 1.00)
same("5. A/A: this crate / itself (the check's own noise)", "acquisition", "tower_bearer", True)
time_ratio("6. 100 destinations, origin table, replay off / AddAuthorization", "destinations",
           "keyed_no_replay", "add_authorization", 1.15)
time_ratio("6. one key, single-key layer, replay off / AddAuthorization (same run)",
           "destinations", "bearer_no_replay", "add_authorization", 1.10)
time_ratio("6. 100 destinations by select, replay off / AddAuthorization", "destinations",
           "keyed_select_no_replay", "add_authorization", None)
time_ratio("6. the same layer, every request to one of its destinations / AddAuthorization",
           "destinations", "keyed_one_destination_no_replay", "add_authorization", None)
same("6. A/A: AddAuthorization / itself (the check's own noise)", "destinations",
     "add_authorization", False)
throughput_ratio("6. contention, 256 tasks over 100 keys: throughput / one key", "destinations",
                 "contention_100_keys", "contention_one_key", 0.95)
throughput_ratio("6. contention, 100 keys / single-key layer", "destinations",
                 "contention_100_keys", "contention_single_key", None)
throughput_ratio("6. contention, each task to the 100 keys in turn / one key", "destinations",
                 "contention_100_keys_mixed", "contention_one_key", None)
throughput_ratio("6. contention, 100 keys / AddAuthorization", "destinations",
                 "contention_100_keys", "contention_add_authorization", None)
storm("6. storm: 10,000 requests over 100 expired keys", "storm_expired_10000_100_keys",
      "storm_fresh_10000_100_keys", group="destinations", expected=100)

head = ("benchmark", "target", "verdict", "paired", "paired IQR", "paired CI", "criterion",
        "medians (ours vs reference)")
last = len(head) - 1
w = [max(len(r[i]) for r in rows + [head]) for i in range(last)]
print()
try:
    mode = open(os.path.join(logs, "mode")).read().strip()
except OSError:
    mode = "unknown"
print("mode: %s%s. Rows are time ratios (1.) or throughput ratios (the rest). paired: the "
      "median of the paired check's block medians (the same work run alternately in one "
      "process), their interquartile range, and a 97.5%% confidence interval of that median. "
      "verdict: met or missed when the whole interval is on one side of the target, "
      "inconclusive when it straddles it. criterion: the ratio of criterion's median estimates, "
      "for information." % (mode, "" if ran is None else ", files: " + ", ".join(sorted(ran))))
print("| " + " | ".join(h.ljust(w[i]) if i < last else h for i, h in enumerate(head)) + " |")
print("|" + "|".join("-" * (x + 2) for x in w) + "|---|")
for r in rows:
    print("| " + " | ".join(c.ljust(w[i]) if i < last else c for i, c in enumerate(r)) + " |")
print()
counts = {v: verdicts.count(v) for v in ("met", "missed", "inconclusive", "no paired check")}
print("targets: %d met, %d missed, %d inconclusive, %d without a paired check"
      % tuple(counts.values()))
for label in aa_off:
    print("warning: the interval of \"%s\" excludes 1: this run's intervals may be too narrow"
          % label)
if counts["missed"] and os.environ["STRICT"] == "1":
    sys.exit(1)
EOF
