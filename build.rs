//! Generates the man pages and shell completions from the CLI definition itself, so they cannot
//! drift from it. They land in `<target>/<profile>/assets/`, where the package metadata finds them.

use std::path::PathBuf;

use clap::CommandFactory;
use clap_complete::Shell;

#[allow(dead_code)]
#[path = "src/cli.rs"]
mod cli;

fn main() -> std::io::Result<()> {
    println!("cargo:rerun-if-changed=src/cli.rs");
    println!("cargo:rerun-if-changed=build.rs");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    // OUT_DIR is <target>/<profile>/build/purgewatch-<hash>/out.
    let profile_dir = out.ancestors().nth(3).expect("OUT_DIR has its usual depth");
    let assets = profile_dir.join("assets");
    std::fs::create_dir_all(&assets)?;
    let mut cmd = cli::Cli::command();
    clap_mangen::generate_to(cmd.clone(), &assets)?;
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        clap_complete::generate_to(shell, &mut cmd, "purgewatch", &assets)?;
    }
    Ok(())
}
