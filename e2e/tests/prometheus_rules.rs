//! compose's Prometheus alerting, checked with Prometheus' own tool (`promtool`, Debian package
//! `prometheus`; `scripts/services` installs it):
//!
//! - `promtool check rules` on compose/prometheus/alerts.yml and `promtool check config` on
//!   compose/prometheus/prometheus.yml, whose `rule_files` name alerts.yml relative to the config's
//!   directory, so the check loads the very rule file compose mounts next to it;
//! - `promtool test rules` on compose/prometheus/alerts_test.yml, and that those unit tests see
//!   every alert both firing and quiet;
//! - every rule has a `for:`, a severity and a summary and description;
//! - every klinebus metric the rules and their tests use is one the code registers, so the
//!   rules cannot drift from the binaries;
//! - compose's Prometheus service mounts the rule file where the config looks for it.
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_yaml::Value;
use support::{read, repo};

fn prometheus_dir() -> PathBuf {
    repo().join("compose/prometheus")
}

fn yaml(path: &Path) -> Value {
    match serde_yaml::from_str(&read(path)) {
        Ok(v) => v,
        Err(e) => panic!("{} is not valid YAML: {e}", path.display()),
    }
}

/// Runs `promtool args…` in compose/prometheus/ and returns its output; fails with what to
/// install when there is no promtool.
fn promtool(args: &[&str]) -> String {
    let out = match Command::new("promtool")
        .args(args)
        .current_dir(prometheus_dir())
        .output()
    {
        Ok(o) => o,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "promtool is not installed: install Debian's `prometheus` package \
             (`apt-get install --no-install-recommends prometheus`, as scripts/services does)"
        ),
        Err(e) => panic!("cannot run promtool: {e}"),
    };
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {}:\n{text}", args.join(" "));
    text
}

/// Every alerting rule of alerts.yml.
fn rules() -> Vec<Value> {
    let doc = yaml(&prometheus_dir().join("alerts.yml"));
    let groups = doc["groups"].as_sequence().unwrap();
    let rules: Vec<Value> = groups
        .iter()
        .flat_map(|g| g["rules"].as_sequence().unwrap().clone())
        .collect();
    assert!(!rules.is_empty());
    rules
}

fn alert_name(rule: &Value) -> String {
    rule["alert"].as_str().unwrap().to_owned()
}

#[test]
fn promtool_accepts_the_rules_and_the_config_and_their_unit_tests_pass() {
    let checked = promtool(&["check", "rules", "alerts.yml"]);
    assert!(
        checked.contains(&format!("SUCCESS: {} rules found", rules().len())),
        "{checked}"
    );
    // The config loads the rule file itself (relative to the config's directory), so this
    // checks it as Prometheus in compose will read it.
    let config = promtool(&["check", "config", "prometheus.yml"]);
    assert!(config.contains("SUCCESS: 1 rule files found"), "{config}");
    assert!(config.contains("Checking alerts.yml"), "{config}");
    let tested = promtool(&["test", "rules", "alerts_test.yml"]);
    assert!(tested.contains("SUCCESS"), "{tested}");
}

#[test]
fn every_alert_is_tested_firing_and_quiet() {
    let tests = yaml(&prometheus_dir().join("alerts_test.yml"));
    assert_eq!(tests["rule_files"][0].as_str(), Some("alerts.yml"));
    // alert name → (cases where it fires, cases where it does not)
    let mut seen: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for t in tests["tests"].as_sequence().unwrap() {
        for case in t["alert_rule_test"].as_sequence().unwrap() {
            let name = case["alertname"].as_str().unwrap().to_owned();
            let firing = case["exp_alerts"]
                .as_sequence()
                .is_some_and(|a| !a.is_empty());
            let e = seen.entry(name).or_default();
            if firing {
                e.0 += 1;
            } else {
                e.1 += 1;
            }
        }
    }
    for rule in rules() {
        let name = alert_name(&rule);
        let (fires, quiet) = seen.get(&name).copied().unwrap_or_default();
        assert!(
            fires > 0 && quiet > 0,
            "{name}: alerts_test.yml has {fires} firing and {quiet} quiet cases; it needs both"
        );
    }
}

