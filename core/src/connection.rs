//! The state of a bus's connection to its broker.

use serde::{Deserialize, Serialize};

/// Whether a bus is connected to its broker.
///
/// The in-process `memory://` backend is always `Connected` until closed. Broker backends move
/// between `Connected` and `Disconnected` as the connection drops and comes back (reconnection
/// is automatic and subscriptions survive it); `Closed` is final, after
/// [`Bus::close`](crate::Bus::close).
///
/// # Examples
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> polybus::Result<()> {
/// use polybus::{Bus, ConnectionState};
/// let bus = Bus::connect("memory://").await?;
/// assert_eq!(bus.connection_state(), ConnectionState::Connected);
/// let watch = bus.watch_connection_state();
/// bus.close().await?;
/// assert_eq!(*watch.borrow(), ConnectionState::Closed);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum ConnectionState {
    /// Connected: publishes reach the broker.
    Connected,
    /// The connection was lost; the client is reconnecting. Publishes may wait or fail.
    Disconnected,
    /// The bus was closed.
    Closed,
}

impl ConnectionState {
    /// `"connected"`, `"disconnected"` or `"closed"`.
    pub fn as_str(self) -> &'static str {
        match self {
            ConnectionState::Connected => "connected",
            ConnectionState::Disconnected => "disconnected",
            ConnectionState::Closed => "closed",
        }
    }
}

impl std::fmt::Display for ConnectionState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
