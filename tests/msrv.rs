//! The `rust-version` in Cargo.toml is true of the dependency tree: no dependency that a build of
//! this crate compiles (default features, the host's platform) declares a newer `rust-version`.
//! (It may be newer than theirs if the crate's own code needs it.) The features that integrate
//! another framework (`tonic`, `axum`) need what that framework needs, as the README says.
//!
//! Only one toolchain can be installed here, so the crate cannot be built with the stated
//! version itself; this compares it with what the dependencies declare of themselves, using
//! cargo's own view of the locked tree (`cargo tree` for what is built, `cargo metadata` for
//! each package's `rust-version`). Clippy's `incompatible_msrv` lint, which `scripts/test.sh`
//! runs with `-D warnings`, checks the crate's own use of the standard library against it.

use std::collections::HashMap;
use std::process::Command;

use serde_json::Value;

fn cargo(args: &[&str]) -> String {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let output = Command::new(cargo)
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo runs");
    assert!(
        output.status.success(),
        "cargo {args:?} failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("UTF-8")
}

/// `1.85`, `1.85.0` → `(1, 85, 0)`.
fn version(text: &str) -> (u64, u64, u64) {
    let mut parts = text.split('.').map(|part| part.parse::<u64>().expect(text));
    let major = parts.next().expect(text);
    (major, parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

#[test]
fn rust_version_covers_every_dependency_that_is_built() {
    let metadata: Value = serde_json::from_str(&cargo(&[
        "metadata",
        "--format-version",
        "1",
        "--all-features",
        "--locked",
    ]))
    .expect("cargo metadata's JSON");
    let packages = metadata["packages"].as_array().expect("packages");
    let declared: HashMap<(String, String), Option<String>> = packages
        .iter()
        .map(|package| {
            let key = (
                package["name"].as_str().unwrap().to_owned(),
                package["version"].as_str().unwrap().to_owned(),
            );
            (key, package["rust_version"].as_str().map(str::to_owned))
        })
        .collect();
    let ours = packages
        .iter()
        .find(|package| package["name"] == "tower-bearer")
        .and_then(|package| package["rust_version"].as_str())
        .expect("Cargo.toml states a rust-version");

    // What a build of the library compiles: normal and build dependencies, default features,
    // dev-dependencies (and the features only they turn on) left out.
    let tree = cargo(&[
        "tree",
        "--locked",
        "--edges",
        "normal,build",
        "--prefix",
        "none",
        "--format",
        "{p}",
    ]);
    let mut built: Vec<(String, String)> = tree
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            let name = words.next()?;
            let version = words.next()?.strip_prefix('v')?;
            Some((name.to_owned(), version.to_owned()))
        })
        .filter(|(name, _)| name != "tower-bearer")
        .collect();
    built.sort();
    built.dedup();
    assert!(built.len() > 20, "cargo tree listed {built:?}");

    let needed = built
        .iter()
        .filter_map(|key| {
            let stated = declared
                .get(key)
                .unwrap_or_else(|| panic!("{key:?} in metadata"));
            Some((version(stated.as_deref()?), key))
        })
        .max()
        .expect("some dependency states a rust-version");
    assert!(
        version(ours) >= needed.0,
        "Cargo.toml says rust-version = {ours:?}, but {} {} needs {}.{}.{}",
        needed.1 .0,
        needed.1 .1,
        needed.0 .0,
        needed.0 .1,
        needed.0 .2
    );
}
