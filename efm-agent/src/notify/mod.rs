//! Notifications: EFM's catalog of events ([`Event`]), rendered with EFM's subjects and body
//! header, always logged, and — from `notification.level` up — delivered to
//! `script.notification` and by SMTP to `user.email`.
//!
//! # Shape of a notification
//!
//! * Subject: the event's EFM subject ([`Event::subject`]), after `notification.text.prefix`
//!   and a space when the prefix is set.
//! * Body: a header naming the node, the cluster, the database and the VIP (`DISABLED` without
//!   `virtual.ip`), a blank line, the description, and for script events a blank line and the
//!   script's `Exit Value:` and `Results:`.
//!
//! # Delivery
//!
//! [`Notifier::send`] renders and logs at once (tracing: INFO → `info`, WARNING → `warn`,
//! SEVERE → `error`, fields `severity`, `subject`, `detail`), and hands the notification to two
//! delivery lanes, one for the script and one for mail, each a task with a bounded queue. It
//! never waits: when a lane's queue is full the notification is dropped for that lane and a
//! warning with the count of drops is logged (the notification itself is in the log already).
//! The lanes are independent: a script that hangs until `script.notification.timeout` does not
//! delay mail, and a mail server that does not answer (each mail is bounded by `smtp.timeout`:
//! connecting plus the whole SMTP exchange) does not delay the script. A failing notification
//! script or mail is only logged — notifying about it would loop.
//!
//! Mail goes as one message to every `user.email` address, from `from.email` (`%h` becomes the
//! host name), through `smtp.server:smtp.port` (default `127.0.0.1:25`, EFM's local relay),
//! optionally with STARTTLS or TLS (native-tls) and a login.
//!
//! [`Notifier::flush`] waits until everything sent before it has been delivered (or has failed):
//! for tests and for an orderly stop. [`Notifier::stats`] counts what happened.

mod catalog;
pub mod local;
#[cfg(test)]
mod tests;

use std::{
    net::IpAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use lettre::{
    message::{header::ContentType, Mailbox},
    transport::smtp::{
        authentication::Credentials,
        client::{Tls, TlsParameters},
        extension::ClientId,
    },
    AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor,
};
use tokio::sync::{mpsc, oneshot};

pub use self::catalog::{Event, NodeRole, ScriptResult};
use crate::config::{Config, NotificationLevel, SmtpTls};
use crate::scripts::{Hook, ScriptRunner, Substitutions};

/// Notification severity (EFM's levels).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Info,
    Warning,
    Severe,
}

/// Notifications a lane holds before new ones are dropped.
pub const QUEUE_CAPACITY: usize = 64;

/// Why a mail could not be sent.
#[derive(Debug, thiserror::Error)]
pub enum MailError {
    #[error("{property}: {value:?} is not a usable mail address: {source}")]
    Address { property: &'static str, value: String, source: lettre::address::AddressError },
    #[error("smtp.tls: cannot set up TLS for {server}: {source}")]
    Tls { server: String, source: lettre::transport::smtp::Error },
    #[error("building the message: {0}")]
    Build(#[from] lettre::error::Error),
    #[error("sending through {server}:{port}: {source}")]
    Send { server: String, port: u16, source: lettre::transport::smtp::Error },
    #[error("sending through {server}:{port}: no answer within smtp.timeout ({timeout:?})")]
    Timeout { server: String, port: u16, timeout: Duration },
}

/// Whether a notification of `severity` passes `notification.level`.
#[must_use]
pub fn passes(level: NotificationLevel, severity: Severity) -> bool {
    let threshold = match level {
        NotificationLevel::Info => Severity::Info,
        NotificationLevel::Warning => Severity::Warning,
        NotificationLevel::Severe => Severity::Severe,
    };
    severity >= threshold
}

/// EFM's name of a severity.
#[must_use]
pub fn severity_name(severity: Severity) -> &'static str {
    match severity {
        Severity::Info => "INFO",
        Severity::Warning => "WARNING",
        Severity::Severe => "SEVERE",
    }
}

/// What the body header says about this node (taken from the configuration once).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Context {
    /// This node's address: `external.address` when set, else the IP of `bind.address`.
    pub node: String,
    pub cluster: String,
    pub database: String,
    pub vip: Option<IpAddr>,
    /// `notification.text.prefix`.
    pub prefix: Option<String>,
}

