#!/usr/bin/env bash
# Runs the benchmarks of BENCHMARKS.md and prints one table: benchmark, ratio, target, met.
#
#   scripts/bench.sh            full mode: criterion's default warm-up and measurement times
#   scripts/bench.sh --quick    quick mode (the default when CI is set): 1 s warm-up, 2 s
#                               measurement per benchmark; under 5 minutes on 2 cores once built
#   scripts/bench.sh --table    only print the table from the last run's results
#   scripts/bench.sh [--quick] request_path storms ...   only these benchmark files
#   --strict                    exit 1 when a target is missed
#
# Ratios are computed from the median point estimates in
# target/criterion/<group>/<benchmark>/new/estimates.json. The storms benchmarks print a line
# `STORM_SOURCE_CALLS <benchmark> <calls per storm> <storms>`, read from the log.
set -euo pipefail
cd "$(dirname "$0")/.."

mode=full
[[ -n "${CI:-}" ]] && mode=quick
strict=0
run=1
benches=()
for arg in "$@"; do
    case "$arg" in
        --quick) mode=quick ;;
        --full) mode=full ;;
        --strict) strict=1 ;;
        --table) run=0 ;;
        -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
        -*) echo "unknown option: $arg" >&2; exit 2 ;;
        *) benches+=("$arg") ;;
    esac
