//! `[notify]`: alerts when a request reaches a listed status. (Being built: see the module's
//! final doc when it lands.)

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::aws::Clients;
use crate::config::Config;
use crate::store::Store;

/// Delivers alerts until `token` is cancelled.
pub async fn run(cfg: Arc<Config>, store: Store, clients: Clients, token: CancellationToken) {
    let _ = (cfg, store, clients);
    token.cancelled().await;
}