impl Context {
    #[must_use]
    pub fn from_config(cfg: &Config) -> Self {
        Self {
            node: cfg.external_address.clone().unwrap_or_else(|| cfg.bind_address.ip().to_string()),
            cluster: cfg.cluster.clone(),
            database: cfg.db_database.clone(),
            vip: cfg.virtual_ip,
            prefix: cfg.notification_text_prefix.clone(),
        }
    }

    /// The header block of every body.
    #[must_use]
    pub fn header(&self) -> String {
        let vip = self.vip.map_or_else(|| "DISABLED".to_owned(), |v| v.to_string());
        format!(
            "EFM node:      {}\nCluster name:  {}\nDatabase name: {}\nVIP support:   {vip}\n",
            self.node, self.cluster, self.database
        )
    }
}

/// A rendered notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    pub severity: Severity,
    /// With the prefix.
    pub subject: String,
    /// Description plus details, without the header (for the log).
    pub detail: String,
    /// Header, blank line, description, details.
    pub body: String,
}

impl Notification {
    #[must_use]
    pub fn render(event: &Event, ctx: &Context) -> Self {
        let mut subject = event.subject(&ctx.cluster, &ctx.node);
        if let Some(p) = ctx.prefix.as_deref().map(str::trim).filter(|p| !p.is_empty()) {
            subject = format!("{p} {subject}");
        }
        let mut detail = event.description(&ctx.cluster, &ctx.node);
        if let Some(d) = event.details() {
            detail.push_str("\n\n");
            detail.push_str(&d);
        }
        let body = format!("{}\n{detail}\n", ctx.header());
        Self { severity: event.severity(), subject, detail, body }
    }

    /// Writes the notification to the log, at the level matching its severity.
    pub fn log(&self) {
        let severity = severity_name(self.severity);
        let (subject, detail) = (self.subject.as_str(), self.detail.as_str());
        match self.severity {
            Severity::Info => tracing::info!(severity, subject, detail, "notification"),
            Severity::Warning => tracing::warn!(severity, subject, detail, "notification"),
            Severity::Severe => tracing::error!(severity, subject, detail, "notification"),
        }
    }
}

/// Counts of a [`Notifier`]'s work since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Notifications given to [`Notifier::send`] (all are logged).
    pub sent: u64,
    /// Below `notification.level`: logged only.
    pub filtered: u64,
    /// Dropped because a lane's queue was full (or its task had ended), per lane.
    pub dropped: u64,
    pub scripts_ok: u64,
    pub scripts_failed: u64,
    pub mails_ok: u64,
    pub mails_failed: u64,
}

#[derive(Debug, Default)]
struct Counters {
    sent: AtomicU64,
    filtered: AtomicU64,
    dropped: AtomicU64,
    scripts_ok: AtomicU64,
    scripts_failed: AtomicU64,
    mails_ok: AtomicU64,
    mails_failed: AtomicU64,
}

fn bump(c: &AtomicU64) -> u64 {
    c.fetch_add(1, Ordering::Relaxed) + 1
}

/// How `script.notification` is run.
#[derive(Debug, Clone)]
struct ScriptLane {
    command_line: String,
    timeout: Duration,
    /// `script.user`.
    run_as: Option<String>,
}

impl ScriptLane {
    async fn deliver(&self, n: &Notification) -> bool {
        let subst =
            Substitutions { subject: Some(n.subject.clone()), body: Some(n.body.clone()), ..Substitutions::default() };
        // The runner logs the outcome; a failing notification script is only logged.
        ScriptRunner::new()
            .run(Hook::Notification, &self.command_line, &subst, self.timeout, self.run_as.as_deref())
            .await
            .is_ok_and(|o| o.success())
    }
}

/// The SMTP side: transport, sender and recipients, prepared once.
#[derive(Clone)]
struct Mailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    server: String,
    port: u16,
    timeout: Duration,
    from: Mailbox,
    to: Vec<Mailbox>,
    /// For the `Message-ID` domain.
    host: String,
}

/// This host's name, for `%h` in `from.email` and the SMTP greeting.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

