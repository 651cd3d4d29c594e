//! The bytes on the wire: MessagePack maps with named fields (rmp-serde `to_vec_named`), plus
//! NATS headers naming the schema version. See `schemas/README.md` for a reader's guide.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Header naming the payload's schema version.
pub const SCHEMA_HEADER: &str = "Klinebus-Schema";
/// The version this crate writes. Readers accept it and reject newer major versions.
pub const SCHEMA_VERSION: &str = "kline/1";
/// Header naming the payload encoding.
pub const CONTENT_TYPE_HEADER: &str = "Content-Type";
/// The encoding this crate writes.
pub const CONTENT_TYPE: &str = "application/msgpack";

/// Encoding failed (only possible for types that cannot be represented, never for events).
#[derive(Debug, thiserror::Error)]
#[error("encode")]
pub struct EncodeError(#[from] rmp_serde::encode::Error);

/// A payload that cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// Not the MessagePack shape of the type (truncated, wrong field types, invalid names…).
    #[error("undecodable payload")]
    Payload(#[from] rmp_serde::decode::Error),
    /// A schema header from a future, incompatible version.
    #[error("unsupported schema version {0:?} (this build reads {SCHEMA_VERSION:?})")]
    Version(String),
}

/// Encodes a value as a MessagePack map with field names.
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, EncodeError> {
    // A kline event is about 330 bytes: one allocation instead of a chain of regrowths.
    let mut buf = Vec::with_capacity(384);
    value.serialize(&mut rmp_serde::Serializer::new(&mut buf).with_struct_map())?;
    Ok(buf)
}

/// Decodes a MessagePack payload.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, DecodeError> {
    Ok(rmp_serde::from_slice(bytes)?)
}

/// Checks a schema header value: absent or the same schema family with a version this build reads.
pub fn check_version(header: Option<&str>) -> Result<(), DecodeError> {
    match header {
        None => Ok(()),
        Some(v) if v == SCHEMA_VERSION => Ok(()),
        Some(v) => Err(DecodeError::Version(v.to_owned())),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::event::tests::sample;
    use crate::KlineEvent;

    const GOLDEN_MSGPACK: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/golden/kline_event.msgpack");
    const GOLDEN_JSON: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/golden/kline_event.json");

    #[test]
    fn round_trip() {
        let e = sample();
        let bytes = encode(&e).unwrap();
        assert_eq!(decode::<KlineEvent>(&bytes).unwrap(), e);
    }

    #[test]
    fn golden_vectors_match() {
        // The committed bytes are the contract for other languages: if this fails, either the
        // encoding changed (bump SCHEMA_VERSION and regenerate with KLINEBUS_BLESS=1) or a bug.
        let e = sample();
        let bytes = encode(&e).unwrap();
        let json = serde_json::to_string_pretty(&e).unwrap() + "\n";
        if std::env::var_os("KLINEBUS_BLESS").is_some() {
            std::fs::write(GOLDEN_MSGPACK, &bytes).unwrap();
            std::fs::write(GOLDEN_JSON, &json).unwrap();
        }
        let golden = std::fs::read(GOLDEN_MSGPACK).unwrap();
        assert_eq!(
            bytes, golden,
            "msgpack encoding drifted from the golden vector"
        );
        let from_golden: KlineEvent = decode(&golden).unwrap();
        let from_json: KlineEvent =
            serde_json::from_str(&std::fs::read_to_string(GOLDEN_JSON).unwrap()).unwrap();
        assert_eq!(from_golden, from_json);
        assert_eq!(from_golden, e);
    }

    #[test]
    fn named_fields_on_the_wire() {
        let bytes = encode(&sample()).unwrap();
        // A map (0xde = map16, or fixmap 0x80..0x8f), keyed by field names.
        assert!(bytes[0] == 0xde || (0x80..=0x8f).contains(&bytes[0]));
        let text = String::from_utf8_lossy(&bytes);
        for key in [
            "venue",
            "symbol",
            "open_time",
            "taker_buy_quote",
            "received_at",
        ] {
            assert!(text.contains(key), "{key} missing");
        }
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bad in [&b""[..], b"\xc1", b"\x81\xa3foo\x01", b"not msgpack at all"] {
            assert!(decode::<KlineEvent>(bad).is_err());
        }
        let mut e = sample();
        e.symbol = "BTCUSDT".parse().unwrap();
        let mut bytes = encode(&e).unwrap();
        // Corrupt the symbol to one with a subject wildcard: decoding must refuse it.
        let pos = bytes.windows(7).position(|w| w == b"BTCUSDT").unwrap();
        bytes[pos + 3] = b'*';
        assert!(decode::<KlineEvent>(&bytes).is_err());
    }

    #[test]
    fn versions() {
        assert!(check_version(None).is_ok());
        assert!(check_version(Some(SCHEMA_VERSION)).is_ok());
        assert!(check_version(Some("kline/2")).is_err());
    }
}
