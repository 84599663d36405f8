//! `cargo xtask install [--prefix P] [--destdir D] [--binaries DIR]`: install efm the way a
//! Debian or RHEL administrator expects to find it.
//!
//! | what | where (prefix /usr) |
//! |---|---|
//! | `efm-agent` (daemon) | `P/sbin/efm-agent` |
//! | `efm` (admin command) | `P/bin/efm` |
//! | systemd unit | `/usr/lib/systemd/system/efm-agent@.service` (P `/usr/local`: `/usr/local/lib/...`; other prefixes: `/etc/systemd/system`) |
//! | tmpfiles.d, sysusers.d | `efm.conf` next to the unit's `lib` (same rule) |
//! | templates | `P/share/efm/efm.properties.in`, `efm.nodes.in` |
//! | man pages | `P/share/man/man8/efm-agent.8`, `man1/efm.1`, `man1/efm-*.1` |
//! | completions | `P/share/bash-completion/completions/`, `P/share/zsh/site-functions/` (Debian package: `vendor-completions`), `P/share/fish/vendor_completions.d/` |
//! | logrotate | `/etc/logrotate.d/efm` (never overwritten once present) |
//! | directories | `/etc/efm` and `/var/log/efm` (0750 root:efm); `/run/efm` only through tmpfiles.d |
//!
//! Everything goes under D when `--destdir` is given, and nothing is written outside it: the `efm`
//! group is not created and nothing is given to it (the tree stays root-owned, as a package
//! wants it); what a package's postinst must do instead is printed. Without `--destdir` (as root)
//! the group is created, the directories are given to it, tmpfiles are applied and systemd is
//! reloaded.

use std::{
    fs,
    os::unix::fs::{MetadataExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, ensure, Context as _, Result};

use crate::run::{cargo, is_root, output, run, workspace_root};

/// Where the zsh completion goes: upstream's `site-functions` or Debian's `vendor-completions`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ZshDir {
    SiteFunctions,
    VendorCompletions,
}

#[derive(Clone, Debug)]
pub struct Options {
    pub prefix: PathBuf,
    pub destdir: Option<PathBuf>,
    /// Directory holding already built `efm-agent` and `efm` (else: a release build).
    pub binaries: Option<PathBuf>,
    pub zsh: ZshDir,
}

impl Options {
    pub fn parse(args: &[String]) -> Result<Self> {
        let mut opts =
            Self { prefix: PathBuf::from("/usr/local"), destdir: None, binaries: None, zsh: ZshDir::SiteFunctions };
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let (flag, inline) = match a.split_once('=') {
                Some((f, v)) => (f, Some(v.to_owned())),
                None => (a.as_str(), None),
            };
            let mut value = || -> Result<PathBuf> {
                let v = match &inline {
                    Some(v) => v.clone(),
                    None => it.next().with_context(|| format!("{flag} needs a value"))?.clone(),
                };
                ensure!(!v.is_empty(), "{flag} needs a non-empty value");
                Ok(PathBuf::from(v))
            };
            match flag {
                "--prefix" => opts.prefix = value()?,
                "--destdir" => opts.destdir = Some(value()?),
                "--binaries" => opts.binaries = Some(value()?),
                other => bail!("unknown option `{other}` for `cargo xtask install`"),
            }
        }
        ensure!(opts.prefix.is_absolute(), "--prefix must be an absolute path, not {}", opts.prefix.display());
        Ok(opts)
    }
}

/// The directories of one installation, as the running system sees them (without destdir).
#[derive(Clone, Debug)]
pub struct Layout {
    pub sbin: PathBuf,
    pub bin: PathBuf,
    pub unit_dir: PathBuf,
    pub tmpfiles_dir: PathBuf,
    pub sysusers_dir: PathBuf,
    pub data: PathBuf,
    pub man: PathBuf,
    pub bash: PathBuf,
    pub zsh: PathBuf,
    pub fish: PathBuf,
    pub conf: PathBuf,
    pub logrotate: PathBuf,
    pub log: PathBuf,
}

impl Layout {
    #[must_use]
    pub fn new(prefix: &Path, zsh: ZshDir) -> Self {
        // systemd searches /usr/lib and /usr/local/lib for units, tmpfiles and sysusers; any other
        // prefix gets the administrator's directories under /etc.
        let system_lib = if prefix == Path::new("/usr") || prefix == Path::new("/usr/local") {
            prefix.join("lib")
        } else {
            PathBuf::from("/etc")
        };
        let share = prefix.join("share");
        Self {
            sbin: prefix.join("sbin"),
            bin: prefix.join("bin"),
            unit_dir: system_lib.join("systemd/system"),
            tmpfiles_dir: system_lib.join("tmpfiles.d"),
            sysusers_dir: system_lib.join("sysusers.d"),
            data: share.join("efm"),
            man: share.join("man"),
            bash: share.join("bash-completion/completions"),
            zsh: share.join(match zsh {
                ZshDir::SiteFunctions => "zsh/site-functions",
                ZshDir::VendorCompletions => "zsh/vendor-completions",
            }),
            fish: share.join("fish/vendor_completions.d"),
            conf: PathBuf::from("/etc/efm"),
            logrotate: PathBuf::from("/etc/logrotate.d/efm"),
            log: PathBuf::from("/var/log/efm"),
        }
    }
}