impl Mailer {
    /// `None` when `user.email` is empty.
    fn from_config(cfg: &Config) -> Result<Option<Self>, MailError> {
        if cfg.user_email.is_empty() {
            return Ok(None);
        }
        let host = host_name();
        let from_text = cfg.from_email.as_deref().unwrap_or("efm@%h").replace("%h", &host);
        let from: Mailbox = from_text.parse().map_err(|source| MailError::Address {
            property: "from.email",
            value: from_text.clone(),
            source,
        })?;
        let to = cfg
            .user_email
            .iter()
            .map(|a| {
                a.parse::<Mailbox>().map_err(|source| MailError::Address {
                    property: "user.email",
                    value: a.clone(),
                    source,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let server = cfg.smtp_server.clone();
        let tls_params =
            || TlsParameters::new(server.clone()).map_err(|source| MailError::Tls { server: server.clone(), source });
        let tls = match cfg.smtp_tls {
            SmtpTls::None => Tls::None,
            SmtpTls::StartTls => Tls::Required(tls_params()?),
            SmtpTls::Tls => Tls::Wrapper(tls_params()?),
        };
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(server.clone())
            .port(cfg.smtp_port)
            .tls(tls)
            // lettre bounds only the connect with this; the whole exchange is bounded in `send`.
            .timeout(Some(cfg.smtp_timeout))
            .hello_name(ClientId::Domain(host.clone()));
        if let Some(user) = &cfg.smtp_username {
            let password = cfg.smtp_password.as_ref().map(|p| p.0.clone()).unwrap_or_default();
            builder = builder.credentials(Credentials::new(user.clone(), password));
        }
        Ok(Some(Self {
            transport: builder.build(),
            server,
            port: cfg.smtp_port,
            timeout: cfg.smtp_timeout,
            from,
            to,
            host,
        }))
    }

    async fn send(&self, n: &Notification) -> Result<(), MailError> {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let id = format!("<efm.{nanos}.{}.{}@{}>", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed), self.host);
        let mut b = Message::builder()
            .message_id(Some(id))
            .from(self.from.clone())
            .subject(n.subject.clone())
            .header(ContentType::TEXT_PLAIN);
        for to in &self.to {
            b = b.to(to.clone());
        }
        let message = b.body(n.body.clone())?;
        match tokio::time::timeout(self.timeout, self.transport.send(message)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(source)) => Err(MailError::Send { server: self.server.clone(), port: self.port, source }),
            Err(_) => Err(MailError::Timeout { server: self.server.clone(), port: self.port, timeout: self.timeout }),
        }
    }

    async fn deliver(&self, n: &Notification) -> bool {
        match self.send(n).await {
            Ok(()) => {
                tracing::info!(subject = %n.subject, to = self.to.len(), "notification mailed");
                true
            }
            Err(e) => {
                tracing::warn!(subject = %n.subject, error = %e, "notification mail not sent");
                false
            }
        }
    }
}

enum Job {
    Deliver(Arc<Notification>),
    Flush(oneshot::Sender<()>),
}

/// Runs `deliver` for each queued notification, in order, until every sender is gone.
async fn lane<F, Fut>(mut rx: mpsc::Receiver<Job>, deliver: F)
where
    F: Fn(Arc<Notification>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    while let Some(job) = rx.recv().await {
        match job {
            Job::Deliver(n) => deliver(n).await,
            Job::Flush(done) => {
                let _ = done.send(());
            }
        }
    }
}

struct Inner {
    ctx: Context,
    level: NotificationLevel,
    script: Option<mpsc::Sender<Job>>,
    mail: Option<mpsc::Sender<Job>>,
    counters: Arc<Counters>,
}

/// The notification service of an agent: cheap to clone, [`Notifier::send`] never blocks.
#[derive(Clone)]
pub struct Notifier {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Notifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notifier")
            .field("ctx", &self.inner.ctx)
            .field("level", &self.inner.level)
            .field("script", &self.inner.script.is_some())
            .field("mail", &self.inner.mail.is_some())
            .finish_non_exhaustive()
    }
}

impl Notifier {
    /// Starts the delivery lanes on the current tokio runtime (a lane only for what is
    /// configured: `script.notification`, `user.email`). A mail setup that cannot work (an
    /// address lettre refuses, TLS that cannot be set up) is logged as an error and mail is
    /// off; notifications are still logged and given to the script.
    ///
    /// With neither `script.notification` nor `user.email` set, no task is spawned (the
    /// notifier only logs), so that configuration works outside a runtime too.
    ///
    /// # Panics
    /// Outside a tokio runtime when a lane is configured.
    #[must_use]
    pub fn start(cfg: &Config) -> Self {
        let counters = Arc::new(Counters::default());
        let script = cfg.script_notification.clone().map(|command_line| {
            let lane_cfg =
                ScriptLane { command_line, timeout: cfg.script_notification_timeout, run_as: cfg.script_user.clone() };
            let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
            let c = counters.clone();
            tokio::spawn(lane(rx, move |n| {
                let (lane_cfg, c) = (lane_cfg.clone(), c.clone());
                async move {
                    if lane_cfg.deliver(&n).await {
                        bump(&c.scripts_ok);
                    } else {
                        bump(&c.scripts_failed);
                    }
                }
            }));
            tx
        });
        let mail = match Mailer::from_config(cfg) {
            Ok(m) => m,
            Err(e) => {
                tracing::error!(error = %e, "notification mail is off");
                None
            }
        };
        let mail = mail.map(|mailer| {
            let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
            let c = counters.clone();
            tokio::spawn(lane(rx, move |n| {
                let (mailer, c) = (mailer.clone(), c.clone());
                async move {
                    if mailer.deliver(&n).await {
                        bump(&c.mails_ok);
                    } else {
                        bump(&c.mails_failed);
                    }
                }
            }));
            tx
        });
        Self {
            inner: Arc::new(Inner {
                ctx: Context::from_config(cfg),
                level: cfg.notification_level,
                script,
                mail,
                counters,
            }),
        }
    }

