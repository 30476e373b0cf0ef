//! The binary: parse the CLI, start tracing, load the config, call the library; map errors to
//! exit codes (78 = EX_CONFIG for a bad config, 1 for anything else).

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use purgewatch::cli::{Cli, Command};
use purgewatch::commands;
use purgewatch::config::Sites;
use purgewatch::memory;
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

const EX_CONFIG: u8 = 78;

/// The test knobs: from the environment in a `failpoints` build (the fault tests), never in a
/// release build.
fn knobs() -> purgewatch::knobs::Knobs {
    #[cfg(feature = "failpoints")]
    return purgewatch::knobs::Knobs::from_env();
    #[cfg(not(feature = "failpoints"))]
    purgewatch::knobs::Knobs::default()
}

fn main() -> ExitCode {
    memory::one_malloc_arena();
    let cli = Cli::parse();
    // Crash points for the kill-at-every-step tests, from env FAILPOINTS (test builds only).
    #[cfg(feature = "failpoints")]
    let _failpoints = fail::FailScenario::setup();
    // `info`, or per target: `purgewatch=debug,aws_smithy_runtime=info`. Targets, not EnvFilter:
    // the same syntax for levels and targets without linking a regex engine into the daemon.
    let spec = std::env::var("RUST_LOG").unwrap_or_else(|_| cli.log_level.clone());
    let (filter, bad) = match spec.parse::<Targets>() {
        Ok(t) => (t, None),
        Err(e) => (Targets::new().with_default(LevelFilter::INFO), Some(e)),
    };
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                // journald shows escape codes as garbage: colour only on a terminal.
                .with_ansi(std::io::stderr().is_terminal())
                // Names from the tree are data: a field never drives the terminal or forges a
                // line (tracing escapes ESC only in the message, never a line break).
                .fmt_fields(purgewatch::text::log_fields()),
        )
        .with(filter)
        .init();
    if let Some(e) = bad {
        tracing::warn!(filter = %spec, error = %e, "bad log filter; logging at info");
    }

    // `init` writes the config: it has none to load yet.
    if let Command::Init { .. } = cli.command {
        return init(cli);
    }
    let cfg = match Sites::load(&cli.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("purgewatch: config error: {e}");
            return ExitCode::from(EX_CONFIG);
        }
    };
    if matches!(cli.command, Command::Run) {
        memory::map_code();
    }
    let Some(rt) = runtime() else {
        return ExitCode::FAILURE;
    };
    if let Command::Status { json, site } = cli.command {
        return match rt.block_on(commands::status(cfg, site, json)) {
            Ok(code) => ExitCode::from(code),
            Err(e) => {
                eprintln!("purgewatch: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    let result = rt.block_on(async {
        match cli.command {
            Command::Run => commands::run(cfg, knobs()).await,
            Command::Check { site } => commands::check(cfg, site).await,
            Command::History { limit, json, site } => {
                commands::history(cfg, site, limit, json).await
            }
            Command::Quota { json, site } => commands::quota(cfg, site, json).await,
            Command::Purge { wait, site } => commands::purge(cfg, site, wait).await,
            Command::Takeover { site, undo } => commands::takeover(cfg, site, undo).await,
            Command::Status { .. } | Command::Init { .. } => unreachable!("answered above"),
        }
    });
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        // The reader went away (`purgewatch history | head`): nothing left to say to it.
        Err(e)
            if e.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe) =>
        {
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("purgewatch: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `purgewatch init`: exit 0 written and checked, 1 an error or a failed check, 2 ambiguous.
fn init(cli: Cli) -> ExitCode {
    let Command::Init {
        from_lsyncd,
        lambda_code,
        distribution,
        output,
        force,
        iam_policy,
        endpoint_url,
    } = cli.command
    else {
        return ExitCode::FAILURE;
    };
    let args = purgewatch::init::Args {
        from_lsyncd,
        lambda_code,
        distribution,
        endpoint_url,
    };
    let out = commands::InitOutput {
        config: output,
        iam_policy,
        force,
    };
    let Some(rt) = runtime() else {
        return ExitCode::FAILURE;
    };
    match rt.block_on(commands::init(args, out)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("purgewatch: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// One thread runs the pipeline: it waits on the network and SQLite, never on the CPU
/// (hashing and SQLite calls go to the blocking pool, the watcher has its own thread); a worker
/// pool would only add threads, stacks and cross-thread wake-ups.
fn runtime() -> Option<tokio::runtime::Runtime> {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => Some(rt),
        Err(e) => {
            eprintln!("purgewatch: cannot start the runtime: {e}");
            None
        }
    }
}
