//! The workspace's layers, checked against `cargo metadata` so the dependency graph cannot
//! drift: every arrow between workspace crates must be one this table allows. Layers only point
//! down (schemas ← svc ← producers and sinks ← ctl); the simulator shares nothing with the
//! producers; benchmarks and test support stay outside the service crates. The README's crate
//! table describes the same layout.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use serde_json::Value;

/// Workspace crates each crate may depend on (normal and build dependencies).
const ALLOWED: &[(&str, &[&str])] = &[
    ("klinebus-schemas", &[]),
    ("klinebus-svc", &["klinebus-schemas"]),
    ("klinebus-migrations", &["klinebus-svc"]),
    ("klinebus-verify", &["klinebus-schemas"]),
    ("klinebus-signals-core", &["klinebus-schemas"]),
    // The simulator has its own Binance code (one shared bug would pass every test).
    ("binance-sim", &[]),
    ("klinebus-testkit", &["klinebus-migrations"]),
    ("klinebus-binance", &["klinebus-schemas", "klinebus-svc"]),
    (
        "kline-backfill",
        &[
            "klinebus-binance",
            "klinebus-schemas",
            "klinebus-svc",
            "klinebus-verify",
        ],
    ),
    (
        "kline-live",
        &["klinebus-binance", "klinebus-schemas", "klinebus-svc"],
    ),
    ("klinebus-consume", &["klinebus-schemas", "klinebus-svc"]),
    (
        "kline-pg-sink",
        &[
            "klinebus-consume",
            "klinebus-migrations",
            "klinebus-schemas",
            "klinebus-svc",
        ],
    ),
    (
        "kline-signals",
        &[
            "klinebus-consume",
            "klinebus-migrations",
            "klinebus-schemas",
            "klinebus-signals-core",
            "klinebus-svc",
        ],
    ),
    (
        "klinectl",
        &[
            "kline-backfill",
            "klinebus-binance",
            "klinebus-schemas",
            "klinebus-svc",
            "klinebus-verify",
        ],
    ),
];

/// Crates that may depend on any workspace crate: they test or measure the whole.
const ANYTHING: &[&str] = &["klinebus-e2e", "klinebus-bench"];

/// Dev-dependencies any crate's own tests may use besides its normal dependencies.
const TEST_SUPPORT: &[&str] = &["klinebus-testkit", "binance-sim"];

/// Further dev-dependencies, each a downward arrow a crate's tests need.
const EXTRA_DEV: &[(&str, &[&str])] = &[
    // `klinectl replay`/`audit` tests run a real sink behind the tool.
    ("klinectl", &["kline-pg-sink"]),
];

/// `(crate, dependency, kind)`: one arrow between workspace members.
type Edge = (String, String, String);

/// Every arrow between workspace members, and each member's features.
fn workspace() -> (Vec<Edge>, BTreeMap<String, Vec<String>>) {
    let out = Command::new(env!("CARGO"))
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cargo metadata: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: Value = serde_json::from_slice(&out.stdout).unwrap();
    let packages = meta["packages"].as_array().unwrap();
    let members: BTreeSet<&str> = packages
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    let mut edges = Vec::new();
    let mut features = BTreeMap::new();
    for p in packages {
        let name = p["name"].as_str().unwrap();
        features.insert(
            name.to_owned(),
            p["features"].as_object().unwrap().keys().cloned().collect(),
        );
        for d in p["dependencies"].as_array().unwrap() {
            let dep = d["name"].as_str().unwrap();
            if members.contains(dep) {
                let kind = d["kind"].as_str().unwrap_or("normal").to_owned();
                edges.push((name.to_owned(), dep.to_owned(), kind));
            }
        }
    }
    (edges, features)
}

fn allowed(krate: &str) -> Option<&'static [&'static str]> {
    ALLOWED.iter().find(|(k, _)| *k == krate).map(|(_, d)| *d)
}

#[test]
fn workspace_dependencies_only_point_down() {
    let (edges, features) = workspace();
    let mut wrong = Vec::new();
    for name in features.keys() {
        assert!(
            allowed(name).is_some() || ANYTHING.contains(&name.as_str()),
            "{name} is not in the layer table of {}: add it with the crates it may use",
            file!()
        );
    }
    for (krate, dep, kind) in &edges {
        if ANYTHING.contains(&krate.as_str()) {
            continue;
        }
        let normal = allowed(krate).unwrap_or(&[]);
        let ok = match kind.as_str() {
            "dev" => {
                normal.contains(&dep.as_str())
                    || TEST_SUPPORT.contains(&dep.as_str())
                    || EXTRA_DEV
                        .iter()
                        .any(|(k, d)| k == krate && d.contains(&dep.as_str()))
            }
            _ => normal.contains(&dep.as_str()),
        };
        if !ok {
            wrong.push(format!("{krate} → {dep} ({kind})"));
        }
    }
    assert!(
        wrong.is_empty(),
        "dependencies against the layers (see the table in {}): {wrong:?}",
        file!()
    );
}

#[test]
fn no_service_crate_carries_bench_or_test_code_in_its_features() {
    let (_, features) = workspace();
    for (name, list) in &features {
        if ANYTHING.contains(&name.as_str()) {
            continue;
        }
        assert!(
            !list.iter().any(|f| f == "bench"),
            "{name} has a `bench` feature: benchmarks live in bench/"
        );
    }
}

#[test]
fn the_table_names_every_member_once_and_nothing_else() {
    let (_, features) = workspace();
    let mut listed: Vec<&str> = ALLOWED.iter().map(|(k, _)| *k).collect();
    listed.extend(ANYTHING.iter().filter(|k| features.contains_key(**k)));
    let mut sorted = listed.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted.len(), listed.len(), "a crate listed twice");
    let members: Vec<&str> = features.keys().map(String::as_str).collect();
    assert_eq!(sorted, members, "the layer table and the workspace differ");
}