    /// Logs the event and queues its delivery when it passes `notification.level`. Returns at
    /// once; delivery happens on the lanes.
    #[expect(
        clippy::needless_pass_by_value,
        reason = "callers hand the event over; taking a reference would only add `&` at every call"
    )]
    pub fn send(&self, event: Event) {
        let inner = &self.inner;
        let n = Notification::render(&event, &inner.ctx);
        n.log();
        bump(&inner.counters.sent);
        if !passes(inner.level, n.severity) {
            bump(&inner.counters.filtered);
            return;
        }
        let n = Arc::new(n);
        for (lane, tx) in [("script", &inner.script), ("mail", &inner.mail)] {
            let Some(tx) = tx else { continue };
            if tx.try_send(Job::Deliver(n.clone())).is_err() {
                let dropped = bump(&inner.counters.dropped);
                tracing::warn!(lane, subject = %n.subject, dropped,
                    "notification queue full: this notification is only logged");
            }
        }
    }

    /// Waits until every notification sent before this call has been delivered or has failed.
    pub async fn flush(&self) {
        let mut waits = Vec::new();
        for tx in [&self.inner.script, &self.inner.mail].into_iter().flatten() {
            let (done, wait) = oneshot::channel();
            if tx.send(Job::Flush(done)).await.is_ok() {
                waits.push(wait);
            }
        }
        for w in waits {
            let _ = w.await;
        }
    }

    /// What the notifier has done so far.
    #[must_use]
    pub fn stats(&self) -> Stats {
        let c = &self.inner.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Stats {
            sent: get(&c.sent),
            filtered: get(&c.filtered),
            dropped: get(&c.dropped),
            scripts_ok: get(&c.scripts_ok),
            scripts_failed: get(&c.scripts_failed),
            mails_ok: get(&c.mails_ok),
            mails_failed: get(&c.mails_failed),
        }
    }
}

/// Logs `event` and delivers it now (script and mail concurrently), without a [`Notifier`]:
/// for callers that have only the configuration (`ha::runtime::notify`). Awaits delivery.
pub async fn deliver_now(cfg: &Config, event: &Event) {
    let n = Notification::render(event, &Context::from_config(cfg));
    n.log();
    if !passes(cfg.notification_level, n.severity) {
        return;
    }
    let script = async {
        if let Some(command_line) = cfg.script_notification.clone() {
            ScriptLane { command_line, timeout: cfg.script_notification_timeout, run_as: cfg.script_user.clone() }
                .deliver(&n)
                .await;
        }
    };
    let mail = async {
        match Mailer::from_config(cfg) {
            Ok(Some(m)) => {
                m.deliver(&n).await;
            }
            Ok(None) => {}
            Err(e) => tracing::error!(error = %e, "notification mail is off"),
        }
    };
    tokio::join!(script, mail);
}

/// The agent's notifier, installed once at start-up ([`install`]); one agent per process.
static GLOBAL: std::sync::OnceLock<Notifier> = std::sync::OnceLock::new();

/// Installs the process's notifier (the first call wins).
pub fn install(notifier: Notifier) {
    let _ = GLOBAL.set(notifier);
}

/// Sends `event` through the installed notifier; without one (tools, unit tests) it is only
/// logged. Never blocks.
pub fn emit(cfg: &Config, event: Event) {
    match GLOBAL.get() {
        Some(n) => n.send(event),
        None => Notification::render(&event, &Context::from_config(cfg)).log(),
    }
}
