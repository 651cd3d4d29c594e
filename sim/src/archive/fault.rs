//! Archive faults: one per file, aimed by path, file name, or symbol + interval + period.

use serde::{Deserialize, Serialize};

use super::file::{archive_interval_name, parse_archive_interval, ArchiveFile, Period};
use crate::interval::Interval;

/// What is wrong with one archive file. Every variant but `BadChecksum` (and `Missing`) is
/// published with a CHECKSUM of the bytes actually served, as Binance published its bad files.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ArchiveFaultKind {
    /// 404 for the zip and its CHECKSUM.
    Missing,
    /// The CHECKSUM names a hash that is not the zip's.
    BadChecksum,
    /// The zip's bytes cut after `keep_bytes` (default: half): a broken zip.
    TruncatedZip { keep_bytes: Option<usize> },
    /// A valid zip whose CSV holds only its first `keep_rows` rows (default: half).
    MissingRows { keep_rows: Option<usize> },
    /// The first `rows` rows (default: all) each written `copies` times (default 3).
    DuplicateRows {
        copies: Option<usize>,
        rows: Option<usize>,
    },
    /// `rows` candles (default 1, spread over the file) with a different close (high or low,
    /// the candle stays consistent). Clearing the fault re-publishes the correct file.
    WrongValues { rows: Option<usize> },
}

impl ArchiveFaultKind {
    /// The snake_case name used in JSON and flags.
    pub fn name(self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::BadChecksum => "bad_checksum",
            Self::TruncatedZip { .. } => "truncated_zip",
            Self::MissingRows { .. } => "missing_rows",
            Self::DuplicateRows { .. } => "duplicate_rows",
            Self::WrongValues { .. } => "wrong_values",
        }
    }

    /// A kind from its name and the optional number of the `FILE=KIND[:N]` flag form (N is
    /// keep_bytes, keep_rows, copies or rows).
    fn from_name(name: &str, n: Option<usize>) -> Result<Self, String> {
        Ok(match name {
            "missing" => Self::Missing,
            "bad_checksum" => Self::BadChecksum,
            "truncated_zip" => Self::TruncatedZip { keep_bytes: n },
            "missing_rows" => Self::MissingRows { keep_rows: n },
            "duplicate_rows" => Self::DuplicateRows {
                copies: n,
                rows: None,
            },
            "wrong_values" => Self::WrongValues { rows: n },
            other => {
                return Err(format!(
                    "unknown archive fault {other:?} (missing, bad_checksum, truncated_zip, \
                     missing_rows, duplicate_rows, wrong_values)"
                ))
            }
        })
    }
}

/// One archive fault. JSON: `{"file": "BTCUSDT-1m-2024-06.zip", "kind": "missing_rows",
/// "keep_rows": 100}`, or `"symbol"`, `"interval"` (`1mo` or `1M`), `"period"` (`2024-06` or
/// `2024-06-15`) instead of `"file"`; shown with all four.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "FaultSpec", into = "FaultSpec")]
pub struct ArchiveFault {
    pub file: ArchiveFile,
    pub kind: ArchiveFaultKind,
}

/// Which file: a name or path, or an object like a fault's without the kind.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "TargetSpec", into = "String")]
pub struct ArchiveTarget(pub ArchiveFile);

