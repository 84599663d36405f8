//! Where the agent's `tracing` events go.
//!
//! - Started by systemd (`$JOURNAL_STREAM` names our stderr, or `$INVOCATION_ID` is set): the
//!   journal, natively (structured fields prefixed `EFM_`, `SYSLOG_IDENTIFIER=efm-agent`,
//!   `EFM_CLUSTER=<cluster>`), so `journalctl -u efm-agent@<cluster>` shows it.
//! - Otherwise: `<log.dir>/<cluster>.log` when `file.log.enabled` (mode 0640; the file is reopened
//!   when logrotate moves it, so the shipped logrotate file needs no `copytruncate`), plus stderr
//!   when stderr is a terminal.
//! - In both cases also syslog when `syslog.enabled`: RFC 5424 messages to
//!   `syslog.host:syslog.port` over UDP (one message per datagram) or TCP (octet-counted framing,
//!   RFC 6587), facility `syslog.facility`, sent by a background thread so a slow or absent
//!   server never blocks the agent.
//! - stderr whenever no other sink could be opened, so messages never vanish.
//!
//! The level is `efm.loglevel` (EFM's TRACE/DEBUG/INFO/WARN/ERROR or java.util.logging's
//! FINEST/FINER/FINE/CONFIG/INFO/WARNING/SEVERE, any case) for efm's own modules; dependencies log
//! at WARN (or ERROR). `EFM_LOG`, a `tracing` filter, overrides it.
//!
//! Before the configuration is known, [`early`] logs to stderr.

