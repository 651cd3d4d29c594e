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

/// `url` (or comma-separated URLs) with any password replaced (`scheme://user:<redacted>@host`),
/// for logs and `Debug`.
pub fn redact_url(url: &str) -> String {
    url.split(',').map(redact_one).collect::<Vec<_>>().join(",")
}

fn redact_one(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let Some((auth, host)) = rest.rsplit_once('@') else {
        return url.to_owned();
    };
    match auth.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:<redacted>@{host}"),
        None => url.to_owned(),
    }
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
}
