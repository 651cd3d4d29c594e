//! PostgreSQL pools that follow a failover. sqlx takes one host a URL (sqlx issue #2290), so
//! klinebus reads libpq's multi-host form itself:
//!
//! - `postgres://user:pw@host1:5432,host2:5433/db?sslmode=disable` (libpq's form: one user,
//!   database and parameters, several `host[:port]`), and/or
//! - several complete URLs separated by commas (`postgres://…@h1/db,postgres://…@h2/db`).
//!
//! With one host nothing changes: the pool is sqlx's, on that URL. With several, [`connect`]
//! aims the pool at the first host, in the order given, that accepts a connection and is
//! read-write (not in recovery, `transaction_read_only` off: libpq's
//! `target_session_attrs=read-write`); every new connection is checked the same way before the
//! pool hands it out, so nothing ever writes to (or waits on) a standby. A background task
//! checks the current host every `--database-check-interval` over one connection of its own;
//! once it is unreachable or read-only, the hosts are tried in order again and the pool is
//! re-aimed (`Pool::set_connect_options`) at the read-write one. Connections opened before
//! the switch are closed instead of being handed out. The task ends when the pool is closed.
//! The pool stays on a host while it works (no failing back), so an old primary that comes back
//! read-write beside the new one is not written to.

use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgConnection, PgPool};
use tokio_util::sync::CancellationToken;

use crate::args::redact_url;
use crate::Backoff;

/// How often the current host is checked by default (`--database-check-interval`).
pub const DEFAULT_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// How long one connection attempt or check may take before the host counts as unreachable
/// (a host that drops packets would otherwise hold the search up for the OS's TCP timeout).
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// True for a read-only server: a standby, or a primary told to refuse writes.
const READ_ONLY_SQL: &str =
    "SELECT pg_is_in_recovery() OR current_setting('transaction_read_only')::bool";

/// A database URL that cannot be used, or no host to use.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The URL (shown redacted) is malformed.
    #[error("database URL {url}: {why}")]
    Url {
        /// The URL, redacted.
        url: String,
        /// What is wrong.
        why: String,
    },
    /// sqlx refused a host's URL (its parameters).
    #[error("database URL for {host}")]
    Options {
        /// `host:port`.
        host: String,
        /// sqlx's error.
        source: sqlx::Error,
    },
    /// The only host could not be connected to.
    #[error("cannot connect to the database")]
    Connect(#[source] sqlx::Error),
    /// None of several hosts is reachable and read-write.
    #[error("no read-write database host: {0}")]
    NoPrimary(String),
    /// The URL's file could not be read.
    #[error(transparent)]
    Secret(#[from] crate::SecretError),
}

impl DbError {
    /// Whether trying again cannot help: a malformed URL or an unreadable URL file, or the only
    /// host refusing the login (SQLSTATE class 28: wrong password, no such role, pg_hba.conf).
    /// With several hosts each refusal is one host's ([`DbError::NoPrimary`]), and waited out.
    pub fn is_lasting(&self) -> bool {
        match self {
            Self::Url { .. } | Self::Options { .. } | Self::Secret(_) => true,
            Self::Connect(sqlx::Error::Database(e)) => {
                e.code().is_some_and(|c| c.starts_with("28"))
            }
            Self::Connect(_) | Self::NoPrimary(_) => false,
        }
    }
}

/// One host of a database URL.
#[derive(Clone)]
pub struct DbHost {
    label: String,
    options: PgConnectOptions,
}

impl DbHost {
    /// `host:port`, for logs (never a secret).
    pub fn label(&self) -> &str {
        &self.label
    }

    /// sqlx's options for this host.
    pub fn options(&self) -> &PgConnectOptions {
        &self.options
    }
}

impl std::fmt::Debug for DbHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // PgConnectOptions' Debug would show the password.
        f.write_str(&self.label)
    }
}