use std::{
    fmt::Write as _,
    fs,
    io::{self, IsTerminal as _, Write},
    net::{TcpStream, ToSocketAddrs as _, UdpSocket},
    os::unix::fs::{DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
    sync::mpsc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use tracing::{level_filters::LevelFilter, Level, Metadata};
use tracing_subscriber::{
    fmt::MakeWriter, layer::SubscriberExt as _, util::SubscriberInitExt as _, EnvFilter, Layer, Registry,
};

use crate::config::{Config, SyslogProtocol};

/// The environment variable whose `tracing` filter overrides `efm.loglevel`.
pub const ENV_FILTER: &str = "EFM_LOG";
/// The journald native socket.
const JOURNALD_SOCKET: &str = "/run/systemd/journal/socket";

#[derive(Debug, thiserror::Error)]
pub enum LoggingError {
    #[error("logging is already initialized in this process")]
    AlreadyInitialized,
}

/// `efm.loglevel` as a `tracing` level filter: EFM's names and the java.util.logging names of old
/// EFM releases (as SLF4J's JUL bridge maps them: FINEST → TRACE, FINER and FINE → DEBUG, CONFIG →
/// INFO, WARNING → WARN, SEVERE → ERROR), case-insensitive. `None` for an unknown name.
#[must_use]
pub fn level_filter(name: &str) -> Option<LevelFilter> {
    Some(match name.trim().to_ascii_uppercase().as_str() {
        "TRACE" | "FINEST" | "ALL" => LevelFilter::TRACE,
        "DEBUG" | "FINER" | "FINE" => LevelFilter::DEBUG,
        "INFO" | "CONFIG" => LevelFilter::INFO,
        "WARN" | "WARNING" => LevelFilter::WARN,
        "ERROR" | "SEVERE" => LevelFilter::ERROR,
        "OFF" => LevelFilter::OFF,
        _ => return None,
    })
}

/// The filter directive for `level`: efm's crates at `level`, everything else at WARN (or at
/// `level` when that is stricter).
#[must_use]
pub fn directive(level: LevelFilter) -> String {
    let deps = level.min(LevelFilter::WARN);
    let lvl = level.to_string().to_ascii_lowercase();
    let deps = deps.to_string().to_ascii_lowercase();
    format!("{deps},efm_agent={lvl},efm_common={lvl},efm={lvl}")
}

/// A syslog facility name (`syslog.facility`) as its RFC 5424 number.
#[must_use]
pub fn facility_code(name: &str) -> Option<u8> {
    let upper = name.trim().to_ascii_uppercase();
    Some(match upper.as_str() {
        "KERN" => 0,
        "USER" => 1,
        "DAEMON" => 3,
        "AUTH" => 4,
        "SYSLOG" => 5,
        _ => {
            let n: u8 = upper.strip_prefix("LOCAL")?.parse().ok()?;
            if n > 7 {
                return None;
            }
            16 + n
        }
    })
}

/// The RFC 5424 severity of a `tracing` level.
#[must_use]
pub fn severity(level: Level) -> u8 {
    match level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        Level::DEBUG | Level::TRACE => 7,
    }
}

/// What the process's surroundings say about where logs should go.
#[derive(Debug, Clone, Default)]
pub struct Environment {
    /// Started by systemd with its output going to the journal.
    pub under_systemd: bool,
    pub stderr_is_terminal: bool,
    /// `$EFM_LOG`.
    pub filter_override: Option<String>,
}

impl Environment {
    /// Reads `$JOURNAL_STREAM` (checked against stderr's device and inode, as systemd.exec(5)
    /// recommends, so a stale inherited value is ignored), `$INVOCATION_ID`, `$EFM_LOG` and
    /// whether stderr is a terminal.
    #[must_use]
    pub fn detect() -> Self {
        let journal_stream = std::env::var("JOURNAL_STREAM").ok().is_some_and(|v| stderr_is(&v));
        let invocation = std::env::var_os("INVOCATION_ID").is_some_and(|v| !v.is_empty());
        Self {
            under_systemd: journal_stream || invocation,
            stderr_is_terminal: io::stderr().is_terminal(),
            filter_override: std::env::var(ENV_FILTER).ok().filter(|v| !v.trim().is_empty()),
        }
    }
}

/// Whether `dev:ino` (the `$JOURNAL_STREAM` format) is the file stderr refers to.
fn stderr_is(dev_ino: &str) -> bool {
    let Some((dev, ino)) = dev_ino.split_once(':') else { return false };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else { return false };
    let Ok(st) = rustix::fs::fstat(io::stderr()) else { return false };
    st.st_dev == dev && st.st_ino == ino
}

/// Where syslog messages go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyslogTarget {
    pub host: String,
    pub port: u16,
    pub protocol: SyslogProtocol,
    /// RFC 5424 facility number.
    pub facility: u8,
    /// RFC 5424 APP-NAME: `efm-agent@<cluster>`, like the systemd unit.
    pub app_name: String,
}

/// The sinks and the filter, decided from the configuration and the [`Environment`]; [`init`]
/// opens them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub cluster: String,
    /// A `tracing` filter directive.
    pub filter: String,
    pub journald: bool,
    /// The log file (`<log.dir>/<cluster>.log`).
    pub file: Option<PathBuf>,
    pub stderr: bool,
    pub syslog: Option<SyslogTarget>,
    /// Problems found while deciding (reported once logging runs).
    pub problems: Vec<String>,
}

impl Plan {
    /// The agent's plan for `cfg`.
    #[must_use]
    pub fn for_agent(cfg: &Config, env: &Environment) -> Self {
        let mut problems = Vec::new();
        let level = level_filter(&cfg.efm_loglevel).unwrap_or_else(|| {
            problems.push(format!("efm.loglevel {:?} is not a level; using INFO", cfg.efm_loglevel));
            LevelFilter::INFO
        });
        let mut filter = directive(level);
        if let Some(over) = &env.filter_override {
            if EnvFilter::try_new(over).is_ok() {
                filter.clone_from(over);
            } else {
                problems.push(format!("{ENV_FILTER}={over:?} is not a tracing filter; using efm.loglevel"));
            }
        }
        let syslog = cfg.syslog_enabled.then(|| SyslogTarget {
            host: cfg.syslog_host.clone(),
            port: cfg.syslog_port,
            protocol: cfg.syslog_protocol,
            facility: facility_code(&cfg.syslog_facility).unwrap_or_else(|| {
                problems.push(format!("syslog.facility {:?} is unknown; using LOCAL1", cfg.syslog_facility));
                17
            }),
            app_name: format!("efm-agent@{}", cfg.cluster),
        });
        let file =
            (!env.under_systemd && cfg.file_log_enabled).then(|| cfg.log_dir.join(format!("{}.log", cfg.cluster)));
        Self {
            cluster: cfg.cluster.clone(),
            filter,
            journald: env.under_systemd,
            stderr: !env.under_systemd && env.stderr_is_terminal,
            file,
            syslog,
            problems,
        }
    }
}

