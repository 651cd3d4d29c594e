//! One archive file's bytes: CSV rows (no header) deflated into a one-entry zip, and its
//! `sha256sum`-style CHECKSUM line. Fixed timestamp and level, so equal rows give equal bytes.

use std::io::Write;

use bytes::Bytes;
use sha2::{Digest, Sha256};
use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, ZipWriter};

use super::fault::ArchiveFaultKind;
use super::file::ArchiveFile;
use crate::candle::Candle;
use crate::format::{push_i64, push_u128, push_units};
use crate::interval::civil_from_days;
use crate::interval::DAY;

/// Deflate level: 1 keeps a month of 1m around 60 ms to build; higher levels cost several times
/// that for a few percent less.
const LEVEL: i64 = 1;
/// Rows are formatted into a buffer of about this size before going to the compressor.
const CHUNK: usize = 1 << 16;

/// A file as served: its zip bytes, CHECKSUM line and how many rows its CSV holds.
#[derive(Clone, Debug)]
pub(crate) struct Built {
    pub zip: Bytes,
    pub checksum: Bytes,
    pub rows: usize,
}

impl Built {
    pub fn bytes(&self) -> usize {
        self.zip.len() + self.checksum.len()
    }
}

/// Lower-case hex SHA-256.
pub(crate) fn sha256_hex(data: &[u8]) -> String {
    let digest = Sha256::digest(data);
    let mut s = String::with_capacity(64);
    for b in digest.iter() {
        s.push(char::from(b"0123456789abcdef"[usize::from(b >> 4)]));
        s.push(char::from(b"0123456789abcdef"[usize::from(b & 15)]));
    }
    s
}

fn checksum_line(hex: &str, f: &ArchiveFile) -> Bytes {
    Bytes::from(format!("{hex}  {}\n", f.zip_name()))
}

/// Appends one CSV row: the twelve REST fields, times in ms or µs (close time µs = ms·1000+999).
fn push_row(buf: &mut Vec<u8>, c: &Candle, micros: bool) {
    let a = &c.agg;
    let (open, close) = if micros {
        (c.open_time * 1000, c.close_time * 1000 + 999)
    } else {
        (c.open_time, c.close_time)
    };
    push_i64(buf, open);
    for v in [a.open, a.high, a.low, a.close] {
        buf.push(b',');
        push_units(buf, v.into());
    }
    buf.push(b',');
    push_units(buf, a.volume);
    buf.push(b',');
    push_i64(buf, close);
    buf.push(b',');
    push_units(buf, a.quote);
    buf.push(b',');
    push_u128(buf, a.trades.into());
    buf.push(b',');
    push_units(buf, a.taker_base);
    buf.push(b',');
    push_units(buf, a.taker_quote);
    buf.extend_from_slice(b",0\n");
}

/// The zip's timestamp: the end of the file's period (DOS time, UTC), fixed per file.
fn mtime(f: &ArchiveFile) -> zip::DateTime {
    let end = f.period.range_ms().1;
    let (y, m, d) = civil_from_days(end.div_euclid(DAY));
    u16::try_from(y)
        .ok()
        .and_then(|y| zip::DateTime::from_date_and_time(y, m as u8, d as u8, 0, 0, 0).ok())
        .unwrap_or_default()
}

/// A file's candles in order: it calls its argument once per candle.
pub(crate) trait Source: FnOnce(&mut dyn FnMut(&Candle)) {}
impl<T: FnOnce(&mut dyn FnMut(&Candle))> Source for T {}

/// A zip holding the CSV of the rows `source` hands over; `hint` is the expected row count.
fn zip_rows(
    f: &ArchiveFile,
    hint: usize,
    source: impl Source,
) -> std::io::Result<(Vec<u8>, usize)> {
    let micros = f.period.micros();
    // About 75 bytes a deflated row at level 1.
    let mut z = ZipWriter::new(std::io::Cursor::new(Vec::with_capacity(hint * 80 + 256)));
    let opts = SimpleFileOptions::default()
        .compression_method(CompressionMethod::Deflated)
        .compression_level(Some(LEVEL))
        .last_modified_time(mtime(f))
        .unix_permissions(0o644);
    z.start_file(f.csv_name(), opts)
        .map_err(std::io::Error::other)?;
    let mut buf = Vec::with_capacity(CHUNK + 256);
    let mut n = 0;
    let mut failed = None;
    source(&mut |c| {
        if failed.is_some() {
            return;
        }
        push_row(&mut buf, c, micros);
        n += 1;
        if buf.len() >= CHUNK {
            if let Err(e) = z.write_all(&buf) {
                failed = Some(e);
            }
            buf.clear();
        }
    });
    if let Some(e) = failed {
        return Err(e);
    }
    z.write_all(&buf)?;
    let out = z.finish().map_err(std::io::Error::other)?.into_inner();
    Ok((out, n))
}

