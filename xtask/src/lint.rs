//! The static gates run before the tests: formatting (`rustfmt.toml`) and clippy with warnings
//! denied, for the host crates and for the eBPF crate (nightly, `bpfel-unknown-none`).

use std::{ffi::OsStr, path::Path, process::Command};

use anyhow::{Context as _, Result};

use crate::{
    ebpf_build_command,
    run::{cargo, run, workspace_root},
    HOST_WORKSPACE,
};

/// `cargo fmt --all --check`: every crate, efm-ebpf included (formatting needs no build).
pub fn format() -> Result<()> {
    let mut cmd = cargo();
    cmd.args(["fmt", "--all", "--check"]);
    run(&mut cmd).context(
        "the code is not formatted as rustfmt.toml says (the diff is above): run `cargo fmt --all` \
         and commit the result",
    )
}

/// Clippy on every host crate and target (tests, benches, examples), warnings denied; the lint
/// levels are the workspace's (`[workspace.lints]`: pedantic).
pub fn clippy_host() -> Result<()> {
    let mut cmd = cargo();
    cmd.arg("clippy").args(HOST_WORKSPACE).args(["--all-targets", "--", "-D", "warnings"]);
    run(&mut cmd).context(
        "clippy found warnings in the host crates (denied; see above): fix them, or allow a lint \
         where it is wrong for the code with `#[expect(clippy::..., reason = \"...\")]`",
    )
}

/// Clippy on the eBPF crate, built exactly as `cargo xtask build-ebpf` builds it (nightly,
/// build-std), warnings denied.
pub fn clippy_ebpf() -> Result<()> {
    run(&mut ebpf_clippy_command(&workspace_root())).context(
        "clippy found warnings in the eBPF crate (efm-ebpf; denied; see above), or could not run: \
         `cargo xtask setup` installs the nightly rust-src component it needs",
    )
}

/// [`ebpf_build_command`] with `clippy` in place of `build` (same toolchain, target, flags and
/// scrubbed environment), then `-- -D warnings`.
fn ebpf_clippy_command(root: &Path) -> Command {
    let build = ebpf_build_command(root);
    let mut cmd = Command::new(build.get_program());
    cmd.args(build.get_args().map(|a| if a == "build" { OsStr::new("clippy") } else { a }));
    for (key, value) in build.get_envs() {
        match value {
            Some(v) => cmd.env(key, v),
            None => cmd.env_remove(key),
        };
    }
    if let Some(dir) = build.get_current_dir() {
        cmd.current_dir(dir);
    }
    cmd.args(["--", "-D", "warnings"]);
    cmd
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::command_line;

    #[test]
    fn ebpf_clippy_is_the_build_command_with_clippy() {
        let root = Path::new("/r");
        let build = command_line(&ebpf_build_command(root));
        let clippy = command_line(&ebpf_clippy_command(root));
        assert_eq!(clippy, build.replacen(" build ", " clippy ", 1) + " -- -D warnings");
        assert!(clippy.contains("rustup run nightly cargo clippy --package efm-ebpf"), "{clippy}");
    }
}