type BoxedLayer = Box<dyn Layer<Registry> + Send + Sync>;

/// Keeps the background writers running; dropping it flushes what is queued (up to a second per
/// sink). Hold it until the process exits.
#[must_use = "dropping it stops file and syslog logging"]
pub struct Logging {
    _file: Option<tracing_appender::non_blocking::WorkerGuard>,
    syslog: Option<SyslogSender>,
    /// The sinks in use, for a start-up message (`journald`, `file /var/log/efm/acctg.log`, ...).
    pub sinks: Vec<String>,
}

impl Drop for Logging {
    fn drop(&mut self) {
        if let Some(s) = &self.syslog {
            s.flush(Duration::from_secs(1));
        }
    }
}

impl std::fmt::Debug for Logging {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Logging").field("sinks", &self.sinks).finish_non_exhaustive()
    }
}

/// Logging to stderr until the configuration is known: `$EFM_LOG` or INFO, for the calling thread
/// only (the guard restores the previous state; [`init`] then sets the process-wide subscriber).
#[must_use]
pub fn early() -> tracing::subscriber::DefaultGuard {
    let filter = std::env::var(ENV_FILTER)
        .ok()
        .and_then(|v| EnvFilter::try_new(v).ok())
        .unwrap_or_else(|| EnvFilter::new(directive(LevelFilter::INFO)));
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(io::stderr)
        .with_ansi(io::stderr().is_terminal())
        .finish();
    tracing::subscriber::set_default(subscriber)
}

/// The stderr-only plan (no configuration: the agent reports why and exits).
#[must_use]
pub fn stderr_plan(cluster: &str, env: &Environment) -> Plan {
    let filter = env
        .filter_override
        .clone()
        .filter(|f| EnvFilter::try_new(f).is_ok())
        .unwrap_or_else(|| directive(LevelFilter::INFO));
    Plan {
        cluster: cluster.to_owned(),
        filter,
        journald: false,
        file: None,
        stderr: true,
        syslog: None,
        problems: Vec::new(),
    }
}

