//! Connecting: the configuration arrives in the core's JSON form (or as a bare URL).

use napi::{bindgen_prelude::Object, Env};
use napi_derive::napi;

use crate::{bus::Bus, cancel::Cancel, error, promise};

/// Connects to the bus that `config` describes: a URL such as `"memory://"`, or the core's
/// configuration as JSON text (`{"url": ..., "prefix": ..., "max_payload": ...}`).
///
/// Resolves with the bus; rejects with `POLYBUS_ERR_INVALID_CONFIG` for a bad configuration,
/// `POLYBUS_ERR_TIMEOUT` or `POLYBUS_ERR_CONNECTION` when the backend cannot be reached, and
/// `POLYBUS_ERR_CANCELLED` when `cancel` fires first (connecting stops; nothing is left open).
#[napi(catch_unwind, ts_return_type = "Promise<Bus>")]
pub fn connect<'env>(
    env: &'env Env,
    config: String,
    cancel: Option<&Cancel>,
) -> error::Result<Object<'env>> {
    let cancel = cancel.map(|c| c.inner.clone());
    promise::promise(env, async move {
        let bus = match cancel {
            None => polybus::Bus::connect(config).await?,
            Some(cancel) => {
                cancel
                    .guard("connect", polybus::Bus::connect(config))
                    .await?
            }
        };
        Ok(Bus::new(bus))
    })
}
