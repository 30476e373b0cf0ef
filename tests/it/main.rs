//! One integration test binary: every test talks to a real S3 and CloudFront API (moto_server
//! on 127.0.0.1, started once by `common`), each with its own buckets, distribution and tree.

mod common;

mod changes;
mod cli;
#[cfg(feature = "failpoints")]
mod crash;
mod detect;
mod distributions;
mod edge;
mod faults;
mod fidelity;
mod hear;
mod hostile_alerts;
mod hostile_ops;
mod hostile_tree;
mod iam;
mod metrics;
mod migrate;
mod notify;
mod ops;
mod quota;
mod sites;
mod strict_emulator;
mod tidy;
mod tls;