impl From<ArchiveTarget> for String {
    fn from(t: ArchiveTarget) -> Self {
        t.0.path()
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Where {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    file: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    symbol: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    interval: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    period: Option<String>,
}

impl Where {
    fn resolve(&self) -> Result<ArchiveFile, String> {
        let by_parts = match (&self.symbol, &self.interval, &self.period) {
            (Some(s), Some(i), Some(p)) => {
                // Either spelling of the month: `1mo` (archive) or `1M` (API).
                let iv = parse_archive_interval(i)
                    .or_else(|| Interval::parse(i))
                    .ok_or_else(|| format!("unknown interval {i:?}"))?;
                let period = Period::parse(p)
                    .ok_or_else(|| format!("period must be YYYY-MM or YYYY-MM-DD, got {p:?}"))?;
                Some(ArchiveFile::new(s, iv, period).ok_or_else(|| {
                    format!("no daily files for {i}: only intervals up to 1d have them")
                })?)
            }
            (None, None, None) => None,
            _ => return Err("give symbol, interval and period together".into()),
        };
        let by_file = self.file.clone().map(ArchiveFile::try_from).transpose()?;
        match (by_file, by_parts) {
            (Some(a), Some(b)) if a != b => Err(format!("file {a} and {b} disagree")),
            (Some(a), _) | (None, Some(a)) => Ok(a),
            (None, None) => Err("name the file: \"file\", or symbol + interval + period".into()),
        }
    }

    fn of(f: &ArchiveFile) -> Self {
        Self {
            file: Some(f.path()),
            symbol: Some(f.symbol.clone()),
            interval: Some(archive_interval_name(f.interval).to_owned()),
            period: Some(f.period.to_string()),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FaultSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    file: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    symbol: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    interval: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    period: Option<String>,
    kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    keep_bytes: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    keep_rows: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    copies: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    rows: Option<usize>,
}

impl TryFrom<FaultSpec> for ArchiveFault {
    type Error = String;
    fn try_from(s: FaultSpec) -> Result<Self, String> {
        let file = Where {
            file: s.file,
            symbol: s.symbol,
            interval: s.interval,
            period: s.period,
        }
        .resolve()?;
        let kind = ArchiveFaultKind::from_name(&s.kind, None)?;
        // Only the parameters of the kind given: a misplaced one is a mistake, not a default.
        let stray = |name: &str| Err(format!("{name} does not apply to {}", s.kind));
        let kind = match kind {
            ArchiveFaultKind::TruncatedZip { .. } => ArchiveFaultKind::TruncatedZip {
                keep_bytes: s.keep_bytes,
            },
            ArchiveFaultKind::MissingRows { .. } => ArchiveFaultKind::MissingRows {
                keep_rows: s.keep_rows,
            },
            ArchiveFaultKind::DuplicateRows { .. } => ArchiveFaultKind::DuplicateRows {
                copies: s.copies,
                rows: s.rows,
            },
            ArchiveFaultKind::WrongValues { .. } => ArchiveFaultKind::WrongValues { rows: s.rows },
            k => k,
        };
        let given = [
            ("keep_bytes", s.keep_bytes.is_some()),
            ("keep_rows", s.keep_rows.is_some()),
            ("copies", s.copies.is_some()),
            ("rows", s.rows.is_some()),
        ];
        for (name, set) in given {
            if set && !kind.params().contains(&name) {
                return stray(name);
            }
        }
        Ok(Self { file, kind })
    }
}

impl From<ArchiveFault> for FaultSpec {
    fn from(f: ArchiveFault) -> Self {
        let w = Where::of(&f.file);
        let (mut keep_bytes, mut keep_rows, mut copies, mut rows) = (None, None, None, None);
        match f.kind {
            ArchiveFaultKind::TruncatedZip { keep_bytes: k } => keep_bytes = k,
            ArchiveFaultKind::MissingRows { keep_rows: k } => keep_rows = k,
            ArchiveFaultKind::DuplicateRows { copies: c, rows: r } => (copies, rows) = (c, r),
            ArchiveFaultKind::WrongValues { rows: r } => rows = r,
            ArchiveFaultKind::Missing | ArchiveFaultKind::BadChecksum => {}
        }
        Self {
            file: w.file,
            symbol: w.symbol,
            interval: w.interval,
            period: w.period,
            kind: f.kind.name().to_owned(),
            keep_bytes,
            keep_rows,
            copies,
            rows,
        }
    }
}

/// A target: a string (file name or path) or an object with `file` or symbol/interval/period.
#[derive(Deserialize)]
#[serde(untagged)]
enum TargetSpec {
    Name(String),
    Parts(Where),
}

impl TryFrom<TargetSpec> for ArchiveTarget {
    type Error = String;
    fn try_from(t: TargetSpec) -> Result<Self, String> {
        match t {
            TargetSpec::Name(s) => ArchiveFile::try_from(s).map(Self),
            TargetSpec::Parts(w) => w.resolve().map(Self),
        }
    }
}

/// `--archive-fault FILE=KIND[:N]`, e.g. `BTCUSDT-1m-2024-06.zip=missing_rows:100`.
pub fn parse_archive_fault(s: &str) -> Result<ArchiveFault, String> {
    let (file, kind) = s
        .rsplit_once('=')
        .ok_or_else(|| format!("expected FILE=KIND[:N], got {s:?}"))?;
    let (name, n) = match kind.split_once(':') {
        Some((k, n)) => (
            k,
            Some(
                n.parse::<usize>()
                    .map_err(|e| format!("bad number in {s:?}: {e}"))?,
            ),
        ),
        None => (kind, None),
    };
    let kind = ArchiveFaultKind::from_name(name, n)?;
    if n.is_some() && kind.params().is_empty() {
        return Err(format!("{name} takes no number in {s:?}"));
    }
    Ok(ArchiveFault {
        file: ArchiveFile::try_from(file.to_owned())?,
        kind,
    })
}

impl ArchiveFaultKind {
    fn params(self) -> &'static [&'static str] {
        match self {
            Self::Missing | Self::BadChecksum => &[],
            Self::TruncatedZip { .. } => &["keep_bytes"],
            Self::MissingRows { .. } => &["keep_rows"],
            Self::DuplicateRows { .. } => &["copies", "rows"],
            Self::WrongValues { .. } => &["rows"],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_and_flag_forms() {
        let a: ArchiveFault = serde_json::from_str(
            r#"{"symbol":"BTCUSDT","interval":"1M","period":"2024-06","kind":"duplicate_rows","copies":2}"#,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(a.file.zip_name(), "BTCUSDT-1mo-2024-06.zip");
        let shown = serde_json::to_value(&a).unwrap_or_default();
        assert_eq!(
            shown["file"],
            "data/spot/monthly/klines/BTCUSDT/1mo/BTCUSDT-1mo-2024-06.zip"
        );
        assert_eq!(shown["copies"], 2);
        let back: ArchiveFault = serde_json::from_value(shown).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back, a);
        let f = parse_archive_fault("BTCUSDT-1s-2024-06-01.zip=missing_rows:44570")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            f.kind,
            ArchiveFaultKind::MissingRows {
                keep_rows: Some(44_570)
            }
        );
        assert!(parse_archive_fault("BTCUSDT-1m-2024-06.zip=missing:3").is_err());
        assert!(parse_archive_fault("BTCUSDT-1m-2024-06.zip=gone").is_err());
        assert!(serde_json::from_str::<ArchiveFault>(
            r#"{"file":"BTCUSDT-1m-2024-06.zip","kind":"missing","rows":1}"#
        )
        .is_err());
        let t: Vec<ArchiveTarget> = serde_json::from_str(
            r#"["BTCUSDT-1m-2024-06.zip", {"symbol":"BTCUSDT","interval":"1m","period":"2024-06"}]"#,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(t[0], t[1]);
    }
}
