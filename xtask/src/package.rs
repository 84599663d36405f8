//! `cargo xtask package [--binaries DIR] [--out DIR]`: a Debian package built with `dpkg-deb`
//! from the tree `cargo xtask install --prefix /usr --destdir` stages, plus `DEBIAN/` (control
//! with Depends computed from the binaries' ELF needs, conffiles, md5sums and the maintainer
//! scripts in `conf/debian/`).
//!
//! Binaries are stripped and man pages gzipped, as Debian policy wants; every file is owned by
//! root (`dpkg-deb --root-owner-group`), and postinst gives `/etc/efm` and `/var/log/efm` to group
//! `efm`. `/etc/logrotate.d/efm` is a conffile, so dpkg never overwrites an operator's edit, and
//! nothing else is shipped under `/etc` (the cluster configuration is the operator's).

use std::{
    fmt::Write as _,
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, ensure, Context as _, Result};

use crate::{
    install::{self, Options, ZshDir},
    run::{output, run, workspace_root},
};

/// Parsed `cargo xtask package` arguments.
#[derive(Debug, Default)]
pub struct PackageOptions {
    pub binaries: Option<PathBuf>,
    pub out: Option<PathBuf>,
}

impl PackageOptions {
    pub fn parse(args: &[String]) -> Result<Self> {
        let mut opts = Self::default();
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let (flag, inline) = match a.split_once('=') {
                Some((f, v)) => (f, Some(v.to_owned())),
                None => (a.as_str(), None),
            };
            let value = match inline {
                Some(v) => v,
                None => it.next().with_context(|| format!("{flag} needs a value"))?.clone(),
            };
            match flag {
                "--binaries" => opts.binaries = Some(PathBuf::from(value)),
                "--out" => opts.out = Some(PathBuf::from(value)),
                other => bail!("unknown option `{other}` for `cargo xtask package`"),
            }
        }
        Ok(opts)
    }
}

/// The package version: the workspace's.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Builds the package and returns its path.
pub fn package(opts: &PackageOptions) -> Result<PathBuf> {
    let arch = output(Command::new("dpkg").arg("--print-architecture"))
        .context("`dpkg --print-architecture` (packaging needs Debian's dpkg)")?
        .trim()
        .to_owned();
    let out = opts.out.clone().unwrap_or_else(|| workspace_root().join("target/debian"));
    let name = format!("efm_{VERSION}_{arch}");
    let stage = out.join(&name);
    if stage.exists() {
        fs::remove_dir_all(&stage).with_context(|| format!("removing the old staging tree {}", stage.display()))?;
    }
    fs::create_dir_all(&stage).with_context(|| format!("creating {}", stage.display()))?;

    let installed = install::install(&Options {
        prefix: PathBuf::from("/usr"),
        destdir: Some(stage.clone()),
        binaries: opts.binaries.clone(),
        zsh: ZshDir::VendorCompletions,
    })?;

    // Debian policy: stripped binaries, compressed man pages, a copyright file.
    let bins = [stage.join("usr/sbin/efm-agent"), stage.join("usr/bin/efm")];
    let depends = depends(&bins)?;
    for b in &bins {
        run(Command::new("strip").args(["--strip-unneeded", "--remove-section=.comment"]).arg(b))
            .with_context(|| format!("stripping {}", b.display()))?;
    }
    for e in &installed.entries {
        if !e.dir && e.path.starts_with(&installed.layout.man) {
            let page = stage.join(e.path.strip_prefix("/")?);
            run(Command::new("gzip").args(["-9n"]).arg(&page)).with_context(|| format!("gzip {}", page.display()))?;
        }
    }
    let conf = workspace_root().join("conf/debian");
    let doc = stage.join("usr/share/doc/efm");
    fs::create_dir_all(&doc)?;
    fs::copy(conf.join("copyright"), doc.join("copyright")).context("copying conf/debian/copyright")?;
    fs::set_permissions(doc.join("copyright"), fs::Permissions::from_mode(0o644))?;

    let debian = stage.join("DEBIAN");
    fs::create_dir_all(&debian)?;
    fs::set_permissions(&debian, fs::Permissions::from_mode(0o755))?;
    let control = fs::read_to_string(conf.join("control.in"))
        .context("reading conf/debian/control.in")?
        .replace("@VERSION@", VERSION)
        .replace("@ARCH@", &arch)
        .replace("@INSTALLED_SIZE@", &installed_size_kib(&stage)?.to_string())
        .replace("@DEPENDS@", &depends);
    write(&debian.join("control"), &control, 0o644)?;
    let conffiles = installed.conffiles.iter().fold(String::new(), |mut s, p| {
        let _ = writeln!(s, "{}", p.display());
        s
    });
    write(&debian.join("conffiles"), &conffiles, 0o644)?;
    for script in ["postinst", "prerm", "postrm"] {
        let text = fs::read_to_string(conf.join(script)).with_context(|| format!("reading conf/debian/{script}"))?;
        write(&debian.join(script), &text, 0o755)?;
    }
    write(&debian.join("md5sums"), &md5sums(&stage, &installed.conffiles)?, 0o644)?;

    let deb = out.join(format!("{name}.deb"));
    run(Command::new("dpkg-deb").args(["--root-owner-group", "-Zxz", "--build"]).arg(&stage).arg(&deb))
        .context("dpkg-deb --build failed: see its output above")?;
    print!("{}", output(Command::new("dpkg-deb").arg("--info").arg(&deb)).context("dpkg-deb --info")?);
    if Command::new("lintian").arg("--version").output().is_ok_and(|o| o.status.success()) {
        // Advisory: printed, not fatal.
        let _ = run(Command::new("lintian").args(["--no-tag-display-limit"]).arg(&deb));
    } else {
        println!("package: lintian is not installed; skipped (apt-get install lintian to check the package)");
    }
    println!("package: {}", deb.display());
    Ok(deb)
}