/// Opens the plan's sinks and makes them the process-wide subscriber. A sink that cannot be opened
/// is reported (as a warning, once logging runs) and skipped; stderr is used when nothing else is.
pub fn init(plan: &Plan) -> Result<Logging, LoggingError> {
    let mut problems = plan.problems.clone();
    let mut layers: Vec<BoxedLayer> = Vec::new();
    let mut sinks = Vec::new();
    let mut file_guard = None;
    let mut syslog_sender = None;

    let mut stderr = plan.stderr;
    let mut stderr_plain = false;
    if plan.journald {
        match tracing_journald::layer() {
            Ok(l) => {
                let l = l
                    .with_syslog_identifier("efm-agent".to_owned())
                    .with_field_prefix(Some("EFM".to_owned()))
                    .with_custom_fields([("EFM_CLUSTER", plan.cluster.as_bytes())]);
                layers.push(Box::new(l));
                sinks.push("journald".to_owned());
            }
            Err(e) => {
                // stderr goes to the journal as a stream: plain lines, no colours, no timestamps.
                problems.push(format!("journald ({JOURNALD_SOCKET}): {e}; logging to stderr"));
                stderr = true;
                stderr_plain = true;
            }
        }
    }
    if let Some(path) = &plan.file {
        match LogFile::open(path) {
            Ok(f) => {
                let (writer, guard) =
                    tracing_appender::non_blocking::NonBlockingBuilder::default().thread_name("efm-log-file").finish(f);
                file_guard = Some(guard);
                layers.push(Box::new(tracing_subscriber::fmt::layer().with_ansi(false).with_writer(writer)));
                sinks.push(format!("file {}", path.display()));
            }
            Err(e) => problems.push(format!("log file {}: {e}; not logging to a file", path.display())),
        }
    }
    if let Some(target) = &plan.syslog {
        let sender = SyslogSender::start(target.clone());
        layers.push(Box::new(
            tracing_subscriber::fmt::layer()
                .with_ansi(false)
                .without_time()
                .with_level(false)
                .with_writer(sender.clone()),
        ));
        let proto = match target.protocol {
            SyslogProtocol::Udp => "udp",
            SyslogProtocol::Tcp => "tcp",
        };
        sinks.push(format!("syslog {proto}://{}:{}", target.host, target.port));
        syslog_sender = Some(sender);
    }
    if layers.is_empty() {
        stderr = true;
    }
    if stderr {
        let l = tracing_subscriber::fmt::layer().with_writer(io::stderr);
        if stderr_plain {
            layers.push(Box::new(l.with_ansi(false).without_time()));
        } else {
            layers.push(Box::new(l.with_ansi(io::stderr().is_terminal())));
        }
        sinks.push("stderr".to_owned());
    }
    let filter = EnvFilter::try_new(&plan.filter).unwrap_or_else(|_| EnvFilter::new(directive(LevelFilter::INFO)));
    tracing_subscriber::registry()
        .with(layers)
        .with(filter)
        .try_init()
        .map_err(|_| LoggingError::AlreadyInitialized)?;
    for p in problems {
        tracing::warn!("logging: {p}");
    }
    Ok(Logging { _file: file_guard, syslog: syslog_sender, sinks })
}

// ---------------------------------------------------------------------------------------------
// The log file.

/// `<log.dir>/<cluster>.log`, opened for appending (mode 0640, directory created 0750 if missing),
/// and reopened when the path no longer names the open file (logrotate renamed or removed it).
/// The check runs at most once a second.
#[derive(Debug)]
pub struct LogFile {
    path: PathBuf,
    file: fs::File,
    ino: (u64, u64),
    checked: Instant,
}

impl LogFile {
    pub fn open(path: &Path) -> io::Result<Self> {
        if let Some(dir) = path.parent() {
            if !dir.exists() {
                fs::DirBuilder::new().recursive(true).mode(0o750).create(dir)?;
            }
        }
        let file = fs::OpenOptions::new().append(true).create(true).mode(0o640).open(path)?;
        let m = file.metadata()?;
        Ok(Self { path: path.to_owned(), file, ino: (m.dev(), m.ino()), checked: Instant::now() })
    }

    fn reopen_if_moved(&mut self) {
        if self.checked.elapsed() < Duration::from_secs(1) {
            return;
        }
        self.checked = Instant::now();
        let moved = fs::metadata(&self.path).map_or(true, |m| (m.dev(), m.ino()) != self.ino);
        if moved {
            if let Ok(new) = Self::open(&self.path) {
                *self = new;
            }
        }
    }
}

impl Write for LogFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.reopen_if_moved();
        self.file.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

// ---------------------------------------------------------------------------------------------
// Syslog.

/// Formats one RFC 5424 message: `<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID - - MSG`.
#[must_use]
pub fn rfc5424(
    facility: u8,
    severity: u8,
    time: SystemTime,
    hostname: &str,
    app_name: &str,
    pid: u32,
    msg: &str,
) -> String {
    let pri = u16::from(facility) * 8 + u16::from(severity);
    let host = header_field(hostname, 255);
    let app = header_field(app_name, 48);
    let msg = msg.trim_end_matches(['\n', '\r']);
    format!("<{pri}>1 {} {host} {app} {pid} - - {msg}", rfc3339_utc(time))
}

