//! The compose deployment (compose/), checked without a Docker engine:
//!
//! - both compose files validate against the Compose Specification's JSON schema (vendored in
//!   compose/schema/compose-spec.json, so no network is needed);
//! - every service runs an image that exists (ours is built by ../Dockerfile, which builds each
//!   binary the services start; the others are pinned tags), long-running services have a
//!   health check and a restart policy, one-shot jobs do not restart, and every reference
//!   (depends_on, secrets, volumes, bind-mounted files, `${VAR}`s documented in .env.example)
//!   resolves;
//! - every environment variable compose sets for a klinebus binary is one that binary's `--help`
//!   documents (read from the binaries' own clap definitions), and every `*_FILE` points at a
//!   secret the service mounts;
//! - NATS: each service's user exists in compose/nats/auth.conf and gets its own password secret;
//!   only the migrate job sets the streams: after the migrations it runs `klinectl streams apply`
//!   as `admin` with klinectl's retention defaults, and everything using NATS or PostgreSQL
//!   starts after it succeeded; the cluster override points every binary at the three nodes and
//!   the job at 3 replicas once every node is in contact with the meta leader;
//! - the migrate job's command, run as written by /bin/sh with the real binaries, migrates and
//!   applies the streams (and applies nothing when the migrations fail);
//! - Prometheus scrapes exactly the services that serve /metrics, on their METRICS_ADDR port;
//! - every metric the Grafana dashboard queries is one the code registers; Grafana reads
//!   PostgreSQL as the read-only role of postgres/grafana-reader.sql, granted every table its
//!   panels query;
//! - the cluster configs, run on this machine, are not healthy for compose before a meta leader
//!   exists, and then hold the streams the migrate job applies at 3 replicas.
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, CommandFactory};
use serde_json::Value;
use support::cluster::{wait_healthy, ClusterFiles, ADMIN};
use support::{read, repo};

fn compose_dir() -> PathBuf {
    repo().join("compose")
}

/// A YAML file as JSON (merge keys `<<` applied, as Compose does).
fn yaml(path: &Path) -> Value {
    let mut v: serde_yaml::Value = match serde_yaml::from_str(&read(path)) {
        Ok(v) => v,
        Err(e) => panic!("{} is not valid YAML: {e}", path.display()),
    };
    v.apply_merge().unwrap();
    serde_json::to_value(v).unwrap()
}

const COMPOSE: &str = "docker-compose.yml";
const CLUSTER: &str = "docker-compose.cluster.yml";

/// The klinebus binaries, by the name compose starts (`entrypoint`).
const BINARIES: [&str; 7] = [
    "kline-backfill",
    "kline-live",
    "kline-pg-sink",
    "kline-signals",
    "klinectl",
    "klinebus-migrate",
    "binance-sim",
];

/// Read by every binary's logging set-up (klinebus-svc `init_tracing`, the simulator's), not by
/// clap; documented in the README's configuration table.
const PROCESS_WIDE: [&str; 2] = ["RUST_LOG", "LOG_FORMAT"];

fn services(doc: &Value) -> &serde_json::Map<String, Value> {
    doc["services"].as_object().unwrap()
}

/// Deep merge of an override file into the base, as `docker compose -f a -f b` does for the
/// parts checked here (maps merge, other values are replaced).
fn merge(base: &mut Value, over: &Value) {
    match (base, over) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                match b.get_mut(k) {
                    Some(bv) if bv.is_object() && v.is_object() => merge(bv, v),
                    _ => {
                        b.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (b, o) => *b = o.clone(),
    }
}

fn merged() -> Value {
    let mut base = yaml(&compose_dir().join(COMPOSE));
    merge(&mut base, &yaml(&compose_dir().join(CLUSTER)));
    base
}

fn string_array(v: &Value) -> Vec<String> {
    match v {
        Value::Array(a) => a
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        Value::String(s) => s.split_whitespace().map(str::to_owned).collect(),
        _ => Vec::new(),
    }
}

/// The klinebus binaries a service runs, in order: its entry point, or those a `/bin/sh -c`
/// script entry point names.
fn binaries(svc: &Value) -> Vec<String> {
    let entry = string_array(&svc["entrypoint"]);
    match entry.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        [bin, ..] if BINARIES.contains(&bin) => vec![bin.to_owned()],
        ["/bin/sh", "-c", script, ..] => script
            .split(|c: char| c.is_whitespace() || c == ';' || c == '&' || c == '|')
            .filter(|w| BINARIES.contains(w))
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    }
}

fn env_map(svc: &Value) -> BTreeMap<String, String> {
    match &svc["environment"] {
        Value::Object(m) => m
            .iter()
            .map(|(k, v)| {
                let v = match v {
                    Value::String(s) => s.clone(),
                    Value::Null => String::new(),
                    other => other.to_string(),
                };
                (k.clone(), v)
            })
            .collect(),
        Value::Array(a) => a
            .iter()
            .filter_map(Value::as_str)
            .map(|kv| match kv.split_once('=') {
                Some((k, v)) => (k.to_owned(), v.to_owned()),
                None => (kv.to_owned(), String::new()),
            })
            .collect(),
        _ => BTreeMap::new(),
    }
}

