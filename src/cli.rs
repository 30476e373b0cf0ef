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
    /// Write a config from what is there: lsyncd's config, the distribution in front of each
    /// bucket, the old Lambda's quota. Exit 0 written and checked, 1 error, 2 ambiguous
    Init {
        /// lsyncd's config (default /etc/lsyncd/lsyncd.conf.lua, then /etc/lsyncd.conf)
        #[arg(long, value_name = "PATH")]
        from_lsyncd: Option<PathBuf>,
        /// The old Lambda's code (a .zip or a .py), when GetFunction's cannot be fetched
        #[arg(long, value_name = "PATH")]
        lambda_code: Option<PathBuf>,
        /// The distribution to use where several are in front of a bucket (once a site)
        #[arg(long, value_name = "ID")]
        distribution: Vec<String>,
        /// Write the config here (default: print it)
        #[arg(long, value_name = "PATH")]
        output: Option<PathBuf>,
        /// Overwrite an existing --output or --iam-policy file
        #[arg(long)]
        force: bool,
        /// Also write the instance role's IAM policy to this file
        #[arg(long, value_name = "PATH")]
        iam_policy: Option<PathBuf>,
        /// Send the AWS calls to this endpoint (an emulator), as the aws CLI's option
        #[arg(long, value_name = "URL")]
        endpoint_url: Option<String>,
    },
    /// After the shadow week: show it beside the Lambda's counts, remove the old Lambda's S3
    /// trigger, turn dry_run off and reload the daemon; --undo puts the trigger back
    Takeover {
        /// Only this site
        #[arg(long)]
        site: Option<String>,
        /// Put back the trigger a takeover removed, and dry_run on
        #[arg(long)]
        undo: bool,
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