fn built(f: &ArchiveFile, zip: Vec<u8>, rows: usize) -> Built {
    let checksum = checksum_line(&sha256_hex(&zip), f);
    Built {
        zip: zip.into(),
        checksum,
        rows,
    }
}

/// The correct file: every candle of `source` (all closed, ascending).
pub(crate) fn clean(f: &ArchiveFile, hint: usize, source: impl Source) -> std::io::Result<Built> {
    let (zip, rows) = zip_rows(f, hint, source)?;
    Ok(built(f, zip, rows))
}

/// Writes the rows for the i-th correct candle through its last argument.
type Emit<'a> = dyn FnMut(usize, &Candle, &mut dyn FnMut(&Candle)) + 'a;

/// The file as a fault makes it, from the correct file and the same candles. `tick` is the
/// price tick (wrong values stay on the grid). `Missing` has no bytes (callers answer 404): it
/// gives the correct file.
pub(crate) fn faulty(
    f: &ArchiveFile,
    kind: ArchiveFaultKind,
    good: &Built,
    tick: u64,
    source: impl Source,
) -> std::io::Result<Built> {
    let n = good.rows;
    // Each kind maps the i-th correct candle to the rows written for it.
    let rezip = |emit: &mut Emit<'_>| {
        let (zip, rows) = zip_rows(f, n, |out: &mut dyn FnMut(&Candle)| {
            let mut i = 0;
            source(&mut |c| {
                emit(i, c, out);
                i += 1;
            });
        })?;
        Ok(built(f, zip, rows))
    };
    match kind {
        ArchiveFaultKind::Missing => Ok(good.clone()),
        ArchiveFaultKind::BadChecksum => {
            // A stable wrong hash: that of the zip with one more byte.
            let mut h = Sha256::new();
            h.update(&good.zip);
            h.update(b"\n");
            let wrong = sha256_hex(&h.finalize());
            Ok(Built {
                checksum: checksum_line(&wrong, f),
                ..good.clone()
            })
        }
        ArchiveFaultKind::TruncatedZip { keep_bytes } => {
            let keep = keep_bytes.unwrap_or(good.zip.len() / 2).min(good.zip.len());
            let zip = good.zip.slice(..keep);
            Ok(Built {
                checksum: checksum_line(&sha256_hex(&zip), f),
                zip,
                rows: n,
            })
        }
        ArchiveFaultKind::MissingRows { keep_rows } => {
            let keep = keep_rows.unwrap_or(n / 2);
            rezip(&mut |i, c, out| {
                if i < keep {
                    out(c);
                }
            })
        }
        ArchiveFaultKind::DuplicateRows { copies, rows } => {
            let (copies, dup) = (copies.unwrap_or(3).max(1), rows.unwrap_or(n));
            rezip(&mut |i, c, out| {
                for _ in 0..if i < dup { copies } else { 1 } {
                    out(c);
                }
            })
        }
        ArchiveFaultKind::WrongValues { rows } => {
            let wrong = altered(n, rows.unwrap_or(1));
            rezip(&mut |i, c, out| {
                if wrong.binary_search(&i).is_ok() {
                    let mut c = *c;
                    alter(&mut c, tick);
                    out(&c);
                } else {
                    out(c);
                }
            })
        }
    }
}

/// Indices of the `k` altered rows among `n`: spread evenly, never the same twice.
pub(crate) fn altered(n: usize, k: usize) -> Vec<usize> {
    let k = k.min(n);
    let mut v: Vec<usize> = (0..k).map(|j| (j * 2 + 1) * n / (2 * k)).collect();
    v.dedup();
    v
}

/// A different close that keeps low ≤ open, close ≤ high: the high, or the low when the close
/// is the high already, or one tick above a flat candle (raising its high with it).
fn alter(c: &mut Candle, tick: u64) {
    let a = &mut c.agg;
    if a.close != a.high {
        a.close = a.high;
    } else if a.close != a.low {
        a.close = a.low;
    } else {
        a.high += tick.max(1);
        a.close = a.high;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_of_altered_rows() {
        assert_eq!(altered(10, 1), vec![5]);
        assert_eq!(altered(10, 2), vec![2, 7]);
        assert_eq!(altered(3, 5), vec![0, 1, 2]);
        assert!(altered(0, 1).is_empty());
    }
}
