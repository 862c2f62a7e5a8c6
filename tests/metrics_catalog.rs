//! Every metric, checked against the one catalog (`sbc_core::metrics_catalog`):
//!
//! - the code emits exactly the catalogued names, each with the catalogued type, and every
//!   `counter!` / `gauge!` / `histogram!` call names its metric with a literal (so this
//!   scan sees it);
//! - the README's metrics table lists each catalogued metric once, with its type and
//!   labels, and nothing else;
//! - the Grafana dashboard and the alert rules use only catalogued metrics, and every alert
//!   carries a description and a runbook;
//! - the real binary's first scrape of `/metrics` has HELP and TYPE for every metric and
//!   every known series at 0 (the unreachable-target counter included), build info, the
//!   process metrics and the configured histogram buckets.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use sbc_core::metrics_catalog::{self as catalog, Kind, MetricDef, Values, CATALOG};
use sbc_testkit::process::Spawned;
use sbc_testkit::*;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn rust_sources() -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut stack = vec![root().join("src")];
    for e in std::fs::read_dir(root().join("crates")).unwrap() {
        stack.push(e.unwrap().path().join("src"));
    }
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                files.push(p);
            }
        }
    }
    files
}

/// Every `counter!(` / `gauge!(` / `histogram!(` call in `text`: its kind and the literal
/// name, or `Err` with the text after the parenthesis when the name is not a literal.
fn macro_calls(text: &str) -> Vec<(Kind, Result<String, String>)> {
    let mut out = Vec::new();
    for (word, kind) in [
        ("counter!(", Kind::Counter),
        ("gauge!(", Kind::Gauge),
        ("histogram!(", Kind::Histogram),
    ] {
        for (at, _) in text.match_indices(word) {
            // `describe_counter!(` is not a recording call.
            let before = text[..at].chars().next_back();
            if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
                continue;
            }
            let rest = text[at + word.len()..].trim_start();
            let name = rest
                .strip_prefix('"')
                .and_then(|r| r.split('"').next())
                .map(str::to_string)
                .ok_or_else(|| rest.chars().take(40).collect());
            out.push((kind, name));
        }
    }
    out
}

#[test]
fn the_code_emits_exactly_the_catalogued_metrics() {
    let mut emitted: BTreeMap<String, (Kind, String)> = BTreeMap::new();
    for file in rust_sources() {
        let text = std::fs::read_to_string(&file).unwrap();
        let is_catalog = file.ends_with("sbc-core/src/metrics_catalog.rs");
        for (kind, name) in macro_calls(&text) {
            match name {
                Ok(name) => {
                    let def = catalog::find(&name).unwrap_or_else(|| {
                        panic!(
                            "{} records {name}, which the catalog does not list",
                            file.display()
                        )
                    });
                    assert_eq!(def.kind, kind, "{name} in {}", file.display());
                    emitted.insert(name, (kind, file.display().to_string()));
                }
                // Only the catalog's own loops name metrics by variable.
                Err(rest) => assert!(
                    is_catalog,
                    "{}: a metric named by an expression ({rest}...): use a literal name",
                    file.display()
                ),
            }
        }
    }
    for m in CATALOG.iter().filter(|m| !m.external) {
        assert!(
            emitted.contains_key(m.name),
            "{} is catalogued but nothing records it",
            m.name
        );
    }
    assert!(emitted.len() >= 45, "{} names found", emitted.len());
}

#[test]
fn the_scan_sees_literals_and_refuses_expressions() {
    let calls = macro_calls(
        "metrics::counter!(\"a_total\", \"x\" => y); gauge!(name); describe_counter!(\"b\", \"c\");",
    );
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[0], (Kind::Counter, Ok("a_total".to_string())));
    assert!(matches!(calls[1], (Kind::Gauge, Err(_))));
}

/// The README's metrics table: name -> (type, label names).
fn readme_table() -> Vec<(String, String, Vec<String>)> {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let section = readme
        .split("\n## Metrics\n")
        .nth(1)
        .expect("a Metrics section")
        .split("\n## ")
        .next()
        .unwrap();
    section
        .lines()
        .filter(|l| l.starts_with("| `"))
        .map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            let name = cells[1].trim_matches('`').to_string();
            let labels = cells[3].split(" (").next().unwrap();
            let labels = if labels == "-" {
                Vec::new()
            } else {
                labels.split(", ").map(str::to_string).collect()
            };
            (name, cells[2].to_string(), labels)
        })
        .collect()
}

