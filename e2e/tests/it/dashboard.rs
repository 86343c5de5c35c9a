//! The Grafana dashboard (`deploy/grafana/ordermesh.json`) and the metrics
//! table of docs/OPERATIONS.md name exactly the metrics the binaries
//! record, so neither can drift.

use std::collections::BTreeSet;

use ordermesh_runtime::metrics::ALL;

fn repo_file(path: &str) -> String {
    let full = format!("{}/../{path}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("read {full}: {e}"))
}

/// The `ordermesh_*` metric names in `text`, histogram suffixes removed.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("ordermesh_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        let base = ["_bucket", "_count", "_sum"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        names.insert(base.to_owned());
        rest = &tail[end..];
    }
    names
}

fn exprs(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("expr", serde_json::Value::String(e)) => out.push(e.clone()),
                    _ => exprs(v, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| exprs(v, out)),
        _ => {}
    }
}

#[test]
fn the_dashboard_charts_every_metric_and_only_real_ones() {
    let dashboard: serde_json::Value =
        serde_json::from_str(&repo_file("deploy/grafana/ordermesh.json")).expect("valid JSON");
    let mut queries = Vec::new();
    exprs(&dashboard, &mut queries);
    assert!(!queries.is_empty());
    let charted = metric_names(&queries.join("\n"));
    let recorded: BTreeSet<String> = ALL.iter().map(|s| (*s).to_owned()).collect();
    assert_eq!(
        charted, recorded,
        "dashboard queries vs ordermesh_runtime::metrics::ALL"
    );
}

#[test]
fn the_operations_guide_lists_every_metric_and_only_real_ones() {
    let guide = repo_file("docs/OPERATIONS.md");
    let section = guide
        .split_once("### Metrics")
        .and_then(|(_, s)| s.split_once("### Health"))
        .map(|(s, _)| s)
        .expect("a Metrics section in docs/OPERATIONS.md");
    let listed = metric_names(section);
    let recorded: BTreeSet<String> = ALL.iter().map(|s| (*s).to_owned()).collect();
    assert_eq!(
        listed, recorded,
        "docs/OPERATIONS.md metrics table vs ordermesh_runtime::metrics::ALL"
    );
}