/// A header field: printable US-ASCII without spaces, at most `max` characters, `-` when empty.
fn header_field(s: &str, max: usize) -> String {
    let f: String = s.chars().filter(char::is_ascii_graphic).take(max).collect();
    if f.is_empty() {
        "-".to_owned()
    } else {
        f
    }
}

/// `2024-05-01T12:34:56.789012Z`.
#[must_use]
pub fn rfc3339_utc(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = i64::try_from(days).unwrap_or(0) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let mut s = String::with_capacity(27);
    let _ = write!(
        s,
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_micros()
    );
    s
}

/// The host name (`uname`'s node name, what `gethostname` returns on Linux); `-` when empty.
fn hostname() -> String {
    let name = rustix::system::uname().nodename().to_string_lossy().into_owned();
    if name.is_empty() {
        "-".to_owned()
    } else {
        name
    }
}

enum SyslogMsg {
    Line(Vec<u8>),
    Flush(mpsc::Sender<()>),
}

/// Queues formatted events for the syslog thread; the `MakeWriter` the syslog layer writes to.
#[derive(Clone)]
struct SyslogSender {
    tx: mpsc::SyncSender<SyslogMsg>,
    target: std::sync::Arc<(SyslogTarget, String, u32)>,
}

/// How many messages may wait for the network before new ones are dropped.
const SYSLOG_QUEUE: usize = 4096;

impl SyslogSender {
    fn start(target: SyslogTarget) -> Self {
        let (tx, rx) = mpsc::sync_channel(SYSLOG_QUEUE);
        let t = target.clone();
        let spawned = std::thread::Builder::new().name("efm-log-syslog".into()).spawn(move || syslog_thread(&t, &rx));
        if let Err(e) = spawned {
            eprintln!("efm-agent: cannot start the syslog thread: {e}");
        }
        Self { tx, target: std::sync::Arc::new((target, hostname(), std::process::id())) }
    }

    /// Waits until the thread has sent what was queued before this call, at most `timeout`.
    fn flush(&self, timeout: Duration) {
        let (ack_tx, ack_rx) = mpsc::channel();
        if self.tx.send(SyslogMsg::Flush(ack_tx)).is_ok() {
            let _ = ack_rx.recv_timeout(timeout);
        }
    }
}

/// One event being formatted; queued for sending when dropped.
struct SyslogEvent<'a> {
    sender: &'a SyslogSender,
    severity: u8,
    buf: Vec<u8>,
}

impl Write for SyslogEvent<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for SyslogEvent<'_> {
    fn drop(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        let (target, host, pid) = &*self.sender.target;
        let msg = String::from_utf8_lossy(&self.buf);
        let line = rfc5424(target.facility, self.severity, SystemTime::now(), host, &target.app_name, *pid, &msg);
        // A full queue (server unreachable for a long time) drops the message rather than block.
        let _ = self.sender.tx.try_send(SyslogMsg::Line(line.into_bytes()));
    }
}

impl<'a> MakeWriter<'a> for SyslogSender {
    type Writer = SyslogEvent<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        SyslogEvent { sender: self, severity: severity(Level::INFO), buf: Vec::new() }
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> Self::Writer {
        SyslogEvent { sender: self, severity: severity(*meta.level()), buf: Vec::new() }
    }
}

