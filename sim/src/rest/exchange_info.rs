//! `GET /api/v3/exchangeInfo` (weight 20), optionally narrowed by `symbol` or `symbols`.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, RawQuery, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::Serialize;

use super::params::{check_duplicates, check_unread, illegal, parse_query, symbol_ok};
use super::{gate, respond, ApiError};
use crate::market::SymbolStatus;
use crate::server::Shared;
use crate::symbols::{units_str, SymbolSpec};

const WEIGHT: u32 = 20;
const KNOWN: &[&str] = &[
    "symbol",
    "symbols",
    "permissions",
    "showPermissionSets",
    "symbolStatus",
];
const SYMBOLS_RANGE: &str = r#"^\[("[A-Z0-9-_.]{1,20}"(,"[A-Z0-9-_.]{1,20}"){0,}){0,1}\]$"#;

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Info<'a> {
    timezone: &'static str,
    server_time: i64,
    rate_limits: [RateLimit; 4],
    exchange_filters: [(); 0],
    symbols: Vec<Sym<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct RateLimit {
    rate_limit_type: &'static str,
    interval: &'static str,
    interval_num: u32,
    limit: u32,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Sym<'a> {
    symbol: &'a str,
    status: &'static str,
    base_asset: &'a str,
    base_asset_precision: u8,
    quote_asset: &'a str,
    quote_precision: u8,
    quote_asset_precision: u8,
    base_commission_precision: u8,
    quote_commission_precision: u8,
    order_types: [&'static str; 7],
    iceberg_allowed: bool,
    oco_allowed: bool,
    oto_allowed: bool,
    opo_allowed: bool,
    quote_order_qty_market_allowed: bool,
    allow_trailing_stop: bool,
    cancel_replace_allowed: bool,
    amend_allowed: bool,
    peg_instructions_allowed: bool,
    is_spot_trading_allowed: bool,
    is_margin_trading_allowed: bool,
    filters: Vec<Filter>,
    permissions: [(); 0],
    permission_sets: [[&'static str; 2]; 1],
    default_self_trade_prevention_mode: &'static str,
    allowed_self_trade_prevention_modes: [&'static str; 5],
}

// Variant names are Binance's filterType values (PRICE_FILTER included).
#[allow(clippy::enum_variant_names)]
#[derive(Serialize)]
#[serde(tag = "filterType", rename_all = "SCREAMING_SNAKE_CASE")]
enum Filter {
    #[serde(rename_all = "camelCase")]
    PriceFilter {
        min_price: String,
        max_price: String,
        tick_size: String,
    },
    #[serde(rename_all = "camelCase")]
    LotSize {
        min_qty: String,
        max_qty: String,
        step_size: String,
    },
    IcebergParts {
        limit: u32,
    },
    #[serde(rename_all = "camelCase")]
    MarketLotSize {
        min_qty: String,
        max_qty: String,
        step_size: String,
    },
    #[serde(rename_all = "camelCase")]
    TrailingDelta {
        min_trailing_above_delta: u32,
        max_trailing_above_delta: u32,
        min_trailing_below_delta: u32,
        max_trailing_below_delta: u32,
    },
    #[serde(rename_all = "camelCase")]
    PercentPriceBySide {
        bid_multiplier_up: &'static str,
        bid_multiplier_down: &'static str,
        ask_multiplier_up: &'static str,
        ask_multiplier_down: &'static str,
        avg_price_mins: u32,
    },
    #[serde(rename_all = "camelCase")]
    Notional {
        min_notional: String,
        apply_min_to_market: bool,
        max_notional: String,
        apply_max_to_market: bool,
        avg_price_mins: u32,
    },
    #[serde(rename_all = "camelCase")]
    MaxNumOrders {
        max_num_orders: u32,
    },
    #[serde(rename_all = "camelCase")]
    MaxNumAlgoOrders {
        max_num_algo_orders: u32,
    },
}

fn filters(s: &SymbolSpec) -> Vec<Filter> {
    let max_price = (s.base_price.saturating_mul(10) / s.tick).max(1) * s.tick;
    let max_qty = (9_000_000_000_000u64 / s.base_price.max(1)).max(1) * 100_000_000;
    vec![
        Filter::PriceFilter {
            min_price: units_str(s.tick),
            max_price: units_str(max_price),
            tick_size: units_str(s.tick),
        },
        Filter::LotSize {
            min_qty: units_str(s.step),
            max_qty: units_str(max_qty),
            step_size: units_str(s.step),
        },
        Filter::IcebergParts { limit: 10 },
        Filter::MarketLotSize {
            min_qty: units_str(0),
            max_qty: units_str(s.volume_per_min.saturating_mul(8)),
            step_size: units_str(0),
        },
        Filter::TrailingDelta {
            min_trailing_above_delta: 10,
            max_trailing_above_delta: 2000,
            min_trailing_below_delta: 10,
            max_trailing_below_delta: 2000,
        },
        Filter::PercentPriceBySide {
            bid_multiplier_up: "5",
            bid_multiplier_down: "0.2",
            ask_multiplier_up: "5",
            ask_multiplier_down: "0.2",
            avg_price_mins: 5,
        },
        Filter::Notional {
            min_notional: units_str(500_000_000),
            apply_min_to_market: true,
            max_notional: units_str(900_000_000_000_000),
            apply_max_to_market: false,
            avg_price_mins: 5,
        },
        Filter::MaxNumOrders {
            max_num_orders: 200,
        },
        Filter::MaxNumAlgoOrders {
            max_num_algo_orders: 5,
        },
    ]
}

fn sym((s, status): &(SymbolSpec, SymbolStatus)) -> Sym<'_> {
    Sym {
        symbol: &s.name,
        status: status.as_str(),
        base_asset: &s.base_asset,
        base_asset_precision: 8,
        quote_asset: &s.quote_asset,
        quote_precision: 8,
        quote_asset_precision: 8,
        base_commission_precision: 8,
        quote_commission_precision: 8,
        order_types: [
            "LIMIT",
            "LIMIT_MAKER",
            "MARKET",
            "STOP_LOSS",
            "STOP_LOSS_LIMIT",
            "TAKE_PROFIT",
            "TAKE_PROFIT_LIMIT",
        ],
        iceberg_allowed: true,
        oco_allowed: true,
        oto_allowed: true,
        opo_allowed: true,
        quote_order_qty_market_allowed: true,
        allow_trailing_stop: true,
        cancel_replace_allowed: true,
        amend_allowed: true,
        peg_instructions_allowed: true,
        is_spot_trading_allowed: true,
        is_margin_trading_allowed: true,
        filters: filters(s),
        permissions: [],
        permission_sets: [["SPOT", "MARGIN"]],
        default_self_trade_prevention_mode: "EXPIRE_MAKER",
        allowed_self_trade_prevention_modes: [
            "NONE",
            "EXPIRE_TAKER",
            "EXPIRE_MAKER",
            "EXPIRE_BOTH",
            "DECREMENT",
        ],
    }
}

/// Which symbols the query selects (all listed ones when neither `symbol` nor `symbols` is
/// given), with their status; a delisted symbol is gone, as on Binance.
fn select(app: &Shared, raw: &str) -> Result<Vec<(SymbolSpec, SymbolStatus)>, ApiError> {
    let q = parse_query(raw);
    check_duplicates(&q)?;
    check_unread(&q, KNOWN)?;
    let get = |name: &str| q.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
    let names: Vec<String> = match (get("symbol"), get("symbols")) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad(
                -1128,
                "Combination of optional parameters invalid.",
            ))
        }
        (Some(s), None) => {
            if !symbol_ok(s) {
                return Err(illegal("symbol", super::params::SYMBOL_RANGE));
            }
            vec![s.to_owned()]
        }
        (None, Some(list)) => match serde_json::from_str::<Vec<String>>(list) {
            Ok(v) if v.iter().all(|s| symbol_ok(s)) => v,
            _ => return Err(illegal("symbols", SYMBOLS_RANGE)),
        },
        (None, None) => app.market.symbols().into_iter().map(|s| s.name).collect(),
    };
    names
        .iter()
        .map(|n| {
            let spec = app.market.spec(n);
            let status = app.market.status(n);
            spec.zip(status)
                .ok_or_else(|| ApiError::bad(-1121, "Invalid symbol."))
        })
        .collect()
}

pub(super) async fn handler(
    State(app): State<Shared>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    RawQuery(q): RawQuery,
) -> Response {
    let used = match gate(&app, addr.ip(), WEIGHT).await {
        Ok(u) => u,
        Err(r) => return r,
    };
    let specs = match select(&app, q.as_deref().unwrap_or("")) {
        Ok(s) => s,
        Err(e) => return e.response(used),
    };
    let limit = |t, i, n, l| RateLimit {
        rate_limit_type: t,
        interval: i,
        interval_num: n,
        limit: l,
    };
    let info = Info {
        timezone: "UTC",
        server_time: app.clock.now_ms(),
        rate_limits: [
            limit("REQUEST_WEIGHT", "MINUTE", 1, app.limiter.limit()),
            limit("ORDERS", "SECOND", 10, 50),
            limit("ORDERS", "DAY", 1, 160_000),
            limit("RAW_REQUESTS", "MINUTE", 5, 300_000),
        ],
        exchange_filters: [],
        symbols: specs.iter().map(sym).collect(),
    };
    respond(
        StatusCode::OK,
        serde_json::to_string(&info).unwrap_or_default(),
        used,
    )
}