#[test]
fn the_readme_table_lists_every_metric_once_with_type_and_labels() {
    let table = readme_table();
    let mut seen = BTreeSet::new();
    for (name, kind, labels) in &table {
        assert!(seen.insert(name.clone()), "README lists {name} twice");
        let def = catalog::find(name)
            .unwrap_or_else(|| panic!("README lists {name}, which the catalog does not"));
        assert_eq!(kind, def.kind.as_str(), "type of {name} in the README");
        let want: Vec<&str> = def.labels.iter().map(|l| l.name).collect();
        assert_eq!(labels, &want, "labels of {name} in the README");
    }
    for m in CATALOG {
        assert!(seen.contains(m.name), "README's table misses {}", m.name);
    }
}

/// Every metric name (`sbc_*`, `process_*`) in `text`, histogram series suffixes removed.
fn used_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    for prefix in ["sbc_", "process_"] {
        for (start, _) in text.match_indices(prefix) {
            if start > 0 && (bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_') {
                continue;
            }
            let end = text[start..]
                .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
                .map_or(text.len(), |e| start + e);
            let name = &text[start..end];
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .filter(|b| catalog::find(b).is_some_and(|m| m.kind == Kind::Histogram))
                .unwrap_or(name);
            names.insert(base.to_string());
        }
    }
    names
}

#[test]
fn dashboard_and_alerts_use_only_catalogued_metrics() {
    let dashboard_text =
        std::fs::read_to_string(root().join("deploy/grafana/sbc-edge-dashboard.json")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&dashboard_text).unwrap();
    let mut exprs = String::new();
    let mut titles = Vec::new();
    for p in dashboard["panels"].as_array().unwrap() {
        titles.push(p["title"].as_str().unwrap().to_lowercase());
        for t in p["targets"].as_array().unwrap() {
            exprs.push_str(t["expr"].as_str().unwrap());
            exprs.push('\n');
        }
    }
    let alerts =
        std::fs::read_to_string(root().join("deploy/prometheus/sbc-edge-alerts.yml")).unwrap();
    for (file, text) in [("dashboard", &exprs), ("alert rules", &alerts)] {
        let used = used_names(text);
        assert!(used.len() >= 8, "{file} uses {used:?}");
        for name in used {
            assert!(
                catalog::find(&name).is_some(),
                "the {file} use {name}, which the code does not record"
            );
        }
    }
    // The dashboard's panels cover media and recording taps.
    for what in ["media", "tap", "setup", "latency", "ports", "process"] {
        assert!(
            titles.iter().any(|t| t.contains(what)),
            "no dashboard panel about {what}: {titles:?}"
        );
    }
    // Each alert has a description and a runbook.
    let rules: Vec<&str> = alerts.split("- alert: ").skip(1).collect();
    assert!(rules.len() >= 10);
    for rule in rules {
        let name = rule.lines().next().unwrap();
        for key in ["summary:", "description:", "runbook:"] {
            assert!(rule.contains(key), "alert {name} has no {key}");
        }
    }
}

/// The value of the sample `name{labels...}` in a Prometheus text, where `labels` are
/// `key="value"` pairs in any order.
fn sample(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| {
            let (series, _) = l.rsplit_once(' ').unwrap_or((l, ""));
            let (n, rest) = series.split_once('{').unwrap_or((series, ""));
            n == name && labels.iter().all(|kv| rest.contains(kv))
        })
        .and_then(|l| l.rsplit_once(' ')?.1.parse().ok())
}

