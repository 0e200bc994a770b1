//! Grafana dashboards (dashboards/*.json) against what a running process exports: each
//! dashboard must be importable, and every metric its panels query must be in /metrics.

use std::collections::BTreeSet;
use std::path::Path;

/// Reads a dashboard, checks what Grafana needs to import it (a title, panels with types and
/// grid positions, the data source as a template variable that every query uses) and returns
/// every panel query.
pub fn queries(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let dashboard: serde_json::Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()));
    assert!(dashboard["title"].is_string());
    assert!(dashboard["schemaVersion"].is_number());
    let vars = dashboard["templating"]["list"].as_array().unwrap();
    assert!(vars
        .iter()
        .any(|v| v["type"] == "datasource" && v["name"] == "datasource"));
    let mut exprs = Vec::new();
    for p in dashboard["panels"].as_array().unwrap() {
        assert!(
            p["type"].is_string() && p["gridPos"].is_object() && p["id"].is_number(),
            "{p}"
        );
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{}", p["title"]);
        for t in p["targets"].as_array().unwrap() {
            assert!(t["refId"].is_string());
            exprs.push(t["expr"].as_str().unwrap().to_string());
        }
    }
    exprs
}

/// The metric families in a Prometheus text exposition (its `# TYPE` lines).
pub fn families(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

/// Metric names a PromQL expression references (ours, CoreDNS's and the process collector's;
/// functions, labels and keywords have none of these prefixes).
pub fn metric_names(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let start = i;
        while i < bytes.len()
            && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_' || bytes[i] == b':')
        {
            i += 1;
        }
        if i > start {
            let word = &expr[start..i];
            if word.starts_with("coredns_")
                || word.starts_with("clusterdns_")
                || word.starts_with("process_")
            {
                out.push(word.to_string());
            }
        } else {
            i += 1;
        }
    }
    out
}

/// The metric names in `exprs` that the exposition `text` does not export (a histogram's
/// `_bucket`, `_sum` and `_count` count as its family).
pub fn missing(exprs: &[String], text: &str) -> Vec<String> {
    let exported = families(text);
    let mut out = Vec::new();
    for e in exprs {
        for name in metric_names(e) {
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s).filter(|b| exported.contains(*b)))
                .unwrap_or(&name)
                .to_string();
            if !exported.contains(&base) && !out.contains(&name) {
                out.push(name);
            }
        }
    }
    out
}