fn string_list(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| {
                    x.as_str()
                        .map(str::to_owned)
                        .or_else(|| x["source"].as_str().map(str::to_owned))
                })
                .collect()
        })
        .unwrap_or_default()
}

fn secrets_of(svc: &Value) -> Vec<String> {
    string_list(&svc["secrets"])
}

fn depends_on(svc: &Value) -> Vec<String> {
    match &svc["depends_on"] {
        Value::Object(m) => m.keys().cloned().collect(),
        other => string_list(other),
    }
}

/// Every environment variable a clap command (and its subcommands) reads, and its `--help`.
fn clap_env(cmd: &mut clap::Command, names: &mut BTreeSet<String>, help: &mut String) {
    cmd.build();
    for a in cmd.get_arguments() {
        if let Some(e) = a.get_env() {
            names.insert(e.to_string_lossy().into_owned());
        }
    }
    help.push_str(&cmd.render_long_help().to_string());
    for sub in cmd.get_subcommands_mut() {
        clap_env(sub, names, help);
    }
}

/// The variables each binary documents: its clap definitions' `env`s, or for a name that is not
/// a clap `env` (e.g. kline-live's POLLING_INTERVAL_<tf>), its `--help` text mentioning it.
struct Documented {
    names: BTreeSet<String>,
    help: String,
}

