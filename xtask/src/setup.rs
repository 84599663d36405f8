//! `cargo xtask setup`: make a fresh Debian 12 machine able to build and test efm. Idempotent: each
//! item is checked first and left alone when present. See `shared/TOOLCHAIN.md` for why each item
//! is done the way it is.

use std::{
    env, fs,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, ensure, Context as _, Result};

use crate::run::{is_root, output, run};

/// Debian packages the tests and tools need.
pub const PACKAGES: &[&str] = &[
    "postgresql",
    "postgresql-contrib",
    "iproute2",
    // The fence benchmark compares against nft (netdev ingress), iptables-legacy and iptables-nft
    // (both from the iptables package); the detection benchmarks load the host with stress-ng and
    // read veth XDP counters with ethtool.
    "nftables",
    "iptables",
    "stress-ng",
    "bpftool",
    "python3-aiosmtpd",
    "procps",
    "tcpdump",
    "ethtool",
    "libssl-dev",
    "pkg-config",
    // The install test: systemd-analyze verify; readelf and strip for `cargo xtask package`.
    "systemd",
    "binutils",
    // EFM's default ping.server.command (`/bin/ping`), run by the guarded-promotion test.
    "iputils-ping",
];

pub const BPF_LINKER_VERSION: &str = "0.13.0";
const BPFFS: &str = "/sys/fs/bpf";

fn item(name: &str, what: &str) {
    println!("setup: {name}: {what}");
}

pub fn setup() -> Result<()> {
    let root = is_root()?;
    packages(root)?;
    nightly()?;
    rust_src()?;
    bpf_linker()?;
    bpffs(root)?;
    Ok(())
}

fn package_installed(pkg: &str) -> Result<bool> {
    // dpkg-query exits 1 for a package it has never heard of; that is "not installed", not an error.
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .context("could not run `dpkg-query`: `cargo xtask setup` supports Debian-based systems only")?;
    Ok(out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "install ok installed")
}

