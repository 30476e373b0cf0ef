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
    pack_relative_relocations();
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

/// Links the executable with packed relative relocations (DT_RELR) when the build machine's glibc
/// can load them (2.36+, Debian 12): the 49k relocations of a PIE take 20 KB instead of 1.2 MB,
/// and the loader no longer pages that table in at every start (BENCHMARKS.md: 1.2 MB of RSS).
/// Only for a binary linked against this machine's glibc, which it then needs (2.36: the
/// GLIBC_ABI_DT_RELR version). Not for the packages: scripts/package links with cargo-zigbuild
/// against glibc 2.28 (target `x86_64-unknown-linux-gnu.2.28`, which cargo sees as TARGET ==
/// HOST), where DT_RELR would make every glibc before 2.36 refuse to start it.
fn pack_relative_relocations() {
    println!("cargo:rerun-if-env-changed=CARGO_ZIGBUILD_TARGET");
    let var = |k: &str| std::env::var(k).unwrap_or_default();
    if var("CARGO_CFG_TARGET_OS") != "linux"
        || var("CARGO_CFG_TARGET_ENV") != "gnu"
        || var("TARGET") != var("HOST")
        // cargo-zigbuild: zig links against the glibc named in its target, not this machine's.
        || !var("CARGO_ZIGBUILD_TARGET").is_empty()
        // Any linker configured for the target (a cross or sysroot set-up): its glibc is unknown.
        || !var("RUSTC_LINKER").is_empty()
    {
        return;
    }
    // SAFETY: returns a pointer to a static NUL-terminated string.
    let version = unsafe { std::ffi::CStr::from_ptr(libc::gnu_get_libc_version()) };
    let mut parts = version.to_str().unwrap_or("").split('.');
    let mut next = || {
        parts
            .next()
            .and_then(|p| p.parse::<u32>().ok())
            .unwrap_or(0)
    };
    if (next(), next()) >= (2, 36) {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}