/// One installed path (as the running system sees it) and its mode.
#[derive(Clone, Debug)]
pub struct Entry {
    pub path: PathBuf,
    pub mode: u32,
    pub dir: bool,
}

/// What `install` did.
#[derive(Debug)]
pub struct Installed {
    pub layout: Layout,
    pub entries: Vec<Entry>,
    /// Configuration files under /etc (dpkg conffiles).
    pub conffiles: Vec<PathBuf>,
}

/// `dest` + an absolute `path`.
fn under(destdir: Option<&Path>, path: &Path) -> PathBuf {
    match destdir {
        Some(d) => d.join(path.strip_prefix("/").unwrap_or(path)),
        None => path.to_owned(),
    }
}

struct Installer<'a> {
    destdir: Option<&'a Path>,
    entries: Vec<Entry>,
    conffiles: Vec<PathBuf>,
}

impl Installer<'_> {
    fn dir(&mut self, path: &Path, mode: u32) -> Result<()> {
        let real = under(self.destdir, path);
        fs::create_dir_all(&real).with_context(|| format!("creating {}", real.display()))?;
        fs::set_permissions(&real, fs::Permissions::from_mode(mode))
            .with_context(|| format!("chmod {mode:o} {}", real.display()))?;
        self.entries.push(Entry { path: path.to_owned(), mode, dir: true });
        Ok(())
    }

    fn file(&mut self, path: &Path, contents: &[u8], mode: u32) -> Result<()> {
        let real = under(self.destdir, path);
        if let Some(parent) = real.parent() {
            fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        // Replace rather than write in place: a running efm-agent keeps its (old) binary.
        let tmp = real.with_file_name(format!(
            ".{}.xtask-new",
            real.file_name().map_or_else(String::new, |n| n.to_string_lossy().into_owned())
        ));
        fs::write(&tmp, contents).with_context(|| format!("writing {}", tmp.display()))?;
        fs::set_permissions(&tmp, fs::Permissions::from_mode(mode))
            .with_context(|| format!("chmod {mode:o} {}", tmp.display()))?;
        fs::rename(&tmp, &real).with_context(|| format!("renaming {} to {}", tmp.display(), real.display()))?;
        self.entries.push(Entry { path: path.to_owned(), mode, dir: false });
        Ok(())
    }

    fn copy(&mut self, from: &Path, path: &Path, mode: u32) -> Result<()> {
        let bytes = fs::read(from).with_context(|| format!("reading {}", from.display()))?;
        self.file(path, &bytes, mode)
    }

    /// An administrator's file under /etc: installed when absent, never overwritten.
    fn config(&mut self, path: &Path, contents: &[u8], mode: u32) -> Result<()> {
        let real = under(self.destdir, path);
        self.conffiles.push(path.to_owned());
        match fs::read(&real) {
            Ok(existing) if existing == contents => {
                self.entries.push(Entry { path: path.to_owned(), mode, dir: false });
                Ok(())
            }
            Ok(_) => {
                println!(
                    "install: kept the existing {} (it differs from efm's; compare with {})",
                    real.display(),
                    workspace_root().join("conf").display()
                );
                self.entries.push(Entry { path: path.to_owned(), mode, dir: false });
                Ok(())
            }
            Err(_) => self.file(path, contents, mode),
        }
    }
}

fn built_binaries(opts: &Options) -> Result<PathBuf> {
    if let Some(dir) = &opts.binaries {
        return Ok(dir.clone());
    }
    let mut cmd = cargo();
    cmd.args(["build", "--release", "-p", "efm-agent", "--bins"]);
    run(&mut cmd).context("building the release binaries failed: see the compiler output above")?;
    Ok(std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| workspace_root().join("target"), PathBuf::from)
        .join("release"))
}

