//! The command line: clap derive only, no logic. build.rs includes this file to generate the
//! man pages and shell completions, so it depends on nothing but clap.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Where the config lives when neither `-c` nor `PURGEWATCH_CONFIG` says otherwise.
pub const DEFAULT_CONFIG: &str = "/etc/purgewatch/purgewatch.toml";

#[derive(Debug, Parser)]
#[command(
    name = "purgewatch",
    version,
    about = "Purge a CloudFront cache when a .purge marker written under the web root reaches S3, \
             at most N times a day or month"
)]
pub struct Cli {
    /// Config file
    #[arg(
        short,
        long,
        global = true,
        env = "PURGEWATCH_CONFIG",
        default_value = DEFAULT_CONFIG
    )]
    pub config: PathBuf,

    /// Log level or filter (error, warn, info, debug, trace); RUST_LOG wins when set
    #[arg(long, global = true, default_value = "info")]
    pub log_level: String,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon in the foreground (under systemd, next to lsyncd)
    Run,
    /// Validate the config, then reach each site's buckets and distribution; non-zero if anything fails
    Check {
        /// Only this site
        #[arg(long)]
        site: Option<String>,
    },
    /// Show purge requests, newest first
    History {
        /// Only this site (a name of a [[site]] table); all sites when omitted
        #[arg(long)]
        site: Option<String>,
        /// How many requests to show
        #[arg(long, default_value_t = 20)]
        limit: u32,
        /// One JSON array instead of a table
        #[arg(long)]
        json: bool,
    },
    /// Show the current period's count against the maximum
    Quota {
        /// Only this site (a name of a [[site]] table); all sites when omitted
        #[arg(long)]
        site: Option<String>,
        /// JSON instead of text
        #[arg(long)]
        json: bool,
    },
    /// Is the daemon running and healthy? Exit 0 running, 1 not running, 2 degraded
    Status {
        /// Only this site (a name of a [[site]] table); all sites when omitted
        #[arg(long)]
        site: Option<String>,
        /// JSON instead of text
        #[arg(long)]
        json: bool,
    },
    /// Ask for a purge by hand: no origin wait, same quota, same invalidation
    Purge {
        /// The site to purge (needed when the config has several)
        #[arg(long)]
        site: Option<String>,
        /// Also wait until CloudFront reports the invalidation completed
        #[arg(long)]
        wait: bool,
    },
}