fn write(path: &Path, text: &str, mode: u32) -> Result<()> {
    fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).with_context(|| format!("chmod {}", path.display()))
}

/// The Depends line: what the binaries' `DT_NEEDED` libraries come from, with glibc's version
/// from the newest `GLIBC_x.y` symbol version they use. Fails on a library it does not know, so
/// a new dependency cannot slip into an uninstallable package.
fn depends(bins: &[PathBuf]) -> Result<String> {
    let mut needed: Vec<String> = Vec::new();
    let mut glibc = (2u32, 17u32);
    for b in bins {
        let dynamic = output(Command::new("readelf").args(["-d", "-W"]).arg(b))
            .with_context(|| format!("readelf -d {} (binutils)", b.display()))?;
        for line in dynamic.lines().filter(|l| l.contains("(NEEDED)")) {
            if let Some(lib) = line.split('[').nth(1).and_then(|s| s.split(']').next()) {
                if !needed.iter().any(|n| n == lib) {
                    needed.push(lib.to_owned());
                }
            }
        }
        let versions = output(Command::new("readelf").args(["-V", "-W"]).arg(b))
            .with_context(|| format!("readelf -V {}", b.display()))?;
        for word in versions.split_whitespace() {
            if let Some(v) = word.strip_prefix("GLIBC_") {
                let mut parts = v.split('.').map(str::parse::<u32>);
                if let (Some(Ok(major)), Some(Ok(minor))) = (parts.next(), parts.next()) {
                    glibc = glibc.max((major, minor));
                }
            }
        }
    }
    let mut deps = vec![format!("libc6 (>= {}.{})", glibc.0, glibc.1)];
    for lib in &needed {
        let dep = match lib.as_str() {
            "libc.so.6"
            | "libm.so.6"
            | "libdl.so.2"
            | "libpthread.so.0"
            | "librt.so.1"
            | "ld-linux-x86-64.so.2"
            | "ld-linux-aarch64.so.1" => continue,
            "libgcc_s.so.1" => "libgcc-s1",
            // libssl3t64 is trixie's name for the same library.
            "libssl.so.3" | "libcrypto.so.3" => "libssl3 | libssl3t64",
            other => bail!(
                "the binaries need {other}, which xtask/src/package.rs does not map to a Debian \
                 package: add it to `depends`"
            ),
        };
        if !deps.iter().any(|d| d == dep) {
            deps.push(dep.to_owned());
        }
    }
    // postinst creates the group with groupadd.
    deps.push("passwd".to_owned());
    Ok(deps.join(", "))
}

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for e in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let e = e?;
        let t = e.file_type()?;
        if t.is_dir() {
            files_under(&e.path(), out)?;
        } else if t.is_file() {
            out.push(e.path());
        }
    }
    Ok(())
}

fn payload_files(stage: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for top in fs::read_dir(stage)? {
        let top = top?;
        if top.file_name() != "DEBIAN" && top.file_type()?.is_dir() {
            files_under(&top.path(), &mut files)?;
        }
    }
    files.sort();
    Ok(files)
}

fn installed_size_kib(stage: &Path) -> Result<u64> {
    let mut bytes = 0;
    for f in payload_files(stage)? {
        bytes += fs::metadata(&f)?.len().div_ceil(1024) * 1024;
    }
    Ok(bytes / 1024)
}

/// `DEBIAN/md5sums`: every payload file but the conffiles (dpkg tracks those itself).
fn md5sums(stage: &Path, conffiles: &[PathBuf]) -> Result<String> {
    let mut list = String::new();
    for f in payload_files(stage)? {
        let rel = f.strip_prefix(stage)?;
        if conffiles.iter().any(|c| c.strip_prefix("/").is_ok_and(|c| c == rel)) {
            continue;
        }
        let sum = output(Command::new("md5sum").arg(&f)).with_context(|| format!("md5sum {}", f.display()))?;
        let hash = sum.split_whitespace().next().context("md5sum printed nothing")?;
        ensure!(hash.len() == 32, "unexpected md5sum output: {sum}");
        let _ = writeln!(list, "{hash}  {}", rel.display());
    }
    Ok(list)
}