#[test]
fn every_rule_waits_has_a_severity_and_says_what_to_do() {
    let mut names = BTreeSet::new();
    for rule in rules() {
        let name = alert_name(&rule);
        assert!(names.insert(name.clone()), "{name} twice");
        assert!(rule["for"].as_str().is_some(), "{name}: no `for:`");
        let severity = rule["labels"]["severity"].as_str();
        assert!(
            matches!(severity, Some("warning" | "critical")),
            "{name}: severity {severity:?}"
        );
        for a in ["summary", "description"] {
            let text = rule["annotations"][a].as_str().unwrap_or_default();
            assert!(text.len() > 20, "{name}: no {a}");
        }
    }
    // The issue's alerts, at least.
    for want in [
        "KlinebusNoRecentData",
        "KlinebusDataStale",
        "KlinebusIngestionErrors",
        "KlinebusConsumerLagGrowing",
        "KlinebusRetentionHeadroomLow",
        "KlinebusRetentionHeadroomCritical",
    ] {
        assert!(names.contains(want), "no {want}: {names:?}");
    }
}

#[test]
fn the_rules_use_only_metrics_the_binaries_export() {
    let registered: BTreeSet<String> = support::registered_metrics().into_keys().collect();
    assert!(registered.len() > 20, "{registered:?}");
    let re = regex::Regex::new(r"klinebus_[a-z0-9_]+").unwrap();
    let mut used = BTreeSet::new();
    for rule in rules() {
        let expr = rule["expr"].as_str().unwrap();
        for m in re.find_iter(expr) {
            assert!(
                registered.contains(m.as_str()),
                "{}: {} is not exported by any binary: {expr}",
                alert_name(&rule),
                m.as_str()
            );
            used.insert(m.as_str().to_owned());
        }
    }
    // The unit tests feed only series the binaries export (and Prometheus' own `up`).
    let tests = yaml(&prometheus_dir().join("alerts_test.yml"));
    for t in tests["tests"].as_sequence().unwrap() {
        for s in t["input_series"].as_sequence().unwrap() {
            let series = s["series"].as_str().unwrap();
            let name = series.split('{').next().unwrap();
            assert!(
                name == "up" || registered.contains(name),
                "alerts_test.yml feeds {name}, which no binary exports"
            );
        }
    }
    // Each family the rules are about: the seed's data rules, lag, headroom.
    for m in [
        "klinebus_audit_series_last_ingested_timestamp_seconds",
        "klinebus_audit_series_newest_close_timestamp_seconds",
        "klinebus_audit_series_freshness_limit_seconds",
        "klinebus_audit_series_consecutive_errors",
        "klinebus_sink_consumer_lag",
        "klinebus_sink_retention_headroom_ratio",
    ] {
        assert!(used.contains(m), "no rule uses {m}");
    }
}

#[test]
fn compose_mounts_the_rule_file_where_the_config_looks_for_it() {
    let config = yaml(&prometheus_dir().join("prometheus.yml"));
    let rule_files: Vec<&str> = config["rule_files"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(rule_files, ["alerts.yml"]);
    let base = yaml(&repo().join("compose/docker-compose.yml"));
    // Prometheus resolves them from the config file's directory in the container.
    let config_path = base["services"]["prometheus"]["command"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .find_map(|a| a.strip_prefix("--config.file="))
        .unwrap()
        .to_owned();
    let dir = Path::new(&config_path).parent().unwrap();
    let mut checked = 0;
    for file in ["docker-compose.yml", "docker-compose.cluster.yml"] {
        let doc = yaml(&repo().join("compose").join(file));
        // An override without a prometheus service (or its volumes) keeps the base's mounts.
        let Some(volumes) = doc["services"]
            .get("prometheus")
            .and_then(|p| p["volumes"].as_sequence())
        else {
            continue;
        };
        // container path → host path
        let mounts: BTreeMap<&str, &str> = volumes
            .iter()
            .filter_map(Value::as_str)
            .filter_map(|v| {
                let mut parts = v.split(':');
                let host = parts.next()?;
                Some((parts.next()?, host))
            })
            .collect();
        assert_eq!(
            mounts.get(config_path.as_str()),
            Some(&"./prometheus/prometheus.yml"),
            "{file}"
        );
        for rule_file in &rule_files {
            let target = dir.join(rule_file);
            let target = target.to_str().unwrap();
            let want = format!("./prometheus/{rule_file}");
            assert_eq!(
                mounts.get(target).copied(),
                Some(want.as_str()),
                "{file}: {target} is not mounted from compose/prometheus/{rule_file}"
            );
        }
        checked += 1;
    }
    assert!(
        checked > 0,
        "no compose file mounts anything into prometheus"
    );
}
