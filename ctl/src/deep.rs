//! `klinectl verify --deep`: the stored closed candles compared with the exchange's, field by
//! field (counts alone cannot see a wrong price). The stored rows of each series' window are read
//! a page of 1000 at a time (keyset on the open time) and each page is compared with the REST
//! page for the same open times, under the weight limiter; `--sample N` compares N pages chosen
//! at random instead of all. A candle the exchange does not have is reported too.
//!
//! With `--repair`, every differing candle is published again with the exchange's values on
//! `klines.repair.binance.<SYMBOL>.<tf>`. A correction must win over the stored version under
//! the sinks' rule (a newer `event_time` replaces an older one of the same closedness), so it
//! carries the exchange time at which the difference was found, and a `Nats-Msg-Id` of its own
//! (`…@<event_time>`) so the stream does not drop it as a duplicate of the first publication.
//! After the sink has drained, the corrected candles are compared again.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::Duration;

use async_nats::jetstream::Context;
use klinebus_binance::{RestClient, RestKline, MAX_KLINES_LIMIT};
use klinebus_schemas::bus;
use klinebus_schemas::{subjects, ClosedCandles, Interval, KlineEvent, Source, Symbol, Venue};
use klinebus_verify::datetime;
use rand::Rng;
use sqlx::{PgPool, Row};
use tokio_util::sync::CancellationToken;

use crate::cli::VerifyArgs;
use crate::{CtlError, Outcome};

/// Differences printed per series (all are counted).
const PRINT_PER_SERIES: usize = 20;

/// One candle whose stored version is not the exchange's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Difference {
    /// Open time (ms).
    pub open_time: i64,
    /// `field: stored → exchange` for every differing field, or why it cannot be compared.
    pub fields: Vec<String>,
    /// The exchange's candle (none when the exchange does not have it).
    pub exchange: Option<RestKline>,
}

/// The comparison of one series.
#[derive(Debug, Clone, Default)]
pub struct SeriesDeep {
    /// Stored closed candles compared.
    pub compared: u64,
    /// Those that differ.
    pub differences: Vec<Difference>,
}

/// A stored candle's fields as text, in the REST row's order.
fn stored_row(r: &sqlx::postgres::PgRow) -> Result<RestKline, sqlx::Error> {
    Ok(RestKline {
        open_time: r.try_get("ts")?,
        open: r.try_get("open")?,
        high: r.try_get("high")?,
        low: r.try_get("low")?,
        close: r.try_get("close")?,
        volume: r.try_get("volume")?,
        close_time: r.try_get("close_time")?,
        quote_volume: r.try_get("quote_volume")?,
        trades: u64::try_from(r.try_get::<i64, _>("trades")?).unwrap_or(0),
        taker_buy_base: r.try_get("taker_buy_base")?,
        taker_buy_quote: r.try_get("taker_buy_quote")?,
    })
}

const STORED_PAGE: &str = r#"
SELECT "timestamp" AS ts, open::text, high::text, low::text, close::text, volume::text,
       close_time, quote_volume::text, trades, taker_buy_base::text, taker_buy_quote::text
FROM ohlcv_candles
WHERE symbol = $1 AND timeframe = $2 AND is_closed AND "timestamp" >= $3 AND "timestamp" < $4
ORDER BY "timestamp"
LIMIT $5
"#;

/// Stored closed candles of a series opening in `[from, to)`, at most `limit`, ascending.
async fn stored_page(
    pool: &PgPool,
    symbol: &Symbol,
    interval: Interval,
    from: i64,
    to: i64,
    limit: i64,
) -> Result<Vec<RestKline>, sqlx::Error> {
    sqlx::query(STORED_PAGE)
        .bind(symbol.as_str())
        .bind(interval.as_str())
        .bind(from)
        .bind(to)
        .bind(limit)
        .fetch_all(pool)
        .await?
        .iter()
        .map(stored_row)
        .collect()
}

/// The fields of `stored` that differ from `exchange`, as `field: stored → exchange`.
pub fn compare(stored: &RestKline, exchange: &RestKline) -> Vec<String> {
    let mut out = Vec::new();
    let mut text = |name: &str, a: &str, b: &str| {
        if a != b {
            out.push(format!("{name}: {a} → {b}"));
        }
    };
    text("open", &stored.open, &exchange.open);
    text("high", &stored.high, &exchange.high);
    text("low", &stored.low, &exchange.low);
    text("close", &stored.close, &exchange.close);
    text("volume", &stored.volume, &exchange.volume);
    text("quote_volume", &stored.quote_volume, &exchange.quote_volume);
    text(
        "taker_buy_base",
        &stored.taker_buy_base,
        &exchange.taker_buy_base,
    );
    text(
        "taker_buy_quote",
        &stored.taker_buy_quote,
        &exchange.taker_buy_quote,
    );
    text(
        "trades",
        &stored.trades.to_string(),
        &exchange.trades.to_string(),
    );
    text(
        "close_time",
        &stored.close_time.to_string(),
        &exchange.close_time.to_string(),
    );
    out
}

