//! docs/CONFIGURATION.md against `--help`: every variable a binary's
//! `--help` lists is in the reference under a heading naming that binary,
//! with the same default and unit, and the reference gives a binary no
//! variable its `--help` does not list.

use std::collections::BTreeMap;
use std::process::Command;

use crate::mesh::{BINARIES, binary};

/// A variable's default (`D`, or `unset: what then`) and unit.
type Listing = BTreeMap<String, (String, String)>;

/// The variables of `name --help`: the lines `  NAME (unit, default D)` or
/// `  NAME (unit, unset: what then)` after "Environment variables".
fn help(name: &str) -> Listing {
    let output = Command::new(binary(name)).arg("--help").output().unwrap();
    assert!(output.status.success(), "{name} --help: {output:?}");
    let text = String::from_utf8(output.stdout).unwrap();
    let (_, section) = text
        .split_once("Environment variables")
        .unwrap_or_else(|| panic!("{name} --help lists no variables:\n{text}"));
    let mut listing = Listing::new();
    for line in section.lines() {
        let Some((var, rest)) = line.strip_prefix("  ").and_then(|l| l.split_once(" (")) else {
            continue;
        };
        let Some((unit, default)) = rest.strip_suffix(')').and_then(|r| r.split_once(", ")) else {
            continue;
        };
        let default = default.strip_prefix("default ").unwrap_or(default);
        if is_variable(var) {
            listing.insert(var.to_owned(), (default.to_owned(), unit.to_owned()));
        }
    }
    listing
}

/// The variables docs/CONFIGURATION.md gives each binary: one table row
/// per variable (`` | `NAME` | `D` or unset: ... | unit | meaning | ``),
/// under a `##` heading that names the binaries the table is for. A row
/// under a heading naming no binary is given to `""`, which has no `--help`.
fn reference() -> BTreeMap<&'static str, Listing> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/CONFIGURATION.md");
    let text = std::fs::read_to_string(path).unwrap();
    let mut by_binary: BTreeMap<&str, Listing> = BTreeMap::new();
    let mut binaries: Vec<&'static str> = Vec::new();
    for line in text.lines() {
        if let Some(heading) = line.strip_prefix("## ") {
            let words: Vec<&str> = heading
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
                .collect();
            binaries = BINARIES.into_iter().filter(|b| words.contains(b)).collect();
            if binaries.is_empty() {
                binaries.push("");
            }
            continue;
        }
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let [_, var, default, unit, ..] = cells[..] else {
            continue;
        };
        let var = var.trim_matches('`');
        if !is_variable(var) {
            continue;
        }
        // Code spans are for the reader: `--help` has none.
        let (default, unit) = (default.replace('`', ""), unit.replace('`', ""));
        for binary in &binaries {
            let listing = by_binary.entry(binary).or_default();
            listing.insert(var.to_owned(), (default.clone(), unit.clone()));
        }
    }
    by_binary
}

fn is_variable(name: &str) -> bool {
    name.starts_with(|c: char| c.is_ascii_uppercase())
        && name
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
}

#[test]
fn the_configuration_reference_lists_what_help_lists() {
    let reference = reference();
    let mut problems = Vec::new();
    for name in BINARIES {
        let help = help(name);
        let documented = reference.get(name).cloned().unwrap_or_default();
        for (var, listed) in &help {
            match documented.get(var) {
                None => problems.push(format!(
                    "{var}: in `{name} --help`, missing from docs/CONFIGURATION.md"
                )),
                Some(doc) if doc != listed => problems.push(format!(
                    "{var} ({name}): --help says (default, unit) {listed:?}, docs/CONFIGURATION.md {doc:?}"
                )),
                Some(_) => {}
            }
        }
        for var in documented.keys().filter(|v| !help.contains_key(*v)) {
            problems.push(format!(
                "{var}: in docs/CONFIGURATION.md for {name}, missing from `{name} --help`"
            ));
        }
    }
    for var in reference.get("").into_iter().flat_map(|l| l.keys()) {
        problems.push(format!(
            "{var}: in docs/CONFIGURATION.md under a heading that names no binary"
        ));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