#[tokio::test]
async fn the_first_scrape_has_every_known_series_at_zero() {
    let world = World::new("metrics-first-scrape");
    let (port_min, port_max) = sbc_testkit::ports::free_udp_range(100);
    let text = format!(
        "[media]\nport_min = {port_min}\nport_max = {port_max}\n\
[admin]\naddress = \"127.0.0.1:0\"\naudit_log = {:?}\n{}\n{}\n{}",
        world.dir.join("audit.log"),
        world.listener(""),
        world.tenant(
            "demo",
            "source_cidrs = [\"127.0.0.0/8\"]",
            "",
            "127.0.0.1:9".parse().unwrap()
        ),
        world.tenant(
            "other",
            "source_cidrs = [\"10.0.0.0/8\"]",
            "",
            "127.0.0.1:9".parse().unwrap()
        ),
    );
    let file = world.dir.join("sbc-edge.toml");
    std::fs::write(&file, text).unwrap();
    let gw = Spawned::start(env!("CARGO_BIN_EXE_sbc-edge"), &file, &[]);
    let (status, body) = http(gw.printed.admin, "GET", "/metrics", None, "").await;
    assert_eq!(status, 200);

    let tenants = ["demo", "other"];
    for m in CATALOG.iter().filter(|m| !m.external) {
        let open = m.labels.iter().any(|l| l.values == Values::Open);
        if open && m.name != "sbc_build_info" && m.name != "sbc_tls_certificate_expiry_seconds" {
            // Admin requests: none yet on the first scrape.
            continue;
        }
        assert!(
            body.contains(&format!("# HELP {} {}", m.name, m.help)),
            "no HELP for {}",
            m.name
        );
        assert!(
            body.contains(&format!("# TYPE {} {}", m.name, m.kind.as_str())),
            "no TYPE for {}",
            m.name
        );
        if !open {
            check_known_series(&body, m, &tenants);
        }
    }
    // What the unreachable-target alert needs: the counter at 0 before any failure.
    assert_eq!(
        sample(&body, "sbc_sip_target_unreachable_total", &[]),
        Some(0.0)
    );
    assert_eq!(
        sample(
            &body,
            "sbc_admission_refused_total",
            &["tenant=\"other\"", "cause=\"concurrent_calls\""]
        ),
        Some(0.0)
    );
    // Build info.
    let version = format!("version=\"{}\"", env!("CARGO_PKG_VERSION"));
    assert_eq!(sample(&body, "sbc_build_info", &[&version]), Some(1.0));
    let commit = body
        .lines()
        .find(|l| l.starts_with("sbc_build_info{"))
        .and_then(|l| l.split("commit=\"").nth(1))
        .and_then(|c| c.split('"').next())
        .unwrap();
    assert!(
        commit == "unknown" || (commit.len() >= 7 && commit.chars().all(|c| c.is_ascii_hexdigit())),
        "commit {commit:?}"
    );
    // Process metrics, refreshed by the scrape.
    for name in [
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_threads",
        "process_start_time_seconds",
    ] {
        let v = sample(&body, name, &[]).unwrap_or_else(|| panic!("no {name}"));
        assert!(v >= 0.0, "{name} {v}");
    }
    assert!(sample(&body, "process_resident_memory_bytes", &[]).unwrap() > 1e6);
    // Histogram buckets as the catalog configures them.
    assert_eq!(
        sample(
            &body,
            "sbc_sip_call_setup_seconds_bucket",
            &["tenant=\"demo\"", "le=\"180\""]
        ),
        Some(0.0)
    );
    assert!(body.contains("sbc_media_relay_latency_seconds_bucket{le=\"0.00001\"}"));
    assert!(body.contains("sbc_admission_decision_seconds_bucket{le=\"0.0000005\"}"));
    // The port-pool gauge is filled within a second: 100 ports.
    let mut capacity = None;
    for _ in 0..50 {
        let (_, body) = http(gw.printed.admin, "GET", "/metrics", None, "").await;
        capacity = sample(&body, "sbc_media_ports_capacity", &[]);
        if capacity == Some(100.0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(capacity, Some(100.0));
    drop(gw);
}

/// Every series of `m` over the known label values is in `body`.
fn check_known_series(body: &str, m: &MetricDef, tenants: &[&str]) {
    let mut sets: Vec<Vec<String>> = vec![Vec::new()];
    for l in m.labels {
        let values: Vec<&str> = match l.values {
            Values::Tenant => tenants.to_vec(),
            Values::Closed(v) => v.to_vec(),
            Values::Open => return,
        };
        sets = sets
            .into_iter()
            .flat_map(|s| {
                values.iter().map(move |v| {
                    let mut s = s.clone();
                    s.push(format!("{}=\"{v}\"", l.name));
                    s
                })
            })
            .collect();
    }
    let name = if m.kind == Kind::Histogram {
        format!("{}_count", m.name)
    } else {
        m.name.to_string()
    };
    for set in sets {
        let labels: Vec<&str> = set.iter().map(String::as_str).collect();
        assert!(
            sample(body, &name, &labels).is_some(),
            "{name}{labels:?} missing from the first scrape"
        );
    }
}