done
((${#benches[@]})) || benches=(request_path contention storms loopback acquisition)

target_dir=$(cargo metadata --format-version 1 --no-deps 2>/dev/null |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
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
            grep -E '^[a-z0-9_]+/[a-z0-9_]+ +time:|^ +time:|STORM_SOURCE_CALLS|PAIRED|panicked'
        status=${PIPESTATUS[0]}
        set -e
        if [[ $status -ne 0 ]]; then
            echo "benchmark $bench failed; see $log_dir/$bench.log" >&2
            exit 1
        fi
        echo "    $bench took $((SECONDS - start)) s"
    done
    echo "$mode" >"$log_dir/mode"
    echo "==> load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
    busy=$(ps -eo pcpu=,comm= --sort=-pcpu | awk '$1 >= 20 {printf "%s%s (%s%%)", sep, $2, $1; sep=", "}')
    [[ -z $busy ]] || echo "    warning: busy processes at the end: $busy"
fi

CRITERION_DIR="$criterion_dir" LOG_DIR="$log_dir" STRICT="$strict" MODE="$mode" python3 - <<'EOF'
import json, os, re, sys

crit, logs = os.environ["CRITERION_DIR"], os.environ["LOG_DIR"]

def median(group, bench):
    path = os.path.join(crit, group, bench, "new", "estimates.json")
    try:
        with open(path) as f:
            return json.load(f)["median"]["point_estimate"]
    except (OSError, KeyError, ValueError):
        return None

def calls(name):
    path = os.path.join(logs, name.split("/")[0] + ".log")
    try:
        text = open(path).read()
    except OSError:
        return None
    found = re.findall(r"^STORM_SOURCE_CALLS %s (\d+) (\d+)$" % re.escape(name), text, re.M)
    return (int(found[-1][0]), int(found[-1][1])) if found else None

def paired(group, num, den):
    """The paired check's median time ratio num/den, from the log (None if absent)."""
    path = os.path.join(logs, group + ".log")
    try:
        text = open(path).read()
    except OSError:
        return None
    found = re.findall(r"^PAIRED %s/%s:%s ([0-9.]+) \d+$" % (group, num, den), text, re.M)
    return float(found[-1]) if found else None

def ns(v):
    if v is None:
        return "-"
    for unit, scale in (("s", 1e9), ("ms", 1e6), ("µs", 1e3)):
        if v >= scale:
            return "%.3g %s" % (v / scale, unit)
    return "%.3g ns" % v

rows, missed = [], 0

def row(name, value, target, ok, detail="", check="-", check_ok=None):
    """`ok` judges criterion's ratio; when the paired check disagrees, `met` says so."""
    global missed
    met = "-" if ok is None else ("yes" if ok else "NO")
    if ok is not None and check_ok is not None and check_ok != ok:
        met += " (paired: %s)" % ("yes" if check_ok else "no")
    if ok is False:
        missed += 1
    rows.append((name, value, target, met, check, detail))

def time_ratio(label, group, num, den, limit):
    """num/den of median times; met if <= limit (limit None: for information)."""
    a, b = median(group, num), median(group, den)
    if a is None or b is None:
        row(label, "missing", "≤ %.2f" % limit if limit else "", False if limit else None)
        return
    r = a / b
    p = paired(group, num, den)
    row(label, "%.3f" % r, ("≤ %.2f" % limit) if limit else "(info)",
        (r <= limit) if limit else None, "%s vs %s" % (ns(a), ns(b)),
        "-" if p is None else "%.3f" % p, (p <= limit) if limit and p else None)

def throughput_ratio(label, group, ours, base, limit):
    """Throughput of `ours` relative to `base` (= base time / our time); met if >= limit."""
    a, b = median(group, ours), median(group, base)
    if a is None or b is None:
        row(label, "missing", "≥ %.2f" % limit if limit else "", False if limit else None)
        return
    r = b / a
    p = paired(group, ours, base)
    row(label, "%.3f" % r, ("≥ %.2f" % limit) if limit else "(info)",
        (r >= limit) if limit else None, "%s vs %s" % (ns(a), ns(b)),
        "-" if p is None else "%.3f" % (1 / p), (1 / p >= limit) if limit and p else None)

def paired_only(label, group, ours, base):
    """A paired check with no criterion counterpart, shown as throughput (base time / ours)."""
    p = paired(group, ours, base)
    row(label, "-", "(info)", None, "paired check only",
        "-" if p is None else "%.3f" % (1 / p))

def paired_only_time(label, group, num, den):
    """A paired check with no criterion counterpart, shown as a time ratio."""
    p = paired(group, num, den)
    row(label, "-", "(info)", None, "paired check only", "-" if p is None else "%.3f" % p)

def storm(label, name, base):
    c = calls("storms/" + name)
    a, b = median("storms", name), median("storms", base)
    detail = "drain %s (%.2f × %s: %s)" % (ns(a), a / b, base, ns(b)) if a and b else ""
    if c is None:
        row(label, "missing", "= 1 call", False, detail)
    else:
        row(label, "%d call%s" % (c[0], "" if c[0] == 1 else "s"), "= 1 call", c[0] == 1,
            detail + ", %d storms" % c[1])

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
paired_only_time("1. A/A: AddAuthorization / itself (the check's own noise)", "request_path",
                 "add_authorization", "add_authorization")
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
paired_only("2. contention, A/A: AddAuthorization / itself (the check's own noise)",
            "contention", "add_authorization", "add_authorization")
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
paired_only("4. HTTP/1.1, A/A: bare / itself (the check's own noise)",
            "loopback", "http1_bare", "http1_bare")
throughput_ratio("4. HTTP/2: layer / static AddAuthorization header", "loopback",
                 "http2_bearer", "http2_add_authorization", None)
throughput_ratio("4. HTTP/2: static AddAuthorization header / bare", "loopback",
                 "http2_add_authorization", "http2_bare", None)
throughput_ratio("4. HTTP/2: same header, indexable (not sensitive) / bare", "loopback",
                 "http2_add_authorization_indexed", "http2_bare", None)
throughput_ratio("4. HTTP/2: static header sensitive / indexable", "loopback",
                 "http2_add_authorization", "http2_add_authorization_indexed", None)
throughput_ratio("5. client credentials: speed / oauth2 crate", "acquisition",
                 "tower_bearer", "oauth2_crate", 1.00)

head = ("benchmark", "ratio", "target", "met", "paired", "medians (ours vs reference)")
w = [max(len(r[i]) for r in rows + [head]) for i in range(5)]
print()
try:
    mode = open(os.path.join(logs, "mode")).read().strip()
except OSError:
    mode = "unknown"
print("mode: %s; ratio from criterion's median estimates; paired = median ratio of the same "
      "work run alternately in one process (a check on drift)" % mode)
print("| " + " | ".join(h.ljust(w[i]) if i < 5 else h for i, h in enumerate(head)) + " |")
print("|" + "|".join("-" * (x + 2) for x in w) + "|---|")
for r in rows:
    print("| " + " | ".join(c.ljust(w[i]) if i < 5 else c for i, c in enumerate(r)) + " |")
print()
print("targets missed (criterion's ratio): %d" % missed)
if missed and os.environ["STRICT"] == "1":
    sys.exit(1)
EOF
