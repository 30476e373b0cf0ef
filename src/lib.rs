//! purgewatch: purge a CloudFront cache when a `.purge` marker written under the web root has
//! reached the S3 origin (synced there by lsyncd), at most N times a day or month. It replaces the
//! S3-triggered Lambda of the original setup and keeps its count-object format.
//!
//! # Layout
//! In the order a `.purge` meets them (ARCHITECTURE.md has the map and the invariants):
//! - [`watch`]: inotify → marker (and change) events; name filter first; rescans when events
//!   are lost.
//! - [`intake`]: events → stored requests (a marker is hashed and stored before anything else).
//! - [`marker`]: what a marker is on disk: a regular file of at most 1 MiB, read once.
//! - [`pipeline`]: the order of a request's stages, written once; [`halt`]: how one stops.
//! - [`verify`] and [`origin`]: "does S3 hold this write yet?" (checksums, a new upload).
//! - [`paths`]: which CloudFront paths; CloudFront's rules for them.
//! - [`quota`]: its settings, period policy, the count-bucket mirror, the ledger that takes a
//!   slot.
//! - [`cloudfront`]: CreateInvalidation with a stored CallerReference; CloudFront's limits.
//! - [`store`]: SQLite, every statement: plumbing, migrations, the request state machine, one
//!   module a table (alert deliveries in `store::alerts`).
//! - Around them: [`config`] (TOML → typed config; errors name the file and the key), [`aws`]
//!   (clients, regions, error classes, the calls' interceptor), [`retry`] (one way to wait out
//!   a failure), [`clock`] (time from outside), [`knobs`] (test seams, passed in), [`memory`]
//!   (a steady RSS), [`metrics`] (Prometheus), [`notify`] (alerts to a webhook or SNS),
//!   [`status`] (the heartbeat and `purgewatch status`), [`systemd`] (sd_notify that never
//!   blocks), [`text`] (names from the tree made safe to print), [`app`] (wiring: the daemon,
//!   the supervisor of the sites, one site's run), [`commands`] and [`cli`] (the CLI's verbs),
//!   [`init`] (`init` and `takeover`: the move from the old Lambda).
//!
//! # Data flow
//! marker write ([`watch::WatchEvent`]) → stored request ([`intake::NewRequest`]) →
//! [`pipeline::Verified`] → [`pipeline::Granted`] → [`pipeline::Invalidated`] → `completed`
//! row ([`store::requests::advance`]).

pub mod app;
pub mod aws;
pub mod cli;
pub mod clock;
pub mod cloudfront;
pub mod commands;
pub mod config;
pub mod edge;
pub mod halt;
pub mod init;
pub mod intake;
pub mod invalidate;
pub mod knobs;
pub mod marker;
pub mod memory;
pub mod metrics;
pub mod notify;
pub mod origin;
pub mod paths;
pub mod pipeline;
pub mod quota;
pub mod retry;
pub mod status;
pub mod store;
pub mod systemd;
pub mod text;
pub mod verify;
pub mod watch;
