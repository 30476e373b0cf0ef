//! `[metrics] listen`: Prometheus text format at `GET /metrics`. (Being built: see the
//! module's final doc when it lands.)

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::config::Config;
use crate::store::Store;
use crate::watch::Lost;

/// What the metrics are read from.
#[derive(Clone)]
pub struct Source {
    pub cfg: Arc<Config>,
    pub store: Store,
    pub lost: Arc<Lost>,
    pub clock: Clock,
}

/// Serves `GET /metrics` on `listener` until `token` is cancelled.
pub async fn serve(listener: TcpListener, source: Source, token: CancellationToken) {
    let _ = (listener, source);
    token.cancelled().await;
}
