//! `klinectl streams apply`: the operator's step that sets the klinebus streams' retention,
//! duplicate window and replicas (services only create missing streams, see
//! [`klinebus_schemas::bus::ensure_streams`]).

use std::fmt::Write as _;

use klinebus_schemas::bus::{self, Applied, BusOptions};
use klinebus_schemas::streams::Retention;

use crate::cli::{StreamsAction, StreamsArgs};
use crate::{CtlError, Outcome};

/// Runs `streams <action>`.
pub async fn run(opts: &BusOptions, replicas: usize, a: &StreamsArgs) -> Result<Outcome, CtlError> {
    let StreamsAction::Apply(apply) = &a.action;
    let retention = Retention {
        klines_max_age: apply.klines_max_age.into(),
        klines_max_bytes: apply.klines_max_bytes,
        duplicate_window: apply.duplicate_window.into(),
        replicas,
    };
    let client = bus::connect(opts)
        .await
        .map_err(CtlError::nats("connecting"))?;
    let js = async_nats::jetstream::new(client);
    let applied = bus::apply_streams(&js, &retention)
        .await
        .map_err(CtlError::nats("applying the stream settings"))?;
    let mut output = String::new();
    for (spec, what) in applied {
        let what = match what {
            Applied::Created => "created",
            Applied::Updated => "updated",
            Applied::Unchanged => "unchanged",
        };
        let _ = writeln!(
            output,
            "{:<8} {what:<9} max_age {}, max_bytes {}, duplicate_window {}, replicas {}",
            spec.name,
            humantime::format_duration(spec.max_age),
            spec.max_bytes,
            humantime::format_duration(spec.duplicate_window),
            spec.replicas
        );
    }
    Ok(Outcome { output, code: 0 })
}