/// Sends queued messages; TCP connections are (re)made on demand, at most every 5 s after a
/// failure, and messages are dropped while the server is unreachable.
fn syslog_thread(target: &SyslogTarget, rx: &mpsc::Receiver<SyslogMsg>) {
    let addr = format!("{}:{}", target.host, target.port);
    let mut udp: Option<UdpSocket> = None;
    let mut tcp: Option<TcpStream> = None;
    let mut last_attempt: Option<Instant> = None;
    let mut reported = false;
    while let Ok(msg) = rx.recv() {
        let line = match msg {
            SyslogMsg::Line(l) => l,
            SyslogMsg::Flush(ack) => {
                let _ = ack.send(());
                continue;
            }
        };
        let result = match target.protocol {
            SyslogProtocol::Udp => {
                if udp.is_none() {
                    udp = connect_udp(&addr).ok();
                }
                udp.as_ref().map_or_else(|| Err(io::Error::other("cannot resolve")), |s| s.send(&line).map(drop))
            }
            SyslogProtocol::Tcp => {
                if tcp.is_none() && last_attempt.is_none_or(|t| t.elapsed() > Duration::from_secs(5)) {
                    last_attempt = Some(Instant::now());
                    tcp = connect_tcp(&addr).ok();
                }
                match tcp.as_mut() {
                    None => Err(io::Error::other("not connected")),
                    Some(s) => {
                        // Octet counting (RFC 6587 3.4.1): "LEN SP MSG".
                        let mut framed = format!("{} ", line.len()).into_bytes();
                        framed.extend_from_slice(&line);
                        let r = s.write_all(&framed);
                        if r.is_err() {
                            tcp = None;
                        }
                        r
                    }
                }
            }
        };
        match result {
            Err(e) if !reported => {
                eprintln!("efm-agent: syslog {addr}: {e}; dropping syslog messages until it answers");
                reported = true;
            }
            Ok(()) => reported = false,
            Err(_) => {}
        }
    }
}

fn connect_udp(addr: &str) -> io::Result<UdpSocket> {
    let target = addr.to_socket_addrs()?.next().ok_or_else(|| io::Error::other("no address"))?;
    let bind = if target.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" };
    let s = UdpSocket::bind(bind)?;
    s.connect(target)?;
    Ok(s)
}