impl Documented {
    fn of(binary: &str) -> Self {
        let mut names = BTreeSet::new();
        let mut help = String::new();
        let mut cmd = match binary {
            "kline-backfill" => kline_backfill::Config::command(),
            "kline-live" => kline_live::Config::command(),
            "kline-pg-sink" => kline_pg_sink::Config::command(),
            "kline-signals" => kline_signals::Config::command(),
            "klinectl" => klinectl::cli::Cli::command(),
            "binance-sim" => binance_sim::Config::command(),
            "klinebus-migrate" => {
                // Its Args struct is private to the binary: read the source for its own `env`s
                // and the shared argument groups it flattens.
                let src = read(&repo().join("migrations/src/bin/klinebus-migrate.rs"));
                let re = regex::Regex::new(r#"env\s*=\s*"([A-Z0-9_]+)""#).unwrap();
                names.extend(re.captures_iter(&src).map(|c| c[1].to_owned()));
                let mut cmd = clap::Command::new("klinebus-migrate");
                if src.contains("DbArgs") {
                    cmd = klinebus_svc::DbArgs::augment_args(cmd);
                }
                if src.contains("NatsArgs") {
                    cmd = klinebus_svc::NatsArgs::augment_args(cmd);
                }
                cmd
            }
            other => panic!("unknown binary {other}"),
        };
        clap_env(&mut cmd, &mut names, &mut help);
        Self { names, help }
    }

    fn documents(&self, var: &str) -> bool {
        if self.names.contains(var) || PROCESS_WIDE.contains(&var) {
            return true;
        }
        // POLLING_INTERVAL_1h is documented as POLLING_INTERVAL_<tf>.
        let stem = var.rsplit_once('_').map_or(var, |(s, _)| s);
        self.help.contains(&format!("{stem}_<"))
    }
}

// --- Schema -------------------------------------------------------------------------------------

fn compose_schema() -> jsonschema::Validator {
    let path = compose_dir().join("schema/compose-spec.json");
    let mut schema: Value = serde_json::from_str(&read(&path)).unwrap();
    // It names its meta-schema by an https URL that the validator would fetch; it is draft 7,
    // which the validator below implements itself.
    assert_eq!(
        schema["$schema"].as_str().map(|s| s.contains("draft-07")),
        Some(true)
    );
    schema.as_object_mut().unwrap().remove("$schema");
    match jsonschema::draft7::new(&schema) {
        Ok(v) => v,
        Err(e) => panic!("{} is not a usable JSON schema: {e}", path.display()),
    }
}

fn schema_errors(validator: &jsonschema::Validator, doc: &Value) -> Vec<String> {
    validator
        .iter_errors(doc)
        .map(|e| format!("{}: {e}", e.instance_path))
        .collect()
}

#[test]
fn compose_files_follow_the_compose_specification() {
    let validator = compose_schema();
    for file in [COMPOSE, CLUSTER] {
        let doc = yaml(&compose_dir().join(file));
        let errors = schema_errors(&validator, &doc);
        assert!(errors.is_empty(), "{file}:\n{}", errors.join("\n"));
    }
    // The validation is real: a misspelt key or a wrong type is caught.
    let bad: Value = serde_json::json!({
        "services": {"a": {"image": "x", "restart_policy": "always"}}
    });
    assert!(!schema_errors(&validator, &bad).is_empty());
    let bad: Value = serde_json::json!({
        "services": {"a": {"image": "x", "depends_on": {"b": {"required": true}}}}
    });
    assert!(!schema_errors(&validator, &bad).is_empty());
}

// --- Services -----------------------------------------------------------------------------------

#[test]
fn every_service_has_an_image_health_check_and_restart_policy() {
    let doc = merged();
    let dockerfile = read(&repo().join("Dockerfile"));
    let top_secrets = doc["secrets"].as_object().unwrap();
    let top_volumes = doc["volumes"].as_object().unwrap();
    let mut started = BTreeSet::new();
    for (name, svc) in services(&doc) {
        let image = svc["image"].as_str().unwrap_or_default();
        match binaries(svc) {
            bins if !bins.is_empty() => {
                // Ours: the image built from the repository's Dockerfile, which builds `bin`.
                assert_eq!(image, "${KLINEBUS_IMAGE:-klinebus:latest}", "{name}");
                assert_eq!(svc["build"]["context"], "..", "{name}");
                let dockerfile_name = svc["build"]["dockerfile"].as_str().unwrap_or("Dockerfile");
                assert!(repo().join(dockerfile_name).is_file(), "{name}");
                for bin in bins {
                    assert!(
                        dockerfile.contains(&format!("--bin {bin}"))
                            && dockerfile.contains(&format!("target/release/{bin}")),
                        "the Dockerfile does not build {bin} ({name})"
                    );
                    started.insert(bin);
                }
            }
            _ => {
                // Third-party images pinned to a release line, never `latest`.
                let (repo_name, tag) = image
                    .rsplit_once(':')
                    .unwrap_or_else(|| panic!("{name}: image {image:?} has no tag"));
                assert!(
                    !repo_name.is_empty() && !tag.is_empty() && tag != "latest",
                    "{name}"
                );
                assert!(svc.get("build").is_none(), "{name}");
            }
        }

        let restart = svc["restart"].as_str().unwrap_or_default();
        if restart == "no" {
            // One-shot jobs and tools.
            assert!(svc.get("deploy").is_none(), "{name}");
        } else {
            assert!(
                ["always", "unless-stopped", "on-failure"]
                    .iter()
                    .any(|p| restart.starts_with(p)),
                "{name}: long-running services need a restart policy, got {restart:?}"
            );
            let test = &svc["healthcheck"]["test"];
            assert!(
                test.as_array().is_some_and(|t| t.len() > 1) || test.is_string(),
                "{name}: long-running services need a health check"
            );
        }

        for dep in depends_on(svc) {
            assert!(services(&doc).contains_key(&dep), "{name} depends on {dep}");
        }
        for s in secrets_of(svc) {
            assert!(top_secrets.contains_key(&s), "{name}: undefined secret {s}");
        }
        for v in string_list(&svc["volumes"]) {
            let source = v.split(':').next().unwrap();
            if source.starts_with('.') {
                let p = compose_dir().join(source);
                assert!(p.exists(), "{name}: {} does not exist", p.display());
            } else {
                assert!(
                    top_volumes.contains_key(source),
                    "{name}: undefined volume {source}"
                );
            }
        }
    }
    for bin in BINARIES {
        assert!(started.contains(bin), "no service runs {bin}");
    }
    // Every secret file has a committed example of its format; the real ones are ignored.
    for (name, s) in top_secrets {
        let file = s["file"].as_str().unwrap();
        let example = compose_dir().join(format!("{file}.example"));
        assert!(example.is_file(), "secret {name}: no {}", example.display());
    }
    let ignore = read(&compose_dir().join("secrets/.gitignore"));
    assert!(ignore.lines().any(|l| l.trim() == "*"), "{ignore}");
    // The Postgres sink is scaled out.
    let replicas = &services(&doc)["kline-pg-sink"]["deploy"]["replicas"];
    assert!(
        replicas.as_u64().is_some_and(|n| n >= 2)
            || replicas.as_str().is_some_and(|s| s.ends_with(":-2}")),
        "{replicas}"
    );
}

#[test]
fn every_variable_set_for_a_binary_is_one_it_documents() {
    let doc = merged();
    let mut cache: BTreeMap<String, Documented> = BTreeMap::new();
    let mut checked = 0;
    for (name, svc) in services(&doc) {
        let bins = binaries(svc);
        if bins.is_empty() {
            continue;
        }
        for bin in &bins {
            cache
                .entry(bin.clone())
                .or_insert_with(|| Documented::of(bin));
        }
        let mounted = secrets_of(svc);
        for (var, value) in env_map(svc) {
            // A job running several binaries sets what one of them reads.
            assert!(
                bins.iter().any(|b| cache[b].documents(&var)),
                "{name}: none of {bins:?} documents {var} in its --help"
            );
            checked += 1;
            if var.ends_with("_FILE") {
                let secret = value
                    .strip_prefix("/run/secrets/")
                    .unwrap_or_else(|| panic!("{name}: {var}={value} is not a compose secret"));
                assert!(
                    mounted.iter().any(|m| m == secret),
                    "{name}: {var} names secret {secret}, which the service does not mount"
                );
            }
            // Secrets only through files: no literal password, token or credentials URL.
            assert!(
                !(var.ends_with("PASSWORD") || var.ends_with("TOKEN") || var == "DATABASE_URL"),
                "{name}: {var} set directly; use {var}_FILE and a secret"
            );
        }
    }
    assert!(checked > 30, "only {checked} variables checked");
}

/// `${VAR}` and `${VAR:-default}` references in a compose file.
fn interpolated(text: &str) -> BTreeSet<String> {
    let re = regex::Regex::new(r"\$\{([A-Z0-9_]+)(?::?[-?][^}]*)?\}").unwrap();
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .flat_map(|l| {
            re.captures_iter(l)
                // `$${X}` is a literal `${X}` for the container's shell, not a compose setting.
                .filter(|c| !l[..c.get(0).unwrap().start()].ends_with('$'))
                .map(|c| c[1].to_owned())
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn every_setting_is_documented_in_the_env_example() {
    let example = read(&compose_dir().join(".env.example"));
    let documented: BTreeSet<String> = example
        .lines()
        .filter_map(|l| l.split_once('=').map(|(k, _)| k.trim().to_owned()))
        .filter(|k| !k.starts_with('#') && !k.is_empty())
        .collect();
    let mut used = BTreeSet::new();
    for file in [COMPOSE, CLUSTER] {
        used.extend(interpolated(&read(&compose_dir().join(file))));
    }
    let undocumented: Vec<_> = used.difference(&documented).collect();
    assert!(
        undocumented.is_empty(),
        "not in .env.example: {undocumented:?}"
    );
    let unused: Vec<_> = documented.difference(&used).collect();
    assert!(unused.is_empty(), "in .env.example but unused: {unused:?}");
    let readme = read(&compose_dir().join("README.md"));
    for var in &used {
        assert!(
            readme.contains(var.as_str()),
            "compose/README.md does not mention {var}"
        );
    }
}

// --- NATS ---------------------------------------------------------------------------------------

/// (user, password variable) of every user in auth.conf.
fn nats_users() -> BTreeMap<String, String> {
    let auth = read(&compose_dir().join("nats/auth.conf"));
    let re =
        regex::Regex::new(r"\{\s*user:\s*([A-Za-z0-9_-]+),\s*password:\s*\$([A-Z0-9_]+)").unwrap();
    re.captures_iter(&auth)
        .map(|c| (c[1].to_owned(), c[2].to_owned()))
        .collect()
}

#[test]
fn every_service_connects_to_nats_as_its_own_role() {
    let users = nats_users();
    assert_eq!(
        users.keys().map(String::as_str).collect::<Vec<_>>(),
        ["admin", "ops", "pg-sink", "producer", "signals"]
    );
    let doc = yaml(&compose_dir().join(COMPOSE));
    // The nats service mounts every password secret; its entry point turns
    // nats_<role>_password into KLINEBUS_NATS_<ROLE>_PASSWORD.
    let nats_secrets = secrets_of(&services(&doc)["nats"]);
    for (user, var) in &users {
        let secret = format!("nats_{}_password", user.replace('-', "_"));
        assert_eq!(
            var,
            &format!(
                "KLINEBUS_NATS_{}_PASSWORD",
                user.replace('-', "_").to_uppercase()
            )
        );
        assert!(
            nats_secrets.contains(&secret),
            "nats does not mount {secret}"
        );
    }
    let expected_role = [
        ("migrate", "admin"),
        ("kline-backfill", "producer"),
        ("kline-live", "producer"),
        ("kline-pg-sink", "pg-sink"),
        ("kline-signals", "signals"),
        ("kline-audit", "ops"),
        ("klinectl", "ops"),
    ];
    // Every service talking to NATS is listed, so none runs as an unchecked user.
    let with_nats: BTreeSet<&str> = services(&doc)
        .iter()
        .filter(|(_, svc)| env_map(svc).contains_key("NATS_URL"))
        .map(|(name, _)| name.as_str())
        .collect();
    assert_eq!(
        with_nats,
        expected_role.iter().map(|(name, _)| *name).collect()
    );
    for (name, role) in expected_role {
        let env = env_map(&services(&doc)[name]);
        assert_eq!(
            env.get("NATS_USER").map(String::as_str),
            Some(role),
            "{name}"
        );
        assert_eq!(
            env.get("NATS_PASSWORD_FILE").map(String::as_str),
            Some(format!("/run/secrets/nats_{}_password", role.replace('-', "_")).as_str()),
            "{name}"
        );
        // Only the migrate job sets the streams (replicas on its command line); the services
        // may not create them, so a replica count would be a setting that does nothing.
        assert!(!env.contains_key("NATS_STREAM_REPLICAS"), "{name}");
    }
}

/// The value a `${VAR:-default}` (or literal) setting has when `.env` does not set `VAR`; `$$`
/// is a literal `$`.
fn with_defaults(text: &str) -> String {
    let re = regex::Regex::new(r"\$\{[A-Z0-9_]+:-([^}]*)\}").unwrap();
    re.replace_all(text, "$1").replace("$$", "$")
}

/// The default of the klinectl `streams apply` argument read from `env`.
fn streams_apply_default(env: &str) -> String {
    let mut cmd = klinectl::cli::Cli::command();
    cmd.build();
    let apply = cmd
        .find_subcommand("streams")
        .and_then(|s| s.find_subcommand("apply"))
        .unwrap();
    let arg = apply
        .get_arguments()
        .find(|a| a.get_env().is_some_and(|e| e == env))
        .unwrap_or_else(|| panic!("klinectl streams apply reads no {env}"));
    let defaults = arg.get_default_values();
    assert_eq!(defaults.len(), 1, "{env}");
    defaults[0].to_string_lossy().into_owned()
}

#[test]
fn the_migrate_job_applies_the_streams_before_every_service() {
    let doc = yaml(&compose_dir().join(COMPOSE));
    let migrate = &services(&doc)["migrate"];
    // The schema first, then the streams; klinectl only if the migrations succeeded, and its
    // exit code is the job's.
    let entry = string_array(&migrate["entrypoint"]);
    assert_eq!(binaries(migrate), ["klinebus-migrate", "klinectl"]);
    assert_eq!(entry.len(), 4, "{entry:?}");
    assert_eq!(
        entry[2], "klinebus-migrate && exec klinectl streams apply \"$$@\"",
        "{entry:?}"
    );
    assert_eq!(
        string_array(&migrate["command"]),
        ["--stream-replicas", "${NATS_STREAM_REPLICAS:-1}"]
    );
    let env = env_map(migrate);
    assert_eq!(env["NATS_USER"], "admin");
    assert_eq!(
        env["NATS_PASSWORD_FILE"],
        "/run/secrets/nats_admin_password"
    );
    // Retention from the environment, defaulting to what klinectl documents.
    for var in [
        "KLINES_MAX_AGE",
        "KLINES_MAX_BYTES",
        "NATS_DUPLICATE_WINDOW",
    ] {
        let set = env
            .get(var)
            .unwrap_or_else(|| panic!("migrate does not set {var}"));
        assert_eq!(with_defaults(set), streams_apply_default(var), "{var}");
    }
    for dep in ["postgres", "nats"] {
        assert_eq!(
            migrate["depends_on"][dep]["condition"], "service_healthy",
            "migrate on {dep}"
        );
    }
    assert_eq!(migrate["restart"], "no");
    // Everything that uses NATS or PostgreSQL starts after it succeeded.
    let mut after = Vec::new();
    for (name, svc) in services(&doc) {
        let env = env_map(svc);
        let uses = ["NATS_URL", "DATABASE_URL_FILE", "PGHOST"]
            .iter()
            .any(|v| env.contains_key(*v));
        if name == "migrate" || !uses {
            continue;
        }
        assert_eq!(
            svc["depends_on"]["migrate"]["condition"], "service_completed_successfully",
            "{name} does not wait for the migrate job"
        );
        after.push(name.as_str());
    }
    after.sort_unstable();
    assert_eq!(
        after,
        [
            "grafana-db-role",
            "kline-audit",
            "kline-backfill",
            "kline-live",
            "kline-pg-sink",
            "kline-signals",
            "klinectl"
        ]
    );
}

/// Compose's migrate job as written: its entry point and command run by /bin/sh with the real
/// binaries on PATH and the service's environment (compose's defaults), only the NATS address
/// and the secret files pointed at this machine's; NATS from the real nats.conf + auth.conf.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_migrate_job_runs_as_written() {
    let admin_password = "admin-test-password";
    let nats = klinebus_testkit::NatsServer::start_with_config(
        &read(&compose_dir().join("nats/nats.conf")),
        &[("auth.conf", &read(&compose_dir().join("nats/auth.conf")))],
        &[
            ("KLINEBUS_NATS_PRODUCER_PASSWORD", "p"),
            ("KLINEBUS_NATS_PG_SINK_PASSWORD", "s"),
            ("KLINEBUS_NATS_SIGNALS_PASSWORD", "g"),
            ("KLINEBUS_NATS_OPS_PASSWORD", "o"),
            ("KLINEBUS_NATS_ADMIN_PASSWORD", admin_password),
        ],
    );
    let db = klinebus_testkit::TestDb::fresh().await;
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    std::os::unix::fs::symlink(
        env!("CARGO_BIN_EXE_e2e-klinebus-migrate"),
        bin.join("klinebus-migrate"),
    )
    .unwrap();
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_e2e-klinectl"), bin.join("klinectl")).unwrap();
    let secret = |name: &str, value: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, format!("{value}\n")).unwrap();
        p.to_str().unwrap().to_owned()
    };
    let admin_file = secret("nats_admin_password", admin_password);
    let db_file = secret("database_url", &db.url);
    let no_db_file = secret(
        "no_database_url",
        &format!(
            "postgres://postgres@127.0.0.1:5432/kb_none_{}",
            std::process::id()
        ),
    );

    let doc = yaml(&compose_dir().join(COMPOSE));
    let svc = &services(&doc)["migrate"];
    let argv: Vec<String> = string_array(&svc["entrypoint"])
        .into_iter()
        .chain(string_array(&svc["command"]))
        .map(|a| with_defaults(&a))
        .collect();
    let mut env: BTreeMap<String, String> = env_map(svc)
        .into_iter()
        .map(|(k, v)| (k, with_defaults(&v)))
        .collect();
    for (var, value) in [
        ("NATS_URL", nats.url()),
        ("NATS_PASSWORD_FILE", admin_file),
        ("DATABASE_URL_FILE", db_file),
    ] {
        assert!(
            env.insert(var.into(), value).is_some(),
            "migrate sets no {var}"
        );
    }
    let path = format!("{}:/usr/bin:/bin", bin.display());
    let run = |env: &BTreeMap<String, String>| {
        let out = std::process::Command::new(&argv[0])
            .args(&argv[1..])
            .env_clear()
            .env("PATH", &path)
            .envs(env)
            .current_dir(dir.path())
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (
            out.status,
            String::from_utf8_lossy(&out.stdout).into_owned(),
            text,
        )
    };
    let mut opts = klinebus_schemas::bus::BusOptions::new(nats.url(), "compose-test");
    opts.user = Some("admin".into());
    opts.password = Some(admin_password.into());
    let js = async_nats::jetstream::new(klinebus_schemas::bus::connect(&opts).await.unwrap());

    // Migrations that fail stop the job before the streams: its exit code says so.
    let mut unreachable = env.clone();
    unreachable.insert("DATABASE_URL_FILE".into(), no_db_file);
    let (status, _, text) = run(&unreachable);
    assert!(!status.success(), "{text}");
    assert!(js.get_stream("KLINES").await.is_err(), "{text}");

    let (status, stdout, text) = run(&env);
    assert!(status.success(), "{text}\n{}", nats.output());
    assert!(text.contains("schema up to date"), "{text}");
    assert_eq!(stdout.matches(" created ").count(), 4, "{stdout}");
    let mut klines = js.get_stream("KLINES").await.unwrap();
    let config = &klines.info().await.unwrap().config;
    assert_eq!(config.max_age, Duration::from_secs(30 * 86_400));
    assert_eq!(config.max_bytes, 8 << 30);
    assert_eq!(config.duplicate_window, Duration::from_secs(120));
    assert_eq!(config.num_replicas, 1);
    // Every `up` runs it again: nothing changes.
    let (status, stdout, text) = run(&env);
    assert!(status.success(), "{text}");
    assert_eq!(stdout.matches(" unchanged ").count(), 4, "{stdout}");
}

#[test]
fn grafana_reads_postgres_as_the_read_only_role() {
    let doc = yaml(&compose_dir().join(COMPOSE));
    let sql = read(&compose_dir().join("postgres/grafana-reader.sql"));
    let role = regex::Regex::new(r"\\set role ([a-z_]+)")
        .unwrap()
        .captures(&sql)
        .unwrap()[1]
        .to_owned();
    assert_eq!(role, "klinebus_grafana");
    let ds = yaml(&compose_dir().join("grafana/provisioning/datasources/datasources.yml"));
    let pg = ds["datasources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["type"] == "grafana-postgresql-datasource")
        .unwrap();
    assert_eq!(pg["user"], role.as_str());
    assert_eq!(
        pg["secureJsonData"]["password"],
        "$__file{/run/secrets/postgres_grafana_password}"
    );
    let grafana = &services(&doc)["grafana"];
    assert_eq!(
        secrets_of(grafana),
        ["grafana_admin_password", "postgres_grafana_password"],
        "Grafana holds no other database password"
    );
    assert_eq!(
        grafana["depends_on"]["grafana-db-role"]["condition"],
        "service_completed_successfully"
    );

    // The job runs the script as the database owner, with the reader's password file.
    let job = &services(&doc)["grafana-db-role"];
    let postgres = env_map(&services(&doc)["postgres"]);
    let env = env_map(job);
    assert_eq!(env["PGHOST"], "postgres");
    assert_eq!(env["PGUSER"], postgres["POSTGRES_USER"]);
    assert_eq!(env["PGDATABASE"], postgres["POSTGRES_DB"]);
    assert_eq!(
        env["GRAFANA_DB_PASSWORD_FILE"],
        "/run/secrets/postgres_grafana_password"
    );
    assert_eq!(
        secrets_of(job),
        ["postgres_password", "postgres_grafana_password"]
    );
    assert!(string_list(&job["volumes"])
        .contains(&"./postgres/grafana-reader.sql:/klinebus/grafana-reader.sql:ro".to_owned()));
    let script = string_array(&job["entrypoint"]).join(" ");
    assert!(
        script.contains("cat /run/secrets/postgres_password")
            && script.contains("psql -q -f /klinebus/grafana-reader.sql"),
        "{script}"
    );
    assert_eq!(job["profiles"], grafana["profiles"]);

    // Every table a dashboard panel queries is granted to the role.
    let granted: BTreeSet<String> = regex::Regex::new(r"GRANT SELECT ON ([a-z_, ]+) TO")
        .unwrap()
        .captures(&sql)
        .unwrap()[1]
        .split(',')
        .map(|t| t.trim().to_owned())
        .collect();
    let dash: Value = serde_json::from_str(&read(
        &compose_dir().join("grafana/dashboards/klinebus.json"),
    ))
    .unwrap();
    let mut queries = Vec::new();
    collect_strings(&dash, "rawSql", &mut queries);
    let from = regex::Regex::new(r"(?i)\b(?:FROM|JOIN)\s+([a-z_]+)").unwrap();
    let queried: BTreeSet<String> = queries
        .iter()
        .flat_map(|q| from.captures_iter(q).map(|c| c[1].to_owned()))
        .collect();
    assert!(!queried.is_empty());
    let missing: Vec<_> = queried.difference(&granted).collect();
    assert!(missing.is_empty(), "not granted to {role}: {missing:?}");
}

#[test]
fn the_cluster_override_uses_three_nodes_and_three_replicas() {
    let over = yaml(&compose_dir().join(CLUSTER));
    let doc = merged();
    let nodes = ["nats", "nats-2", "nats-3"];
    for (i, node) in nodes.iter().enumerate() {
        let svc = &services(&doc)[*node];
        let conf = format!("/etc/nats/cluster-{}.conf", i + 1);
        assert_eq!(svc["command"], serde_json::json!(["-c", conf]), "{node}");
        let text = read(&compose_dir().join(format!("nats/cluster-{}.conf", i + 1)));
        assert!(text.contains(&format!("server_name: nats-{}", i + 1)));
        for j in 1..=3 {
            assert!(
                text.contains(&format!("nats://nats-{j}:6222")),
                "cluster-{}",
                i + 1
            );
        }
        assert!(text.contains("include \"auth.conf\""));
    }
    for (name, svc) in services(&over) {
        let Some(env) = svc["environment"].as_object() else {
            continue;
        };
        if env.contains_key("NATS_URL") {
            assert_eq!(
                env["NATS_URL"], "nats://nats-1:4222,nats://nats-2:4222,nats://nats-3:4222",
                "{name}"
            );
        }
        assert!(!env.contains_key("NATS_STREAM_REPLICAS"), "{name}");
    }
    // The streams get three replicas from the migrate job, once every node is healthy: in
    // contact with the JetStream meta leader (`js-server-only`; `js-enabled-only` is healthy
    // before a leader is elected, and a stream of 3 replicas cannot be placed then).
    let migrate = &services(&doc)["migrate"];
    assert_eq!(
        string_array(&migrate["command"]),
        ["--stream-replicas", "3"]
    );
    for node in nodes {
        let health = services(&doc)[node]["healthcheck"]["test"].to_string();
        assert!(
            health.contains("/healthz?js-server-only=true"),
            "{node}: {health}"
        );
        assert_eq!(
            migrate["depends_on"][node]["condition"], "service_healthy",
            "migrate on {node}"
        );
    }
    // Every binary that talks to NATS is pointed at the cluster.
    for (name, svc) in services(&yaml(&compose_dir().join(COMPOSE))) {
        if env_map(svc).contains_key("NATS_URL") {
            assert!(
                over["services"][name]["environment"]["NATS_URL"].is_string(),
                "{name} is not pointed at the cluster"
            );
        }
    }
}

// --- Observability ------------------------------------------------------------------------------

fn port_of(addr: &str) -> u16 {
    addr.rsplit_once(':').unwrap().1.parse().unwrap()
}

#[test]
fn prometheus_scrapes_every_service_with_metrics() {
    let doc = yaml(&compose_dir().join(COMPOSE));
    // Services serving /metrics, and on which port.
    let mut serving = BTreeMap::new();
    for (name, svc) in services(&doc) {
        if let Some(addr) = env_map(svc).get("METRICS_ADDR") {
            assert!(
                addr.starts_with("0.0.0.0:"),
                "{name}: {addr} is not reachable"
            );
            let port = port_of(addr);
            let health = svc["healthcheck"]["test"].to_string();
            assert!(
                health.contains(&format!("127.0.0.1:{port}/health")),
                "{name}: health check does not ask /health on {port}: {health}"
            );
            serving.insert(name.clone(), port);
        }
    }
    assert_eq!(
        serving.keys().map(String::as_str).collect::<Vec<_>>(),
        [
            "kline-audit",
            "kline-live",
            "kline-pg-sink",
            "kline-signals"
        ]
    );

    let prom = yaml(&compose_dir().join("prometheus/prometheus.yml"));
    let mut scraped = BTreeMap::new();
    for job in prom["scrape_configs"].as_array().unwrap() {
        for sc in job["static_configs"].as_array().into_iter().flatten() {
            for t in sc["targets"].as_array().unwrap() {
                let (host, port) = t.as_str().unwrap().rsplit_once(':').unwrap();
                scraped.insert(host.to_owned(), port.parse::<u16>().unwrap());
            }
        }
        for sd in job["dns_sd_configs"].as_array().into_iter().flatten() {
            let port = u16::try_from(sd["port"].as_u64().unwrap()).unwrap();
            for n in sd["names"].as_array().unwrap() {
                scraped.insert(n.as_str().unwrap().to_owned(), port);
            }
        }
    }
    assert_eq!(
        scraped, serving,
        "Prometheus targets differ from the services' METRICS_ADDR"
    );
    // Prometheus mounts this very file.
    let mounts = string_list(&services(&doc)["prometheus"]["volumes"]);
    assert!(mounts
        .iter()
        .any(|m| m.starts_with("./prometheus/prometheus.yml:")));
}

fn collect_strings(v: &Value, key: &str, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                if k == key {
                    if let Some(s) = x.as_str() {
                        out.push(s.to_owned());
                    }
                }
                collect_strings(x, key, out);
            }
        }
        Value::Array(a) => a.iter().for_each(|x| collect_strings(x, key, out)),
        _ => {}
    }
}

