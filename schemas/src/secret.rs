//! Values that must never reach a log: [`Secret`] (a password or token) and [`ConnUrl`] (a
//! connection URL that may carry one). Their `Debug` (and `ConnUrl`'s `Display`) redact, so
//! every struct holding them can derive `Debug`; [`Secret::expose`] / [`ConnUrl::expose`] are
//! the only ways to the text, for the one place that connects with it.

use std::convert::Infallible;
use std::fmt;
use std::str::FromStr;

/// A password or token.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(String);

impl Secret {
    /// The secret itself, to hand to a client library.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"<redacted>\"")
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Self {
        Self(s)
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Self {
        Self(s.to_owned())
    }
}

impl FromStr for Secret {
    type Err = Infallible;
    fn from_str(s: &str) -> Result<Self, Infallible> {
        Ok(s.into())
    }
}

/// A connection URL (or comma-separated URLs); `Debug` and `Display` show it with any password
/// replaced (see [`redact_url`]).
#[derive(Clone, PartialEq, Eq, Default)]
pub struct ConnUrl(String);

impl ConnUrl {
    /// The URL itself, to connect with.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ConnUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&redact_url(&self.0), f)
    }
}

impl fmt::Display for ConnUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redact_url(&self.0))
    }
}

impl From<String> for ConnUrl {
    fn from(s: String) -> Self {
        Self(s)
    }
}

impl From<&str> for ConnUrl {
    fn from(s: &str) -> Self {
        Self(s.to_owned())
    }
}

impl FromStr for ConnUrl {
    type Err = Infallible;
    fn from_str(s: &str) -> Result<Self, Infallible> {
        Ok(s.into())
    }
}

/// `url` (or comma-separated URLs) with every secret replaced, for logs and `Debug`: a
/// password (`scheme://user:<redacted>@host`), a NATS token standing alone as the user part
/// (`nats://<redacted>@host`), and secret query parameters (`?password=<redacted>`,
/// `sslpassword`, `token`, `secret`, `auth_token`, `access_token`).
pub fn redact_url(url: &str) -> String {
    url.split(',').map(redact_one).collect::<Vec<_>>().join(",")
}

/// Query parameters whose value is a secret.
const SECRET_PARAMS: [&str; 6] = [
    "password",
    "sslpassword",
    "token",
    "secret",
    "auth_token",
    "access_token",
];

fn redact_one(url: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let mut out = match base.split_once("://") {
        Some((scheme, rest)) => match rest.rsplit_once('@') {
            Some((auth, host)) => match auth.split_once(':') {
                Some((user, _)) => format!("{scheme}://{user}:<redacted>@{host}"),
                // For NATS a user part without a password is a token (`nats://TOKEN@host`);
                // for PostgreSQL it is only the user name.
                None if matches!(scheme, "nats" | "tls" | "ws" | "wss") => {
                    format!("{scheme}://<redacted>@{host}")
                }
                None => base.to_owned(),
            },
            None => base.to_owned(),
        },
        None => base.to_owned(),
    };
    if let Some(q) = query {
        out.push('?');
        let params: Vec<String> = q
            .split('&')
            .map(|kv| match kv.split_once('=') {
                Some((k, _)) if SECRET_PARAMS.contains(&k.to_ascii_lowercase().as_str()) => {
                    format!("{k}=<redacted>")
                }
                _ => kv.to_owned(),
            })
            .collect();
        out.push_str(&params.join("&"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_never_show_the_secret() {
        let s = Secret::from("hunter2");
        assert_eq!(format!("{s:?}"), "\"<redacted>\"");
        assert_eq!(s.expose(), "hunter2");
        let u = ConnUrl::from("postgres://app:hunter2@db:5432/k,nats://n:4222");
        assert!(!format!("{u:?} {u}").contains("hunter2"));
        assert_eq!(
            u.to_string(),
            "postgres://app:<redacted>@db:5432/k,nats://n:4222"
        );
        assert_eq!(u.expose(), "postgres://app:hunter2@db:5432/k,nats://n:4222");
    }

    #[test]
    fn tokens_and_secret_query_parameters_are_redacted_too() {
        assert_eq!(
            redact_url("nats://s3cr3tT0ken@nats:4222"),
            "nats://<redacted>@nats:4222"
        );
        assert_eq!(
            redact_url("postgres://app@db/k?sslmode=require&password=hunter2&application_name=x"),
            "postgres://app@db/k?sslmode=require&password=<redacted>&application_name=x"
        );
        assert_eq!(
            redact_url("postgres://db/k?PassWord=hunter2"),
            "postgres://db/k?PassWord=<redacted>"
        );
        assert_eq!(redact_url("nats://n:4222"), "nats://n:4222");
        for url in [
            "nats://tok@a:4222,nats://u:p@b:4222",
            "postgres://u@h/d?sslpassword=hunter2",
        ] {
            let r = redact_url(url);
            assert!(
                !r.contains("tok@") && !r.contains(":p@") && !r.contains("hunter2"),
                "{r}"
            );
        }
    }
}