/// Compares one page of stored candles (ascending, one series) with the exchange's.
async fn compare_page(
    rest: &RestClient,
    symbol: &Symbol,
    interval: Interval,
    stored: &[RestKline],
    out: &mut SeriesDeep,
) -> Result<(), CtlError> {
    let (Some(first), Some(last)) = (stored.first(), stored.last()) else {
        return Ok(());
    };
    let rows = rest
        .klines(
            symbol,
            interval,
            Some(first.open_time),
            Some(last.open_time),
            MAX_KLINES_LIMIT,
        )
        .await
        .map_err(|source| CtlError::Exchange {
            what: format!("reading {symbol} {interval} klines"),
            source,
        })?;
    let by_open: HashMap<i64, RestKline> = rows.into_iter().map(|k| (k.open_time, k)).collect();
    for s in stored {
        out.compared += 1;
        match by_open.get(&s.open_time) {
            Some(x) => {
                let fields = compare(s, x);
                if !fields.is_empty() {
                    out.differences.push(Difference {
                        open_time: s.open_time,
                        fields,
                        exchange: Some(x.clone()),
                    });
                }
            }
            None => out.differences.push(Difference {
                open_time: s.open_time,
                fields: vec!["not on the exchange".into()],
                exchange: None,
            }),
        }
    }
    Ok(())
}

/// Compares the stored closed candles of `[from, to)` with the exchange: all of them, or
/// `sample` random pages.
pub async fn check_series(
    pool: &PgPool,
    rest: &RestClient,
    symbol: &Symbol,
    interval: Interval,
    (from, to): (i64, i64),
    sample: Option<usize>,
) -> Result<SeriesDeep, CtlError> {
    let mut out = SeriesDeep::default();
    let limit = i64::from(MAX_KLINES_LIMIT);
    match sample {
        None => {
            let mut cursor = from;
            loop {
                let page = stored_page(pool, symbol, interval, cursor, to, limit).await?;
                let Some(last) = page.last() else { break };
                cursor = last.open_time + 1;
                compare_page(rest, symbol, interval, &page, &mut out).await?;
                if page.len() < usize::from(MAX_KLINES_LIMIT) {
                    break;
                }
            }
        }
        Some(n) => {
            let mut starts: Vec<i64> = {
                let mut rng = rand::rng();
                (0..n)
                    .map(|_| rng.random_range(from..to.max(from + 1)))
                    .collect()
            };
            starts.sort_unstable();
            let mut done_to = i64::MIN;
            for start in starts {
                // Pages drawn inside one compared before are not compared twice.
                let start = interval.align(start).max(done_to);
                if start >= to {
                    continue;
                }
                let page = stored_page(pool, symbol, interval, start, to, limit).await?;
                if let Some(last) = page.last() {
                    done_to = last.open_time + 1;
                }
                compare_page(rest, symbol, interval, &page, &mut out).await?;
            }
        }
    }
    Ok(out)
}

/// The corrections of `diffs` as events (exchange values, `event_time` = `found_at`).
fn corrections(
    symbol: &Symbol,
    interval: Interval,
    diffs: &[Difference],
    found_at: i64,
) -> Vec<KlineEvent> {
    diffs
        .iter()
        .filter_map(|d| d.exchange.clone())
        .filter_map(|k| {
            let mut ev = k
                .into_event(symbol, interval, Source::Repair, found_at, found_at)
                .map_err(|e| tracing::warn!(error = %e, "exchange candle not usable"))
                .ok()?;
            ev.event_time = found_at;
            Some(ev)
        })
        .collect()
}

/// Publishes the corrections a page at a time and waits for their acks.
async fn publish_corrections(js: &Context, events: &[KlineEvent]) -> Result<u64, CtlError> {
    let mut acks = Vec::new();
    for page in events.chunks(klinebus_schemas::page::MAX_PER_PAGE) {
        let (Some(first), Some(id)) = (page.first(), ClosedCandles::msg_id(page)) else {
            continue;
        };
        let subject = subjects::kline(
            Source::Repair,
            &Venue::binance(),
            &first.symbol,
            first.interval,
        );
        let id = format!("{id}@{}", first.event_time);
        acks.push(
            bus::publish_page_as(js, subject, page, id)
                .await
                .map_err(CtlError::nats("publishing corrections"))?,
        );
    }
    for ack in acks {
        ack.await
            .map_err(CtlError::nats("confirming corrections"))?;
    }
    Ok(events.len() as u64)
}

