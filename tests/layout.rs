//! The source tree keeps the shape DESIGN.md gives it: modules import only modules below them
//! (token and source, then the cache, then placement, challenge and replay, then the
//! middleware, then gRPC and the OAuth 2.0 grants), and no file holds more than about 600 lines
//! of code, tests aside.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

/// Each top-level module and its level: a module may use modules of a lower level only (those
/// of level 0 are the vocabulary every module shares).
const LEVELS: &[(&str, u8)] = &[
    ("error", 0),
    ("key", 0),
    ("metrics", 0),
    ("shown", 0),
    ("token", 0),
    ("jose", 1),
    ("source", 1),
    ("stamp", 1),
    ("cache", 2),
    ("dpop", 2),
    ("challenge", 3),
    ("origin", 3),
    ("placement", 3),
    ("replay", 3),
    ("auth", 4),
    ("grpc", 5),
    ("oauth2", 5),
    ("shared", 5),
    ("workload", 6),
];

/// The most lines of code (not blank, not comments) a source file may hold, tests aside.
const MAX_CODE_LINES: usize = 600;

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file of `src/` belongs to.
fn module_of(src: &Path, file: &Path) -> String {
    let relative = file.strip_prefix(src).unwrap();
    let first = relative.components().next().unwrap();
    first
        .as_os_str()
        .to_str()
        .unwrap()
        .trim_end_matches(".rs")
        .to_owned()
}

/// The code of a file, without the inline test module that closes it.
fn code(text: &str) -> &str {
    match text.find("#[cfg(test)]\nmod tests {") {
        Some(at) => &text[..at],
        None => text,
    }
}

/// The names `lib.rs` re-exports, and the module each comes from.
fn reexports(lib: &str) -> HashMap<String, String> {
    let mut names = HashMap::new();
    for line in lib.lines() {
        let Some(rest) = line.strip_prefix("pub use ") else {
            continue;
        };
        let (module, items) = rest.split_once("::").unwrap();
        let items = items
            .trim_end_matches(';')
            .trim_matches(|c| c == '{' || c == '}');
        for item in items.split(',') {
            names.insert(item.trim().to_owned(), module.to_owned());
        }
    }
    names
}

/// The top-level modules a piece of code refers to through `crate::`.
fn uses(code: &str, reexported: &HashMap<String, String>) -> Vec<String> {
    let mut found = Vec::new();
    for line in code.lines() {
        let line = line.trim_start();
        if line.starts_with("//") {
            continue;
        }
        let mut rest = line;
        while let Some(at) = rest.find("crate::") {
            rest = &rest[at + "crate::".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if name.is_empty() {
                // `use crate::{A, B}`: each name is a re-export or a module.
                let group = rest.trim_start_matches('{');
                let group = &group[..group.find('}').unwrap_or(group.len())];
                for item in group.split(',') {
                    let item = item.trim();
                    let head = item.split("::").next().unwrap_or("");
                    found.push(reexported.get(head).cloned().unwrap_or(head.to_owned()));
                }
            } else {
                found.push(reexported.get(&name).cloned().unwrap_or(name));
            }
        }
    }
    found.retain(|name| !name.is_empty() && name != "BoxError");
    found
}

#[test]
fn modules_use_only_the_modules_below_them() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let level: HashMap<&str, u8> = LEVELS.iter().copied().collect();
    let reexported = reexports(&fs::read_to_string(src.join("lib.rs")).unwrap());
    let mut files = Vec::new();
    sources(&src, &mut files);
    let mut upward = Vec::new();
    for file in &files {
        let module = module_of(&src, file);
        if module == "lib" {
            continue;
        }
        let own = *level
            .get(module.as_str())
            .unwrap_or_else(|| panic!("module {module} has no level in LEVELS"));
        let text = fs::read_to_string(file).unwrap();
        for used in uses(code(&text), &reexported) {
            if used == module {
                continue;
            }
            let theirs = *level.get(used.as_str()).unwrap_or_else(|| {
                panic!("{} uses crate::{used}, which has no level", file.display())
            });
            if theirs > own || (theirs == own && own > 0) {
                upward.push(format!("{} ({module}) uses {used}", file.display()));
            }
        }
    }
    upward.sort();
    upward.dedup();
    assert!(
        upward.is_empty(),
        "imports against the order:\n{}",
        upward.join("\n")
    );
}

#[test]
fn no_file_holds_more_than_600_lines_of_code() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let mut long = Vec::new();
    for file in &files {
        if file.file_name().is_some_and(|name| name == "tests.rs") {
            continue;
        }
        let text = fs::read_to_string(file).unwrap();
        let lines = code(&text)
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty() && !line.starts_with("//"))
            .count();
        if lines > MAX_CODE_LINES {
            long.push(format!("{}: {lines} lines of code", file.display()));
        }
    }
    assert!(files.len() > 20, "found {files:?}");
    assert!(
        long.is_empty(),
        "files over {MAX_CODE_LINES} lines of code:\n{}",
        long.join("\n")
    );
}
