//! JSON control messages: SUBSCRIBE, UNSUBSCRIBE, LIST_SUBSCRIPTIONS, SET_PROPERTY and
//! GET_PROPERTY, with Binance's replies and its error wire form
//! `{"error":{"code":…,"msg":…},"id":…}`.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::subs::{Subs, MAX_STREAMS};
use crate::market::Market;

#[derive(Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
enum Method {
    Subscribe,
    Unsubscribe,
    ListSubscriptions,
    SetProperty,
    GetProperty,
}

/// Parsed straight from the sent text so serde's messages carry Binance's line/column.
#[derive(Deserialize)]
struct Request {
    method: Method,
    #[serde(default)]
    params: Option<Value>,
}

#[derive(Serialize)]
struct OkReply<'a> {
    result: &'a Value,
    id: &'a Value,
}

#[derive(Serialize)]
struct ErrInner<'a> {
    code: u8,
    msg: &'a str,
}

#[derive(Serialize)]
struct ErrReply<'a> {
    error: ErrInner<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a Value>,
}

fn ok(result: Value, id: &Value) -> String {
    serde_json::to_string(&OkReply {
        result: &result,
        id,
    })
    .unwrap_or_default()
}

fn err(code: u8, msg: &str, id: Option<&Value>) -> String {
    serde_json::to_string(&ErrReply {
        error: ErrInner { code, msg },
        id,
    })
    .unwrap_or_default()
}

/// Binance accepts a 64-bit signed integer, an alphanumeric string of at most 36 chars, or null.
fn id_ok(id: &Value) -> bool {
    match id {
        Value::Null => true,
        Value::Number(n) => n.is_i64(),
        Value::String(s) => s.len() <= 36 && s.bytes().all(|b| b.is_ascii_alphanumeric()),
        _ => false,
    }
}

fn stream_names(params: Option<&Value>) -> Option<Vec<String>> {
    params?
        .as_array()?
        .iter()
        .map(|v| v.as_str().map(str::to_owned))
        .collect()
}

/// Handles one text message; returns the reply to send.
pub(crate) fn handle(
    text: &str,
    subs: &mut Subs,
    combined: &mut bool,
    market: &Market,
    now: i64,
) -> String {
    let v: Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => return err(3, &format!("Invalid JSON: {e}"), None),
    };
    let id = v.get("id").cloned().unwrap_or(Value::Null);
    if !id_ok(&id) {
        return err(
            2,
            "Invalid request: request ID must be an unsigned integer",
            Some(&Value::Null),
        );
    }
    let req: Request = match serde_json::from_str(text) {
        Ok(r) => r,
        Err(e) => return err(2, &format!("Invalid request: {e}"), Some(&id)),
    };
    let params = req
        .params
        .as_ref()
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let bad = |m: &str| err(2, &format!("Invalid request: {m}"), Some(&id));
    match req.method {
        Method::Subscribe | Method::Unsubscribe => {
            let Some(names) = stream_names(req.params.as_ref()) else {
                return bad("params must be an array of stream names");
            };
            if matches!(req.method, Method::Unsubscribe) {
                subs.unsubscribe(&names);
            } else if !subs.subscribe(&names, market, now) {
                return bad(&format!(
                    "too many streams; at most {MAX_STREAMS} per connection"
                ));
            }
            ok(Value::Null, &id)
        }
        Method::ListSubscriptions => ok(subs.names().into(), &id),
        Method::SetProperty | Method::GetProperty => {
            let set = matches!(req.method, Method::SetProperty);
            if params.len() > if set { 2 } else { 1 } {
                return bad("too many parameters");
            }
            match params.first() {
                Some(Value::String(name)) if name == "combined" => {}
                Some(Value::String(_)) => return err(0, "Unknown property", Some(&id)),
                _ => return bad("property name must be a string"),
            }
            if !set {
                return ok(Value::Bool(*combined), &id);
            }
            match params.get(1) {
                Some(Value::Bool(b)) => {
                    *combined = *b;
                    ok(Value::Null, &id)
                }
                _ => err(1, "Invalid value type: expected Boolean", Some(&id)),
            }
        }
    }
}
