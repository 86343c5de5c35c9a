//! Which crate may depend on which, from `cargo metadata`: the services
//! never on each other; the library crates and the relay on no service;
//! the gateway and proto on nothing of ours.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

/// Our crates and the crates of ours each may use as a normal dependency
/// (tests may use more: dev-dependencies are not boundaries).
const ALLOWED: &[(&str, &[&str])] = &[
    ("ordermesh-proto", &[]),
    ("ordermesh-gateway", &[]),
    (
        "ordermesh-runtime",
        &["ordermesh-proto", "ordermesh-gateway"],
    ),
    ("ordermesh-auth", &["ordermesh-runtime"]),
    ("ordermesh-messaging", &["ordermesh-runtime"]),
    (
        "ordermesh-testkit",
        &["ordermesh-runtime", "ordermesh-messaging", "ordermesh-auth"],
    ),
    ("ordermesh-checks", &[]),
    (
        "order-svc",
        &[
            "ordermesh-proto",
            "ordermesh-runtime",
            "ordermesh-gateway",
            "ordermesh-auth",
            "ordermesh-messaging",
        ],
    ),
    (
        "processor-svc",
        &[
            "ordermesh-proto",
            "ordermesh-runtime",
            "ordermesh-gateway",
            "ordermesh-auth",
            "ordermesh-messaging",
        ],
    ),
    (
        "relay",
        &[
            "ordermesh-proto",
            "ordermesh-runtime",
            "ordermesh-gateway",
            "ordermesh-messaging",
        ],
    ),
];

/// The harnesses that start the real binaries may use any library crate
/// and the relay's constants, but no service's code.
const HARNESSES: &[&str] = &["ordermesh-e2e", "ordermesh-bench", "ordermesh-chaos"];
const SERVICES: &[&str] = &["order-svc", "processor-svc"];

/// Each workspace member and the workspace members it depends on, by kind
/// (`normal`, `dev`, `build`).
fn workspace_edges() -> BTreeMap<String, BTreeSet<(String, String)>> {
    let output = Command::new(env!("CARGO"))
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(super::root())
        .output()
        .expect("run cargo metadata");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let metadata: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");
    let packages = metadata["packages"].as_array().expect("packages");
    let members: BTreeSet<&str> = packages.iter().filter_map(|p| p["name"].as_str()).collect();
    let mut edges = BTreeMap::new();
    for package in packages {
        let name = package["name"].as_str().expect("a name").to_owned();
        let deps = package["dependencies"].as_array().expect("dependencies");
        let ours: BTreeSet<(String, String)> = deps
            .iter()
            .filter(|d| members.contains(d["name"].as_str().unwrap_or_default()))
            .map(|d| {
                let kind = d["kind"].as_str().unwrap_or("normal").to_owned();
                (d["name"].as_str().expect("a name").to_owned(), kind)
            })
            .filter(|(dep, _)| *dep != name)
            .collect();
        edges.insert(name, ours);
    }
    edges
}

#[test]
fn every_crate_depends_only_on_what_its_layer_allows() {
    let edges = workspace_edges();
    let allowed: BTreeMap<&str, &[&str]> = ALLOWED.iter().copied().collect();
    let mut broken = Vec::new();
    for (krate, deps) in &edges {
        for (dep, kind) in deps {
            let ok = if HARNESSES.contains(&krate.as_str()) {
                !SERVICES.contains(&dep.as_str())
            } else if kind == "dev" {
                // Tests may use the test kit and the library crates, never a
                // service (a service's tests start their own service).
                !SERVICES.contains(&dep.as_str()) || dep == krate
            } else {
                let Some(list) = allowed.get(krate.as_str()) else {
                    broken.push(format!("{krate} is not in the boundary table"));
                    continue;
                };
                list.contains(&dep.as_str())
            };
            if !ok {
                broken.push(format!("{krate} -> {dep} ({kind})"));
            }
        }
    }
    assert!(
        broken.is_empty(),
        "dependencies that cross a boundary: {broken:#?}"
    );
}

#[test]
fn the_table_names_every_member() {
    let edges = workspace_edges();
    let known: BTreeSet<&str> = ALLOWED
        .iter()
        .map(|(k, _)| *k)
        .chain(HARNESSES.iter().copied())
        .collect();
    let unknown: Vec<&String> = edges
        .keys()
        .filter(|k| !known.contains(k.as_str()))
        .collect();
    assert!(unknown.is_empty(), "crates with no boundary: {unknown:?}");
}