/// One single-host URL per host of `url`, in order (`url` itself when it names one host).
pub fn split_hosts(url: &str) -> Result<Vec<String>, DbError> {
    let bad = |why: &str| DbError::Url {
        url: redact_url(url),
        why: why.to_owned(),
    };
    let mut out = Vec::new();
    for one in split_urls(url) {
        let (scheme, rest) = one
            .split_once("://")
            .ok_or_else(|| bad("not a postgres:// URL"))?;
        if !matches!(scheme, "postgres" | "postgresql") {
            return Err(bad("not a postgres:// URL"));
        }
        // The authority ends at the path or the query; user info ends at its last `@`.
        let end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(end);
        let (userinfo, hostlist) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        if !hostlist.contains(',') {
            out.push(one.to_owned());
            continue;
        }
        let (path, query) = match tail.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (tail, None),
        };
        let mut kept = Vec::new();
        for pair in query.into_iter().flat_map(|q| q.split('&')) {
            let key = pair.split_once('=').map_or(pair, |(k, _)| k);
            match key {
                "target_session_attrs" => {
                    let value = pair.split_once('=').map_or("", |(_, v)| v);
                    if !matches!(value, "read-write" | "primary") {
                        return Err(bad(
                            "klinebus writes: with several hosts it takes the read-write one \
                             (target_session_attrs=read-write or primary, the default)",
                        ));
                    }
                }
                "host" | "hostaddr" | "port" => {
                    return Err(bad(
                        "give several hosts as host1:port1,host2:port2 in the URL, not as \
                         host/hostaddr/port parameters",
                    ))
                }
                "" => {}
                _ => kept.push(pair),
            }
        }
        let query = if kept.is_empty() {
            String::new()
        } else {
            format!("?{}", kept.join("&"))
        };
        let user = userinfo.map(|u| format!("{u}@")).unwrap_or_default();
        for host in hostlist.split(',') {
            if host.is_empty() {
                return Err(bad("an empty host in the host list"));
            }
            out.push(format!("{scheme}://{user}{host}{path}{query}"));
        }
    }
    Ok(out)
}

/// The complete URLs of a comma-separated list (a comma followed by a scheme starts the next
/// one; other commas belong to a libpq host list).
fn split_urls(url: &str) -> Vec<&str> {
    let mut starts = vec![0];
    for (i, _) in url.match_indices(',') {
        let next = &url[i + 1..];
        if next.starts_with("postgres://") || next.starts_with("postgresql://") {
            starts.push(i + 1);
        }
    }
    starts
        .iter()
        .enumerate()
        .map(|(n, &s)| {
            // Up to the comma before the next start.
            let end = starts.get(n + 1).map_or(url.len(), |&e| e - 1);
            &url[s..end]
        })
        .collect()
}

/// The hosts of `url`, each with its sqlx options.
pub fn hosts(url: &str) -> Result<Vec<DbHost>, DbError> {
    split_hosts(url)?
        .into_iter()
        .map(|one| {
            let options = PgConnectOptions::from_str(&one).map_err(|source| DbError::Options {
                host: host_label(&one),
                source,
            })?;
            Ok(DbHost {
                label: format!("{}:{}", options.get_host(), options.get_port()),
                options,
            })
        })
        .collect()
}

/// `host[:port]` of a single-host URL, for an error about it.
fn host_label(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let authority = &rest[..end];
    authority
        .rsplit_once('@')
        .map_or(authority, |(_, h)| h)
        .to_owned()
}

/// [`connect`] until it works, with a pause doubling from 200 ms to 5 s between tries, each
/// logged: a database not up yet is waited for. What waiting cannot mend
/// ([`DbError::is_lasting`]) is returned at once; `Ok(None)` when `shutdown` fires.
pub async fn connect_waiting(
    url: &str,
    options: PgPoolOptions,
    check_interval: Duration,
    shutdown: &CancellationToken,
) -> Result<Option<PgPool>, DbError> {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    loop {
        let attempt = tokio::select! {
            () = shutdown.cancelled() => return Ok(None),
            r = connect(url, options.clone(), check_interval) => r,
        };
        let e = match attempt {
            Ok(pool) => return Ok(Some(pool)),
            Err(e) if e.is_lasting() => return Err(e),
            Err(e) => e,
        };
        let wait = backoff.fail();
        tracing::warn!(error = %crate::error_line(&e), retry_in_ms = wait.as_millis() as u64,
            "cannot reach PostgreSQL yet");
        tokio::select! {
            () = shutdown.cancelled() => return Ok(None),
            () = tokio::time::sleep(wait) => {}
        }
    }
}

/// A pool on `url` built from `options` (see the module doc). With one host this is
/// `options.connect(url)`; with several, the pool follows the read-write host, checked every
/// `check_interval`, until it is closed. One attempt: callers retry as they did before.
pub async fn connect(
    url: &str,
    options: PgPoolOptions,
    check_interval: Duration,
) -> Result<PgPool, DbError> {
    let hosts = hosts(url)?;
    if let [only] = hosts.as_slice() {
        return options
            .connect_with(only.options.clone())
            .await
            .map_err(DbError::Connect);
    }
    // Exported from the start, so that a rate over it has a series before the first switch.
    metrics::counter!("klinebus_db_failovers_total").increment(0);
    let (current, probe) = find_primary(&hosts, 0..hosts.len())
        .await
        .map_err(DbError::NoPrimary)?;
    tracing::info!(primary = %hosts[current].label, hosts = hosts.len(),
        "database primary found");
    let switches = Arc::new(Switches::default());
    let pool = options
        .after_connect(|conn, _| {
            Box::pin(async move {
                if read_only(conn).await? {
                    // The pool retries (its connect options may change meanwhile) until its
                    // acquire timeout; the caller then retries its work.
                    return Err(sqlx::Error::Configuration(
                        "the database host is read-only (a standby?)".into(),
                    ));
                }
                Ok(())
            })
        })
        .before_acquire({
            let switches = switches.clone();
            move |_, meta| {
                // A connection opened before the last switch is to the old host.
                let fresh = switches.opened_after_last(meta.age);
                Box::pin(async move { Ok(fresh) })
            }
        })
        .connect_with(hosts[current].options.clone())
        .await
        .map_err(DbError::Connect)?;
    tokio::spawn(watch(
        pool.clone(),
        hosts,
        current,
        probe,
        switches,
        check_interval,
    ));
    Ok(pool)
}

