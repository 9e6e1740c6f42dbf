#!/usr/bin/env bash
# Runs every check and test of tower-bearer, from a clean clone, with nothing installed by hand
# beyond Rust and Node.js: it installs the pinned test peers itself.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

if [[ -f tests/peers/package-lock.json ]]; then
    step "installing the test peers (npm ci, pinned by tests/peers/package-lock.json)"
    npm ci --prefix tests/peers --no-audit --no-fund --loglevel=error
fi

if ! command -v redis-server >/dev/null; then
    step "installing redis-server (tests/shared.rs, tests/metrics.rs and benches/shared.rs run a real one)"
    sudo=""
    if [[ $(id -u) -ne 0 ]]; then sudo="sudo"; fi
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends redis-server \
        || { $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -q \
            && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends redis-server; }
fi

if [[ ! -x "${CHROMIUM:-/usr/bin/chromium}" ]]; then
    step "installing chromium (tests/browser.rs signs in through headless Chromium, driven by puppeteer-core)"
    sudo=""
    if [[ $(id -u) -ne 0 ]]; then sudo="sudo"; fi
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium \
        || { $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -q \
            && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium; }
fi

step "cargo fmt --check"
cargo fmt --all --check

step "cargo clippy (all targets, all features, -D warnings)"
cargo clippy --all-targets --all-features -- -D warnings

step "the core without the OAuth 2.0 grants (--no-default-features: build, clippy, unit tests)"
cargo build --no-default-features
cargo clippy --no-default-features -- -D warnings
cargo test --no-default-features --lib
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --no-default-features

step "the library alone with the default features, and with oauth2 but no HTTP client"
# Tests and examples build the library with the dev-dependencies' features too (tokio's
# `full`): these builds catch a use of a feature the library does not ask for itself.
cargo build --lib
cargo check --lib --no-default-features --features oauth2

step "cargo doc (-D warnings)"
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --all-features

step "cargo test (unit, integration, doc tests, examples)"
cargo test --all-targets --all-features
cargo test --doc --all-features

step "benchmarks compile and run once each (cargo bench -- --test)"
if compgen -G "benches/*.rs" >/dev/null; then
    cargo bench --all-features -- --test
fi

step "the benchmark table's verdicts (scripts/bench.sh --self-test)"
scripts/bench.sh --self-test

step "demo"
cargo run --quiet --example demo

step "the examples of logins and workload identity, each alone on loopback"
for example in kubernetes gcp azure github_actions device; do
    cargo run --quiet --example "$example"
done

printf '\nall checks passed\n'