#[test]
fn the_dashboard_queries_only_metrics_the_code_exports() {
    let registered = support::registered_metrics();
    assert!(registered.len() > 20, "{registered:?}");
    let path = compose_dir().join("grafana/dashboards/klinebus.json");
    let dash: Value = serde_json::from_str(&read(&path)).unwrap();
    let mut exprs = Vec::new();
    collect_strings(&dash, "expr", &mut exprs);
    let re = regex::Regex::new(r"klinebus_[a-z0-9_]+").unwrap();
    let mut used = BTreeSet::new();
    for e in &exprs {
        for m in re.find_iter(e) {
            let name = m.as_str();
            let (base, suffix) = ["_sum", "_count", "_bucket"]
                .iter()
                .find_map(|s| name.strip_suffix(s).map(|b| (b, *s)))
                .filter(|(b, _)| registered.contains_key(*b))
                .unwrap_or((name, ""));
            let Some(kind) = registered.get(base) else {
                panic!("the dashboard queries {name}, which no binary registers: {e}");
            };
            // Histograms are exported as summaries (quantile label, _sum, _count).
            if !suffix.is_empty() || e.contains(&format!("{name}{{quantile")) {
                assert_eq!(kind, "histogram", "{name} in {e}");
                assert_ne!(suffix, "_bucket", "no buckets are exported: {e}");
            }
            used.insert(base.to_owned());
        }
    }
    // The issue's coverage: ingest rate, lag, latency, reconnects, mode, errors.
    for m in [
        "klinebus_live_published_total",
        "klinebus_sink_rows_upserted_total",
        "klinebus_sink_messages_received_total",
        "klinebus_sink_consumer_lag",
        "klinebus_live_publish_latency_seconds",
        "klinebus_sink_flush_seconds",
        "klinebus_signals_compute_seconds",
        "klinebus_live_reconnects_total",
        "klinebus_live_mode",
        "klinebus_sink_errors_total",
        "klinebus_signals_errors_total",
        "klinebus_sink_dead_letters_total",
        "klinebus_live_malformed_frames_total",
    ] {
        assert!(used.contains(m), "the dashboard does not show {m}");
    }
    // The dashboard reads freshness from PostgreSQL (the auditor exports it for the alerts).
    let mut sql = Vec::new();
    collect_strings(&dash, "rawSql", &mut sql);
    assert!(
        sql.iter().any(|s| s.contains("last_ingested_at")),
        "{sql:?}"
    );
    let migrations = read(&repo().join("migrations/0002_ingestion_status.sql"));
    for col in [
        "last_ingested_at",
        "last_closed_timestamp",
        "latency_ms",
        "error_count",
    ] {
        assert!(migrations.contains(col), "{col}");
    }
    // Every data source the panels use is provisioned, and the dashboard folder is loaded.
    let ds = yaml(&compose_dir().join("grafana/provisioning/datasources/datasources.yml"));
    let uids: BTreeSet<String> = ds["datasources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["uid"].as_str().unwrap().to_owned())
        .collect();
    let mut used_uids = Vec::new();
    collect_strings(&dash, "uid", &mut used_uids);
    for u in used_uids.iter().filter(|u| *u != "klinebus") {
        assert!(uids.contains(u), "data source {u} is not provisioned");
    }
    let providers = yaml(&compose_dir().join("grafana/provisioning/dashboards/dashboards.yml"));
    assert_eq!(
        providers["providers"][0]["options"]["path"],
        "/var/lib/grafana/dashboards"
    );
    let grafana = string_list(&services(&yaml(&compose_dir().join(COMPOSE)))["grafana"]["volumes"]);
    assert!(grafana
        .iter()
        .any(|m| m == "./grafana/dashboards:/var/lib/grafana/dashboards:ro"));
}

// --- The cluster, for real ----------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_configs_hold_the_streams_at_three_replicas() {
    use clap::Parser;

    let files = ClusterFiles::new();
    let start = |i: usize| files.start(i);
    let mut nodes = vec![start(1)];
    // Alone, a node has no meta leader: not healthy for compose, so the migrate job waits.
    assert_eq!(nodes[0].health_status(), 503, "{}", nodes[0].output());
    nodes.extend([start(2), start(3)]);
    wait_healthy(&nodes, Duration::from_secs(30)).await;
    // Then the merged files' migrate job applies the streams (klinectl's part, its command
    // line as written), once: no retry is needed after the health checks.
    let url = nodes[0].url();
    let mut args = vec![
        "klinectl".to_owned(),
        "--nats-url".into(),
        url.clone(),
        "--nats-user".into(),
        "admin".into(),
        "--nats-password".into(),
        ADMIN.1.into(),
        "streams".into(),
        "apply".into(),
    ];
    args.extend(string_array(&services(&merged())["migrate"]["command"]));
    let out = klinectl::run(klinectl::cli::Cli::parse_from(args))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", nodes[0].output()));
    assert_eq!(out.code, 0, "{}", out.output);
    assert_eq!(out.output.matches(" created ").count(), 4, "{}", out.output);

    // One node's URL: the others are reached through the cluster.
    let mut opts = klinebus_schemas::bus::BusOptions::new(url, "cluster-test");
    opts.user = Some(ADMIN.0.into());
    opts.password = Some(ADMIN.1.into());
    let js = async_nats::jetstream::new(klinebus_schemas::bus::connect(&opts).await.unwrap());
    for name in ["KLINES", "CANDLES", "SIGNALS", "DLQ"] {
        let mut s = js.get_stream(name).await.unwrap();
        let info = s.info().await.unwrap();
        assert_eq!(info.config.num_replicas, 3, "{name}");
        let cluster = info.cluster.clone().unwrap();
        assert_eq!(cluster.replicas.len(), 2, "{name}: {cluster:?}");
    }
}