/// When the pool last changed host.
struct Switches {
    epoch: Instant,
    /// Nanoseconds after `epoch` of the last switch; 0: none yet.
    last: AtomicU64,
}

impl Default for Switches {
    fn default() -> Self {
        Self {
            epoch: Instant::now(),
            last: AtomicU64::new(0),
        }
    }
}

impl Switches {
    fn record(&self) {
        let nanos = u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.last.store(nanos.max(1), Ordering::Release);
    }

    /// Whether a connection of `age` was opened after the last switch.
    fn opened_after_last(&self, age: Duration) -> bool {
        let last = self.last.load(Ordering::Acquire);
        if last == 0 {
            return true;
        }
        let since = self
            .epoch
            .elapsed()
            .saturating_sub(Duration::from_nanos(last));
        age < since
    }
}

/// Whether the server of `conn` refuses writes.
async fn read_only(conn: &mut PgConnection) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(READ_ONLY_SQL).fetch_one(conn).await
}

/// A connection to `host` if it is reachable and read-write, else why not.
async fn probe(host: &DbHost) -> Result<PgConnection, String> {
    let attempt = async {
        let mut conn = host.options.connect().await.map_err(|e| e.to_string())?;
        match read_only(&mut conn).await {
            Ok(false) => Ok(conn),
            Ok(true) => Err("read-only".to_owned()),
            Err(e) => Err(e.to_string()),
        }
    };
    tokio::time::timeout(PROBE_TIMEOUT, attempt)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {PROBE_TIMEOUT:?}")))
}

/// The first read-write host of `hosts` taken in `order`, and a connection to it; else why
/// each one is not.
async fn find_primary(
    hosts: &[DbHost],
    order: impl IntoIterator<Item = usize>,
) -> Result<(usize, PgConnection), String> {
    let mut why = Vec::new();
    for i in order {
        match probe(&hosts[i]).await {
            Ok(conn) => return Ok((i, conn)),
            Err(e) => why.push(format!("{}: {e}", hosts[i].label)),
        }
    }
    Err(why.join("; "))
}