fn connect_tcp(addr: &str) -> io::Result<TcpStream> {
    let target = addr.to_socket_addrs()?.next().ok_or_else(|| io::Error::other("no address"))?;
    let s = TcpStream::connect_timeout(&target, Duration::from_secs(2))?;
    s.set_write_timeout(Some(Duration::from_secs(2)))?;
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn efm_and_java_level_names_map_to_tracing_levels() {
        for (names, want) in [
            (&["TRACE", "trace", "FINEST"][..], LevelFilter::TRACE),
            (&["DEBUG", "FINER", "fine"], LevelFilter::DEBUG),
            (&["INFO", "Info", "CONFIG"], LevelFilter::INFO),
            (&["WARN", "WARNING", "warning"], LevelFilter::WARN),
            (&["ERROR", "SEVERE", " severe "], LevelFilter::ERROR),
        ] {
            for n in names {
                assert_eq!(level_filter(n), Some(want), "{n}");
            }
        }
        assert_eq!(level_filter("LOUD"), None);
        // Every name the property table accepts maps.
        for n in crate::config::properties::LOG_LEVELS {
            assert!(level_filter(n).is_some(), "{n}");
        }
    }

    #[test]
    fn dependencies_stay_at_warn() {
        assert_eq!(directive(LevelFilter::DEBUG), "warn,efm_agent=debug,efm_common=debug,efm=debug");
        assert_eq!(directive(LevelFilter::ERROR), "error,efm_agent=error,efm_common=error,efm=error");
        assert!(EnvFilter::try_new(directive(LevelFilter::TRACE)).is_ok());
    }

    #[test]
    fn facilities() {
        assert_eq!(facility_code("LOCAL1"), Some(17));
        assert_eq!(facility_code("local7"), Some(23));
        assert_eq!(facility_code("DAEMON"), Some(3));
        assert_eq!(facility_code("USER"), Some(1));
        assert_eq!(facility_code("LOCAL8"), None);
        for f in crate::config::properties::SYSLOG_FACILITIES {
            assert!(facility_code(f).is_some(), "{f}");
        }
    }

    #[test]
    fn rfc5424_message() {
        let t = UNIX_EPOCH + Duration::from_micros(1_714_566_896_123_456);
        let m = rfc5424(17, severity(Level::WARN), t, "db1", "efm-agent@acctg", 42, "peer verdict changed\n");
        assert_eq!(m, "<140>1 2024-05-01T12:34:56.123456Z db1 efm-agent@acctg 42 - - peer verdict changed");
        let m = rfc5424(3, 3, UNIX_EPOCH, "", "a b", 1, "x");
        assert_eq!(m, "<27>1 1970-01-01T00:00:00.000000Z - ab 1 - - x");
    }

    #[test]
    fn rfc3339_dates() {
        let at = |secs: u64| UNIX_EPOCH + Duration::new(secs, 0);
        assert_eq!(rfc3339_utc(at(951_782_400)), "2000-02-29T00:00:00.000000Z");
        assert_eq!(rfc3339_utc(at(4_102_444_799)), "2099-12-31T23:59:59.000000Z");
    }

    fn config(extra: &str) -> Config {
        let text = format!(
            "db.user=postgres\ndb.port=5432\ndb.database=postgres\nbind.address=198.18.0.1:7800\nis.witness=true\n{extra}"
        );
        let nodes = vec!["198.18.0.1:7800".parse().unwrap()];
        crate::config::from_properties(&text, Path::new("acctg.properties"), "acctg", nodes)
            .unwrap_or_else(|e| panic!("{e}"))
            .config
    }

    #[test]
    fn plan_follows_the_environment_and_properties() {
        let cfg = config("efm.loglevel=FINE\nsyslog.enabled=true\nsyslog.facility=LOCAL3\nsyslog.protocol=TCP\n");
        let by_hand = Environment { under_systemd: false, stderr_is_terminal: true, filter_override: None };
        let p = Plan::for_agent(&cfg, &by_hand);
        assert_eq!(p.file.as_deref(), Some(Path::new("/var/log/efm/acctg.log")));
        assert!(p.stderr && !p.journald);
        assert_eq!(p.filter, directive(LevelFilter::DEBUG));
        let s = p.syslog.unwrap();
        assert_eq!(
            (s.facility, s.protocol, s.port, s.app_name.as_str()),
            (19, SyslogProtocol::Tcp, 514, "efm-agent@acctg")
        );

        let systemd =
            Environment { under_systemd: true, stderr_is_terminal: false, filter_override: Some("trace".into()) };
        let p = Plan::for_agent(&config(""), &systemd);
        assert!(p.journald && !p.stderr && p.file.is_none() && p.syslog.is_none());
        assert_eq!(p.filter, "trace");

        let bad = Environment { filter_override: Some("efm_agent=[".into()), ..by_hand };
        let p = Plan::for_agent(&config("file.log.enabled=false\n"), &bad);
        assert!(p.file.is_none());
        assert_eq!(p.filter, directive(LevelFilter::INFO));
        assert_eq!(p.problems.len(), 1, "{:?}", p.problems);
    }

    #[test]
    fn log_file_is_reopened_after_logrotate_moves_it() {
        let dir = std::env::temp_dir().join(format!("efm-logfile-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let path = dir.join("logs").join("acctg.log");
        let mut f = LogFile::open(&path).unwrap();
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o777, 0o640);
        assert_eq!(fs::metadata(path.parent().unwrap()).unwrap().mode() & 0o777, 0o750);
        f.write_all(b"one\n").unwrap();
        fs::rename(&path, dir.join("logs").join("acctg.log.1")).unwrap();
        f.checked = Instant::now().checked_sub(Duration::from_secs(2)).unwrap();
        f.write_all(b"two\n").unwrap();
        assert_eq!(fs::read_to_string(dir.join("logs").join("acctg.log.1")).unwrap(), "one\n");
        assert_eq!(fs::read_to_string(&path).unwrap(), "two\n");
        let _ = fs::remove_dir_all(&dir);
    }
}