fn render_series(out: &mut String, symbol: &Symbol, interval: Interval, r: &SeriesDeep) {
    let _ = writeln!(
        out,
        "Deep {symbol} {interval}: {} candles compared, {} differ",
        r.compared,
        r.differences.len()
    );
    for d in r.differences.iter().take(PRINT_PER_SERIES) {
        let _ = writeln!(out, "  {}: {}", datetime(d.open_time), d.fields.join(", "));
    }
    if r.differences.len() > PRINT_PER_SERIES {
        let _ = writeln!(
            out,
            "  … and {} more",
            r.differences.len() - PRINT_PER_SERIES
        );
    }
}

/// `verify --deep [--sample N] [--repair]`.
pub async fn run(
    db: &crate::Database,
    bus_opts: &bus::BusOptions,
    a: &VerifyArgs,
) -> Result<Outcome, CtlError> {
    let rest = crate::repair::rest_client(&a.repair)?;
    let now = crate::exchange_time(&rest, &a.repair.rest_url).await?;
    let req = crate::verify::request(a, now)?;
    let pool = db.pool().await?;
    let mut output = String::new();
    let mut results = Vec::new();
    for symbol in &req.symbols {
        for &interval in &req.intervals {
            let window = req.span.bounds(interval, req.now_ms);
            let r = check_series(&pool, &rest, symbol, interval, window, a.sample).await?;
            render_series(&mut output, symbol, interval, &r);
            results.push((symbol.clone(), interval, r));
        }
    }
    let differing: usize = results.iter().map(|(_, _, r)| r.differences.len()).sum();
    let _ = writeln!(
        output,
        "Deep check: {differing} candles differ from the exchange"
    );
    if !a.repair.enabled || differing == 0 {
        return Ok(Outcome {
            output,
            code: u8::from(differing > 0),
        });
    }
    let js = crate::repair::connect(bus_opts).await?;
    let mut corrected = 0;
    for (symbol, interval, r) in &results {
        for d in r.differences.iter().filter(|d| d.exchange.is_some()) {
            tracing::info!(%symbol, %interval, open_time = d.open_time, fields = %d.fields.join(", "), "correcting a stored candle");
        }
        let events = corrections(symbol, *interval, &r.differences, now);
        corrected += publish_corrections(&js, &events).await?;
    }
    let _ = writeln!(output, "\nRepair: published {corrected} corrections");
    let wait: Duration = a.repair.repair_wait.into();
    if !wait.is_zero() {
        if let Err(e) = kline_backfill::verify::wait_until_consumed(
            &js,
            &a.repair.repair_consumer,
            wait,
            Duration::from_millis(250),
            &CancellationToken::new(),
        )
        .await
        {
            let _ = writeln!(output, "Not caught up: {}", klinebus_svc::error_line(&e));
        }
    }
    // The corrected candles again: the stored version must now be the exchange's.
    let mut remaining = 0;
    for (symbol, interval, r) in &results {
        for d in &r.differences {
            let Some(x) = &d.exchange else {
                remaining += 1; // not on the exchange: nothing to correct it with
                continue;
            };
            let stored =
                stored_page(&pool, symbol, *interval, d.open_time, d.open_time + 1, 1).await?;
            if stored.first().is_none_or(|s| !compare(s, x).is_empty()) {
                remaining += 1;
            }
        }
    }
    let _ = writeln!(
        output,
        "After repair: {remaining} candles differ from the exchange"
    );
    Ok(Outcome {
        output,
        code: u8::from(remaining > 0),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn k() -> RestKline {
        RestKline {
            open_time: 1_749_038_400_000,
            open: "1.00000000".into(),
            high: "2.00000000".into(),
            low: "0.50000000".into(),
            close: "1.50000000".into(),
            volume: "10.00000000".into(),
            close_time: 1_749_038_459_999,
            quote_volume: "15.00000000".into(),
            trades: 3,
            taker_buy_base: "5.00000000".into(),
            taker_buy_quote: "7.50000000".into(),
        }
    }

    #[test]
    fn names_every_differing_field() {
        assert!(compare(&k(), &k()).is_empty());
        let mut x = k();
        x.close = "1.40000000".into();
        x.trades = 4;
        assert_eq!(
            compare(&k(), &x),
            ["close: 1.50000000 → 1.40000000", "trades: 3 → 4"]
        );
    }

    #[test]
    fn corrections_win_by_event_time_and_carry_the_exchange_values() {
        let mut x = k();
        x.close = "1.40000000".into();
        let d = Difference {
            open_time: x.open_time,
            fields: compare(&k(), &x),
            exchange: Some(x),
        };
        let now = 1_749_100_000_000;
        let ev = corrections(&"BTCUSDT".parse().unwrap(), Interval::M1, &[d], now);
        assert_eq!(ev.len(), 1);
        assert!(ev[0].closed);
        assert_eq!(ev[0].close, "1.40000000");
        assert_eq!(ev[0].event_time, now);
        assert_eq!(ev[0].source, Source::Repair);
    }
}