/// Checks the pool's host every `interval` until the pool closes; re-aims it when the host is
/// gone or read-only.
async fn watch(
    pool: PgPool,
    hosts: Vec<DbHost>,
    mut current: usize,
    probe_conn: PgConnection,
    switches: Arc<Switches>,
    interval: Duration,
) {
    let closed = pool.close_event();
    tokio::pin!(closed);
    let mut probe_conn = Some(probe_conn);
    // When the current host last answered as read-write: a switch's duration counts from here.
    let mut last_ok = Instant::now();
    let mut warned = false;
    loop {
        tokio::select! {
            _ = &mut closed => break,
            _ = tokio::time::sleep(interval) => {}
        }
        if let Some(conn) = probe_conn.as_mut() {
            let check = tokio::time::timeout(PROBE_TIMEOUT, read_only(conn)).await;
            if matches!(check, Ok(Ok(false))) {
                last_ok = Instant::now();
                continue;
            }
            probe_conn = None;
            tracing::warn!(host = %hosts[current].label,
                "database host unreachable or read-only; looking for the primary");
        }
        // The current host first: a restart of the primary is no failover.
        let order = std::iter::once(current).chain((0..hosts.len()).filter(|&i| i != current));
        let (i, conn) = match find_primary(&hosts, order).await {
            Ok(found) => found,
            Err(why) => {
                if !warned {
                    tracing::warn!(%why, "no read-write database host yet");
                    warned = true;
                }
                continue;
            }
        };
        probe_conn = Some(conn);
        warned = false;
        if i == current {
            last_ok = Instant::now();
            tracing::info!(host = %hosts[i].label, "database primary is back");
            continue;
        }
        pool.set_connect_options(hosts[i].options.clone());
        switches.record();
        metrics::counter!("klinebus_db_failovers_total").increment(1);
        let took = last_ok.elapsed();
        last_ok = Instant::now();
        tracing::warn!(
            "database primary is now {} (was {}), {:.1} s after the old one last answered",
            hosts[i].label,
            hosts[current].label,
            took.as_secs_f64()
        );
        current = i;
    }
    if let Some(conn) = probe_conn {
        let _ = conn.close().await;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_single_host_url_is_kept_as_it_is() {
        for url in [
            "postgres://postgres@127.0.0.1:5432/klinebus?sslmode=disable",
            "postgresql://u:p%2Cq@db/x",
            "postgres:///klinebus?host=/run/postgresql",
        ] {
            assert_eq!(split_hosts(url).unwrap(), vec![url.to_owned()]);
        }
    }

    #[test]
    fn a_libpq_host_list_becomes_one_url_a_host() {
        let got = split_hosts(
            "postgres://app:p%40ss%2Cw%3Ard@db1:5432,db2,[::1]:5434/kb?sslmode=require&\
             target_session_attrs=read-write&application_name=sink",
        )
        .unwrap();
        assert_eq!(
            got,
            [
                "postgres://app:p%40ss%2Cw%3Ard@db1:5432/kb?sslmode=require&application_name=sink",
                "postgres://app:p%40ss%2Cw%3Ard@db2/kb?sslmode=require&application_name=sink",
                "postgres://app:p%40ss%2Cw%3Ard@[::1]:5434/kb?sslmode=require&application_name=sink",
            ]
        );
        let hosts = hosts(&got.join(",")).unwrap();
        let labels: Vec<&str> = hosts.iter().map(DbHost::label).collect();
        assert_eq!(labels, ["db1:5432", "db2:5432", "[::1]:5434"]);
        let o = hosts[1].options();
        assert_eq!(o.get_username(), "app");
        assert_eq!(o.get_database(), Some("kb"));
        assert_eq!(o.get_application_name(), Some("sink"));
    }

    #[test]
    fn complete_urls_may_be_listed_and_mixed_with_host_lists() {
        let got = split_hosts(
            "postgres://a@h1:1/d?sslmode=disable,postgresql://b:x,y@h2:2,h3:3/e,postgres://c@h4/f",
        )
        .unwrap();
        assert_eq!(
            got,
            [
                "postgres://a@h1:1/d?sslmode=disable",
                "postgresql://b:x,y@h2:2/e",
                "postgresql://b:x,y@h3:3/e",
                "postgres://c@h4/f",
            ]
        );
    }

    #[test]
    fn unusable_lists_are_errors_without_secrets() {
        for (url, says) in [
            (
                "postgres://u:hunter2@a,b/d?target_session_attrs=any",
                "read-write",
            ),
            ("postgres://u:hunter2@a,,b/d", "empty host"),
            ("postgres://u:hunter2@a,b/d?port=1,2", "host1:port1"),
            ("mysql://u:hunter2@a,b/d", "postgres://"),
        ] {
            let e = split_hosts(url).unwrap_err().to_string();
            assert!(e.contains(says) && !e.contains("hunter2"), "{url}: {e}");
        }
        let e = hosts("postgres://u:hunter2@a:99999,b/d").unwrap_err();
        let shown = format!("{e} {e:?}");
        assert!(
            shown.contains("a:99999") && !shown.contains("hunter2"),
            "{shown}"
        );
    }

    #[test]
    fn hosts_never_show_their_password() {
        let hosts = hosts("postgres://u:hunter2@a:1,b:2/d?password=hunter2").unwrap();
        let shown = format!("{hosts:?}");
        assert_eq!(shown, "[a:1, b:2]");
        assert_eq!(
            redact_url("postgres://u:hunter2@a:1,b:2/d"),
            "postgres://u:<redacted>@a:1,b:2/d"
        );
    }

    #[test]
    fn connections_from_before_a_switch_are_refused() {
        let s = Switches::default();
        assert!(s.opened_after_last(Duration::from_secs(3600)));
        std::thread::sleep(Duration::from_millis(20));
        s.record();
        std::thread::sleep(Duration::from_millis(20));
        assert!(!s.opened_after_last(Duration::from_millis(30)));
        assert!(s.opened_after_last(Duration::from_millis(5)));
    }

    #[tokio::test]
    async fn no_reachable_host_says_why_for_each() {
        let url = "postgres://u:hunter2@127.0.0.1:1,127.0.0.1:2/d?sslmode=disable";
        let e = connect(url, PgPoolOptions::new(), DEFAULT_CHECK_INTERVAL)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("127.0.0.1:1: ") && e.contains("127.0.0.1:2: ") && !e.contains("hunter2"),
            "{e}"
        );
    }
}
