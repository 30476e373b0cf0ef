//! `[metrics] listen`: Prometheus metrics at `GET /metrics` (issue 14).
//!
//! The names are fixed (README "Metrics"), so dashboards and the alert rules of
//! docs/purgewatch.rules.yml can be shared between servers.
//!
//! # Layout
//! One file a job, behind [`serve`] and [`Source`]:
//! - `listener`: the HTTP side — the accept loop, a task per connection (at most 64), 5 s for
//!   the request head, the answer;
//! - `page`: the registry and the reads that bring it up to date at each scrape, and its
//!   encoding;
//! - `process`: the `process_*` metrics from `/proc/self`.
//!
//! # Where each value comes from
//! - **The database, at scrape time**, so the pipeline carries no hooks (reads in
//!   `store::events` and `store::counts`): the `events` appended since the process started
//!   (read incrementally by `events.id`, the rowid, never a scan) give `requests_total{status}`,
//!   `invalidations_total`, `invalidation_paths_total` and the `marker_to_invalidation_seconds`
//!   histogram; the `requests` in each stage (index on `status`) give
//!   `requests_in_progress{stage}`; the `quota` row of the current period gives `quota_used`;
//!   the newest `finished_at` of a completed request (index on `finished_at`) gives
//!   `last_completed_timestamp_seconds`.
//! - **The AWS SDK**: the interceptor of [`crate::aws::interceptor`] (added to every client in
//!   `aws::Clients::new`) times each attempt by operation and counts failed attempts by kind,
//!   into process-global counters that this page shows, so the counts survive a daemon started
//!   again in the same process.
//! - **The watchers**: [`Watchers`] (folders watched and not, events lost, over the sites).
//! - **`/proc/self`**: the standard `process_*` metrics (prometheus-client has no process
//!   collector).
//!
//! Counters count from the process's start, as Prometheus expects (`rate()` handles resets).

mod listener;
mod page;
mod process;

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::config::Running;
use crate::store::Store;
use crate::watch::Watchers;

/// What the metrics are read from.
#[derive(Clone)]
pub struct Source {
    /// The running sites; the quota gauges are the first site's quota.
    pub sites: Running,
    pub store: Store,
    pub watchers: Watchers,
    pub clock: Clock,
}

/// Serves `GET /metrics` on `listener` until `token` is cancelled.
pub async fn serve(listener: TcpListener, source: Source, token: CancellationToken) {
    listener::run(listener, Arc::new(page::Page::new(source)), token).await;
}