/// Runs the installation `opts` describes.
pub fn install(opts: &Options) -> Result<Installed> {
    let root = is_root()?;
    if opts.destdir.is_none() && !root {
        bail!(
            "installing into the running system writes /etc, /var/log and {} and creates group efm: \
             run it as root (`sudo cargo xtask install`), or stage it with --destdir DIR",
            opts.prefix.display()
        );
    }
    let bins = built_binaries(opts)?;
    for b in ["efm-agent", "efm"] {
        ensure!(bins.join(b).is_file(), "{} is missing: build it first or drop --binaries", bins.join(b).display());
    }
    let layout = Layout::new(&opts.prefix, opts.zsh);
    let conf = workspace_root().join("conf");
    let read_conf = |name: &str| fs::read(conf.join(name)).with_context(|| format!("reading conf/{name}"));

    // Man pages and completions from the clap definitions, rendered by the binary itself.
    let docs = std::env::temp_dir().join(format!("efm-xtask-docs-{}", std::process::id()));
    let _ = fs::remove_dir_all(&docs);
    output(Command::new(bins.join("efm")).arg("generate-docs").arg(&docs))
        .context("generating man pages and completions with `efm generate-docs`")?;

    let mut i = Installer { destdir: opts.destdir.as_deref(), entries: Vec::new(), conffiles: Vec::new() };
    i.copy(&bins.join("efm-agent"), &layout.sbin.join("efm-agent"), 0o755)?;
    i.copy(&bins.join("efm"), &layout.bin.join("efm"), 0o755)?;

    let unit = String::from_utf8(read_conf("efm-agent@.service")?).context("conf/efm-agent@.service is not UTF-8")?;
    ensure!(
        unit.contains("ExecStart=/usr/sbin/efm-agent "),
        "conf/efm-agent@.service: no ExecStart=/usr/sbin/efm-agent"
    );
    let unit =
        unit.replace("ExecStart=/usr/sbin/efm-agent ", &format!("ExecStart={}/efm-agent ", layout.sbin.display()));
    i.file(&layout.unit_dir.join("efm-agent@.service"), unit.as_bytes(), 0o644)?;
    i.file(&layout.tmpfiles_dir.join("efm.conf"), &read_conf("efm.tmpfiles")?, 0o644)?;
    i.file(&layout.sysusers_dir.join("efm.conf"), &read_conf("efm.sysusers")?, 0o644)?;
    for t in ["efm.properties.in", "efm.nodes.in"] {
        i.file(&layout.data.join(t), &read_conf(t)?, 0o644)?;
    }

    let mut pages: Vec<(PathBuf, PathBuf)> = Vec::new();
    for section in ["man1", "man8"] {
        for e in fs::read_dir(docs.join(section)).with_context(|| format!("reading the generated {section}"))? {
            let e = e?;
            pages.push((e.path(), layout.man.join(section).join(e.file_name())));
        }
    }
    pages.sort();
    for (from, to) in pages {
        i.copy(&from, &to, 0o644)?;
    }
    for (shell, dir, names) in [
        ("bash", &layout.bash, ["efm", "efm-agent"]),
        ("zsh", &layout.zsh, ["_efm", "_efm-agent"]),
        ("fish", &layout.fish, ["efm.fish", "efm-agent.fish"]),
    ] {
        for n in names {
            i.copy(&docs.join("completions").join(shell).join(n), &dir.join(n), 0o644)?;
        }
    }
    let _ = fs::remove_dir_all(&docs);

    i.config(&layout.logrotate, &read_conf("efm.logrotate")?, 0o644)?;
    i.dir(&layout.conf, 0o750)?;
    i.dir(&layout.log, 0o750)?;

    let installed = Installed { layout, entries: i.entries, conffiles: i.conffiles };
    if let Some(d) = &opts.destdir {
        println!(
            "install: staged into {} (root-owned; group efm not created). A package's postinst must: \
             create the system group efm (`groupadd --system efm`, or sysusers.d/efm.conf); \
             chown root:efm and chmod 0750 {} and {}; apply tmpfiles.d/efm.conf \
             (`systemd-tmpfiles --create`: /run/efm, /run/lock/efm); `systemctl daemon-reload`",
            d.display(),
            installed.layout.conf.display(),
            installed.layout.log.display()
        );
    } else {
        system_setup(&installed)?;
    }
    for e in &installed.entries {
        println!(
            "install: {:04o} {}{}",
            e.mode,
            under(opts.destdir.as_deref(), &e.path).display(),
            if e.dir { "/" } else { "" }
        );
    }
    Ok(installed)
}

/// The steps only an installation into the running system takes.
fn system_setup(installed: &Installed) -> Result<()> {
    let have_group = Command::new("getent").args(["group", "efm"]).output().is_ok_and(|o| o.status.success());
    if have_group {
        println!("install: group efm exists");
    } else {
        run(Command::new("groupadd").args(["--system", "efm"]))
            .context("creating the system group efm failed (groupadd is in Debian's passwd / RHEL's shadow-utils)")?;
    }
    for dir in [&installed.layout.conf, &installed.layout.log] {
        run(Command::new("chown").arg("root:efm").arg(dir))
            .with_context(|| format!("chown root:efm {}", dir.display()))?;
        let mode = fs::metadata(dir)?.mode() & 0o7777;
        ensure!(mode == 0o750, "{} has mode {mode:o}, expected 750", dir.display());
    }
    let tmpfiles = installed.layout.tmpfiles_dir.join("efm.conf");
    if Path::new("/usr/bin/systemd-tmpfiles").exists() || Path::new("/bin/systemd-tmpfiles").exists() {
        run(Command::new("systemd-tmpfiles").arg("--create").arg(&tmpfiles))
            .context("applying tmpfiles.d/efm.conf (/run/efm, /run/lock/efm)")?;
    } else {
        println!("install: no systemd-tmpfiles: create /run/efm (0750 root:efm) at boot yourself");
    }
    if Path::new("/run/systemd/system").exists() {
        run(Command::new("systemctl").arg("daemon-reload")).context("systemctl daemon-reload")?;
        println!("install: start an agent with `systemctl enable --now efm-agent@<cluster>`");
    } else {
        println!("install: systemd is not running: skipped `systemctl daemon-reload`");
    }
    Ok(())
}