fn packages(root: bool) -> Result<()> {
    let mut missing = Vec::new();
    for &pkg in PACKAGES {
        if package_installed(pkg)? {
            item(&format!("package {pkg}"), "present");
        } else {
            missing.push(pkg);
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    if !root {
        bail!(
            "Debian packages missing: {}; installing them needs root: run `sudo cargo xtask setup`, \
             or `sudo apt-get install {}` yourself",
            missing.join(" "),
            missing.join(" ")
        );
    }
    let apt = |args: &[&str]| {
        let mut cmd = Command::new("apt-get");
        cmd.env("DEBIAN_FRONTEND", "noninteractive").args(args);
        cmd
    };
    run(&mut apt(&["update"])).context("`apt-get update` failed: check the network and /etc/apt/sources.list")?;
    let mut install = apt(&["install", "-y", "--no-install-recommends"]);
    install.args(&missing);
    run(&mut install).with_context(|| {
        format!("installing Debian packages {} failed: see apt-get's output above", missing.join(" "))
    })?;
    for pkg in missing {
        ensure!(
            package_installed(pkg)?,
            "apt-get reported success but package {pkg} is still not installed: check `dpkg -s {pkg}`"
        );
        item(&format!("package {pkg}"), "installed with apt-get");
    }
    Ok(())
}

fn rustup() -> Command {
    let mut cmd = Command::new("rustup");
    // We run under the workspace's pinned stable toolchain; don't let that leak into nightly calls.
    cmd.env_remove("RUSTUP_TOOLCHAIN");
    cmd
}

fn nightly() -> Result<()> {
    let list = output(rustup().args(["toolchain", "list"]))
        .context("listing rustup toolchains (is rustup installed and on PATH?)")?;
    if !list.lines().any(|l| l.trim_start().starts_with("nightly")) {
        bail!(
            "no `nightly` Rust toolchain: the XDP program needs one (build-std, bpf-linker) and it \
             cannot be downloaded on these machines; install one with `rustup toolchain install \
             nightly` where that is possible (see shared/TOOLCHAIN.md)"
        );
    }
    item("toolchain nightly", "present");
    Ok(())
}

fn rust_src() -> Result<()> {
    let installed = output(rustup().args(["component", "list", "--toolchain", "nightly", "--installed"]))
        .context("listing the nightly toolchain's components")?;
    if installed.lines().any(|l| l.split_whitespace().next() == Some("rust-src")) {
        item("rust-src (nightly)", "present");
        return Ok(());
    }
    run(rustup().args(["component", "add", "rust-src", "--toolchain", "nightly"]))
        .context("adding rust-src to the nightly toolchain failed (build-std=core needs it)")?;
    item("rust-src (nightly)", "added with rustup");
    Ok(())
}

/// The nightly toolchain's `lib` directory, where its `libLLVM.so.*` lives.
fn nightly_lib() -> Result<PathBuf> {
    let sysroot = output(rustup().args(["run", "nightly", "rustc", "--print", "sysroot"]))
        .context("asking the nightly rustc for its sysroot")?;
    Ok(PathBuf::from(sysroot.trim()).join("lib"))
}

/// The LLVM major version of the nightly rustc, from `rustc -vV`'s "LLVM version: 22.1.4".
fn nightly_llvm_major() -> Result<String> {
    let vv = output(rustup().args(["run", "nightly", "rustc", "-vV"]))
        .context("asking the nightly rustc for its LLVM version")?;
    parse_llvm_major(&vv).with_context(|| format!("no \"LLVM version: N.x\" line in `rustc +nightly -vV`:\n{vv}"))
}

fn parse_llvm_major(vv: &str) -> Option<String> {
    let version = vv.lines().find_map(|l| l.trim().strip_prefix("LLVM version:"))?.trim();
    let major = version.split('.').next()?;
    (!major.is_empty() && major.bytes().all(|b| b.is_ascii_digit())).then(|| major.to_owned())
}

fn home() -> Result<PathBuf> {
    env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
        .context("HOME is not set: set it to your home directory")
}

/// Where `cargo install` puts binaries by default.
fn cargo_bin_dir() -> Result<PathBuf> {
    match env::var_os("CARGO_HOME").filter(|h| !h.is_empty()) {
        Some(h) => Ok(PathBuf::from(h).join("bin")),
        None => Ok(home()?.join(".cargo").join("bin")),
    }
}

/// Every `bpf-linker` on `PATH`, then the one in cargo's bin directory.
fn bpf_linker_candidates() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = env::var_os("PATH").map(|p| env::split_paths(&p).collect()).unwrap_or_default();
    if let Ok(bin) = cargo_bin_dir() {
        dirs.push(bin);
    }
    let mut found: Vec<PathBuf> = Vec::new();
    for dir in dirs {
        let exe = dir.join("bpf-linker");
        if exe.is_file() && !found.contains(&exe) {
            found.push(exe);
        }
    }
    found
}

/// Run `exe --version` with the nightly libLLVM on the library path (as `rustup run nightly` does
/// when rustc invokes the linker); `Ok(version line)` or `Err(why it is unusable)`.
fn linker_version(exe: &Path, nightly_lib: &Path) -> std::result::Result<String, String> {
    let mut lib_path = vec![nightly_lib.to_path_buf()];
    if let Some(existing) = env::var_os("LD_LIBRARY_PATH") {
        lib_path.extend(env::split_paths(&existing));
    }
    let joined = env::join_paths(lib_path).map_err(|e| e.to_string())?;
    let out = Command::new(exe)
        .arg("--version")
        .env("LD_LIBRARY_PATH", joined)
        .output()
        .map_err(|e| format!("cannot run {}: {e}", exe.display()))?;
    if !out.status.success() {
        return Err(format!(
            "{} --version failed ({}): {}",
            exe.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn is_wanted_version(version_line: &str) -> bool {
    version_line.split_whitespace().any(|w| w == BPF_LINKER_VERSION)
}

fn bpf_linker() -> Result<()> {
    let nightly_lib = nightly_lib()?;
    let mut rejected = Vec::new();
    for exe in bpf_linker_candidates() {
        match linker_version(&exe, &nightly_lib) {
            Ok(v) if is_wanted_version(&v) => {
                item(&format!("bpf-linker {BPF_LINKER_VERSION}"), &format!("present ({})", exe.display()));
                return Ok(());
            }
            Ok(v) => rejected.push(format!("{} is `{v}`", exe.display())),
            Err(why) => rejected.push(why),
        }
    }
    if !rejected.is_empty() {
        println!("setup: bpf-linker: replacing unusable copies: {}", rejected.join("; "));
    }
    let exe = install_bpf_linker(&nightly_lib, None)?;
    let version = linker_version(&exe, &nightly_lib)
        .map_err(anyhow::Error::msg)
        .with_context(|| format!("the freshly installed {} does not run", exe.display()))?;
    ensure!(
        is_wanted_version(&version),
        "installed {} but it reports `{version}`, not {BPF_LINKER_VERSION}",
        exe.display()
    );
    item(&format!("bpf-linker {BPF_LINKER_VERSION}"), &format!("installed with cargo install ({})", exe.display()));
    if !bpf_linker_candidates().contains(&exe) {
        println!(
            "setup: note: {} is not on PATH; add {} to PATH so the eBPF build finds it",
            exe.display(),
            exe.parent().map_or_else(String::new, |p| p.display().to_string())
        );
    }
    Ok(())
}

/// Build bpf-linker against the nightly toolchain's own libLLVM (shared/TOOLCHAIN.md) and install it
/// into `root` (default: cargo's bin directory). Returns the installed binary.
fn install_bpf_linker(nightly_lib: &Path, root: Option<&Path>) -> Result<PathBuf> {
    let major = nightly_llvm_major()?;
    let libllvm = find_libllvm(nightly_lib)?;
    let prefix = home()?.join(".cache").join("efm").join("llvm");
    let prefix_lib = prefix.join("lib");
    fs::create_dir_all(&prefix_lib)
        .with_context(|| format!("creating {} (check permissions)", prefix_lib.display()))?;
    let link = prefix_lib.join("libLLVM.so");
    if link.symlink_metadata().is_ok() {
        fs::remove_file(&link).with_context(|| format!("removing the old {}", link.display()))?;
    }
    symlink(&libllvm, &link)
        .with_context(|| format!("symlinking {} -> {} (check permissions)", link.display(), libllvm.display()))?;
    println!("setup: linked {} -> {}", link.display(), libllvm.display());

    let mut cmd = rustup();
    cmd.args(["run", "nightly", "cargo", "install", "bpf-linker", "--locked", "--force"])
        .args(["--version", BPF_LINKER_VERSION, "--no-default-features", "--features"])
        .arg(format!("llvm-{major}"));
    if let Some(root) = root {
        cmd.arg("--root").arg(root);
    }
    cmd.env("LLVM_PREFIX", &prefix)
        // Outside the workspace, so its rust-toolchain.toml and .cargo/config.toml don't apply.
        .current_dir(&prefix);
    for var in ["RUSTC", "RUSTC_WRAPPER", "RUSTFLAGS", "CARGO", "CARGO_TARGET_DIR", "CARGO_ENCODED_RUSTFLAGS"] {
        cmd.env_remove(var);
    }
    run(&mut cmd).with_context(|| {
        format!(
            "building bpf-linker {BPF_LINKER_VERSION} with llvm-{major} against {} failed: see cargo's \
             output above (it needs crates.io and a C++ toolchain; shared/TOOLCHAIN.md has the recipe)",
            libllvm.display()
        )
    })?;
    let bin = match root {
        Some(root) => root.join("bin"),
        None => match env::var_os("CARGO_INSTALL_ROOT").filter(|r| !r.is_empty()) {
            Some(r) => PathBuf::from(r).join("bin"),
            None => cargo_bin_dir()?,
        },
    };
    let exe = bin.join("bpf-linker");
    ensure!(exe.is_file(), "cargo install succeeded but {} does not exist", exe.display());
    Ok(exe)
}

/// The `libLLVM.so.*` shipped in the nightly toolchain's lib directory.
fn find_libllvm(nightly_lib: &Path) -> Result<PathBuf> {
    let mut found: Vec<PathBuf> = fs::read_dir(nightly_lib)
        .with_context(|| format!("reading the nightly toolchain's lib dir {}", nightly_lib.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("libLLVM.so.")))
        .collect();
    found.sort();
    found.into_iter().next().with_context(|| {
        format!(
            "no libLLVM.so.* in {}: this nightly toolchain does not ship a shared LLVM, so bpf-linker \
             cannot be built against it (see shared/TOOLCHAIN.md)",
            nightly_lib.display()
        )
    })
}

fn bpffs_mounted() -> Result<bool> {
    let mounts = fs::read_to_string("/proc/mounts").context("reading /proc/mounts")?;
    Ok(mounts.lines().any(|l| {
        let mut f = l.split_whitespace();
        let (_dev, dir, fstype) = (f.next(), f.next(), f.next());
        dir == Some(BPFFS) && fstype == Some("bpf")
    }))
}

fn bpffs(root: bool) -> Result<()> {
    if bpffs_mounted()? {
        item(&format!("bpffs {BPFFS}"), "present");
        return Ok(());
    }
    if !root {
        bail!("{BPFFS} is not a bpf filesystem and mounting it needs root: run `sudo cargo xtask setup`");
    }
    run(Command::new("mount").args(["-t", "bpf", "bpf", BPFFS])).with_context(|| {
        format!("mounting bpffs at {BPFFS} failed (does {BPFFS} exist? is this a container without CAP_SYS_ADMIN?)")
    })?;
    ensure!(bpffs_mounted()?, "mount reported success but {BPFFS} is still not a bpf filesystem");
    item(&format!("bpffs {BPFFS}"), "mounted");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llvm_major() {
        let vv = "rustc 1.97.0-nightly\nbinary: rustc\nLLVM version: 22.1.4\n";
        assert_eq!(parse_llvm_major(vv).as_deref(), Some("22"));
        assert_eq!(parse_llvm_major("LLVM version: 19.1.7").as_deref(), Some("19"));
        assert_eq!(parse_llvm_major("rustc 1.0"), None);
    }

    #[test]
    fn version_match() {
        assert!(is_wanted_version("bpf-linker 0.13.0"));
        assert!(!is_wanted_version("bpf-linker 0.13.1"));
        assert!(!is_wanted_version("bpf-linker 0.9.13"));
    }

    /// Exercises the real install path a fresh machine takes, into a throwaway root (about a
    /// minute: builds bpf-linker against the nightly's LLVM).
    #[test]
    fn install_bpf_linker_into_temp_root() {
        let tmp = env::temp_dir().join(format!("efm-xtask-bpf-linker-{}", std::process::id()));
        let lib = nightly_lib().unwrap();
        let exe = install_bpf_linker(&lib, Some(&tmp)).unwrap();
        let v = linker_version(&exe, &lib).unwrap();
        assert!(is_wanted_version(&v), "{v}");
        fs::remove_dir_all(&tmp).unwrap();
    }
}
