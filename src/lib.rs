//! purgewatch: purge a CloudFront cache when a `.purge` marker written under the web root has
//! reached the S3 origin (synced there by lsyncd), at most N times a day or month. It replaces the
//! S3-triggered Lambda of the original setup and keeps its count-object format.
//!
//! # Layout
//! - [`config`]: TOML → typed config; errors name the file and the key.
//! - [`watch`]: inotify → marker (and change) events; name filter first; rescans when events are lost.
//! - [`paths`]: which CloudFront paths: the change set collapsed, or the marker's own list.
//! - [`origin`]: "does S3 hold these bytes yet?" (HeadObject, ETag vs MD5).
//! - [`quota`]: period policy (time zone, day/month) and the count-bucket mirror.
//! - [`cdn`]: CloudFront CreateInvalidation with a stable CallerReference.
//! - [`store`]: SQLite: migrations, the request state machine, history.
//! - [`pipeline`]: one request from verified to recorded.
//! - [`memory`]: one malloc arena, code mapped at start (a steady RSS).
//! - [`app`]: wiring, shutdown, the manual purge. [`commands`]: the CLI's verbs.
//!
//! # Data flow
//! marker write ([`watch::WatchEvent`]) → stored request ([`store::insert_request`]) →
//! [`pipeline::Verified`] → [`pipeline::Granted`] → [`pipeline::Invalidated`] → `completed` row.

pub mod app;
pub mod aws;
pub mod cdn;
pub mod cli;
pub mod commands;
pub mod config;
pub mod memory;
pub mod origin;
pub mod paths;
pub mod pipeline;
pub mod quota;
pub mod store;
pub mod watch;
