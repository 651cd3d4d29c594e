//! Times and ages as operators read them.

use std::time::Duration;

use chrono::{DateTime, SecondsFormat};

/// Epoch ms as UTC ISO 8601 with `Z`, e.g. `2025-06-04T12:00:00Z` (milliseconds only if non-zero).
pub fn datetime(ms: i64) -> String {
    match DateTime::from_timestamp_millis(ms) {
        Some(d) if ms % 1000 == 0 => d.to_rfc3339_opts(SecondsFormat::Secs, true),
        Some(d) => d.to_rfc3339_opts(SecondsFormat::Millis, true),
        None => format!("{ms}ms"),
    }
}

/// An age such as `7.1h`, `12.5min`, `3.2d`.
pub fn human_age(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s < 3600.0 {
        format!("{:.1}min", s / 60.0)
    } else if s < 48.0 * 3600.0 {
        format!("{:.1}h", s / 3600.0)
    } else {
        format!("{:.1}d", s / 86400.0)
    }
}

/// A limit such as `6min`, `5h`, `25h`, `7d` (whole units).
pub fn human_limit(d: Duration) -> String {
    let s = d.as_secs();
    if s < 3600 {
        format!("{}min", s / 60)
    } else if s < 48 * 3600 {
        format!("{}h", s / 3600)
    } else {
        format!("{}d", s / 86400)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(datetime(1_749_038_400_000), "2025-06-04T12:00:00Z");
        assert_eq!(datetime(1_749_038_459_999), "2025-06-04T12:00:59.999Z");
        assert_eq!(human_age(Duration::from_secs(25_560)), "7.1h");
        assert_eq!(human_limit(Duration::from_secs(5 * 3600)), "5h");
        assert_eq!(human_limit(Duration::from_secs(6 * 60)), "6min");
        assert_eq!(human_limit(Duration::from_secs(7 * 86400)), "7d");
    }
}
