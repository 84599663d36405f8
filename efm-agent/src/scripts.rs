//! EFM script hooks: `script.fence`, `script.post.promotion`, ... run as separate processes,
//! with EFM's placeholders substituted, a timeout, captured output and a configurable user.
//!
//! # How a script runs
//!
//! * The property value is split on whitespace (as EFM does; there is no shell and no quoting):
//!   the first word is the program, which must be an absolute path, the others are its
//!   arguments. Placeholders are replaced inside every word (`--new=%p` works); `%%` is a
//!   literal `%`. Only the placeholders of the hook are replaced (see the table); any other
//!   `%x` is passed on unchanged. A placeholder whose value is unknown becomes an empty string,
//!   so positional arguments keep their positions.
//! * The program is executed directly (no shell), with stdin from `/dev/null`, in its own
//!   process group, in the directory `/`.
//! * By default it runs as the agent's user (root). With `run_as`, it runs as that user
//!   (supplementary groups, gid and uid set before `exec`; `HOME`, `USER`, `LOGNAME` set): EFM
//!   runs scripts as its `efm` user.
//! * At the timeout the whole process group gets SIGTERM, then SIGKILL after a grace period
//!   ([`ScriptRunner::with_kill_grace`]); the outcome says `timed_out`. A script that moved
//!   children into another session (`setsid`) is beyond reach.
//! * stdout and stderr are captured separately up to a cap each (64 KiB by default); the rest
//!   is read and dropped, and the outcome says it was truncated. When the script has exited
//!   but a background child still holds its output open, reading stops after a short grace.
//! * Everything is asynchronous (tokio): a running script never blocks the caller's loop.
//!   Dropping the future of [`ScriptRunner::run`] kills the process group.
//!
//! # Hooks, placeholders and exit codes (EFM guides 2.0 §3.2.1, 3.3 §3.5.1 and §7)
//!
//! | hook | property | placeholders | a non-zero exit (or a timeout) |
//! |---|---|---|---|
//! | [`Hook::Fence`] | `script.fence` | `%p` new primary, `%f` failed primary | aborts the promotion ("failover will not occur"), SEVERE notification |
//! | [`Hook::PostPromotion`] | `script.post.promotion` | `%p`, `%f` | no effect on the failover; reported in the "Post-promotion script failed" notification |
//! | [`Hook::DbFailure`] | `script.db.failure` | — | reported ("Post-database failure script failed") |
//! | [`Hook::PrimaryIsolated`] | `script.primary.isolated` (`script.master.isolated`) | — | reported ("Master isolation script failed") |
//! | [`Hook::Resumed`] | `script.resumed` | — | reported |
//! | [`Hook::RemotePrePromotion`] | `script.remote.pre.promotion` | `%p`, `%f` | reported; the promotion goes on |
//! | [`Hook::RemotePostPromotion`] | `script.remote.post.promotion` | `%p`, `%f` | reported |
//! | [`Hook::LoadBalancerAttach`] | `script.load.balancer.attach` | `%h` node address, `%t` node type | reported ("Load balancer attach script failed") |
//! | [`Hook::LoadBalancerDetach`] | `script.load.balancer.detach` | `%h`, `%t` | reported ("Load balancer detach script failed") |
//! | [`Hook::CustomMonitor`] | `script.custom.monitor` | — | a failure of the monitored node: on the primary a database failure (failover), on a standby the agent stops monitoring its database; with `custom.monitor.safe.mode=true` only reported ("Custom monitor 'safe mode' failure"); a timeout sends "Custom monitor timeout" |
//! | [`Hook::Notification`] | `script.notification` | `%s` subject, `%b` body | reported in the log only (a notification about a failing notification script would loop) |
//!
//! `script.notification` "will be passed two parameters: the message subject and the message
//! body" (EFM 3.3): when its command line uses neither `%s` nor `%b`, the subject and the body
//! are appended as two more arguments.

use std::{
    fmt,
    os::unix::process::ExitStatusExt,
    path::Path,
    process::Stdio,
    time::{Duration, Instant},
};

use rustix::process::{Pid, Signal};
use rustix::thread::{self, Gid, Uid};
use tokio::io::{AsyncRead, AsyncReadExt};

/// Output kept per stream by default.
pub const DEFAULT_OUTPUT_CAP: usize = 64 * 1024;
/// Time between SIGTERM and SIGKILL at a timeout, by default.
pub const DEFAULT_KILL_GRACE: Duration = Duration::from_secs(2);
/// How long output is still read after the script has exited (a background child may hold the
/// pipes open).
const OUTPUT_GRACE: Duration = Duration::from_millis(500);

/// One of EFM's script hooks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Hook {
    Fence,
    PostPromotion,
    DbFailure,
    PrimaryIsolated,
    Resumed,
    RemotePrePromotion,
    RemotePostPromotion,
    LoadBalancerAttach,
    LoadBalancerDetach,
    CustomMonitor,
    Notification,
}

/// What a hook's failure (non-zero exit, signal, timeout) means to the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailurePolicy {
    /// The promotion must not go on (`script.fence`).
    AbortPromotion,
    /// Reported (notification with the exit value and output), nothing else.
    Report,
    /// `script.custom.monitor`: a failure of the node, unless `custom.monitor.safe.mode`.
    CustomMonitor,
    /// Logged only (`script.notification`).
    LogOnly,
}

impl Hook {
    /// Every hook.
    pub const ALL: [Hook; 11] = [
        Hook::Fence,
        Hook::PostPromotion,
        Hook::DbFailure,
        Hook::PrimaryIsolated,
        Hook::Resumed,
        Hook::RemotePrePromotion,
        Hook::RemotePostPromotion,
        Hook::LoadBalancerAttach,
        Hook::LoadBalancerDetach,
        Hook::CustomMonitor,
        Hook::Notification,
    ];

    /// The property naming the script.
    #[must_use]
    pub fn property(self) -> &'static str {
        match self {
            Hook::Fence => "script.fence",
            Hook::PostPromotion => "script.post.promotion",
            Hook::DbFailure => "script.db.failure",
            Hook::PrimaryIsolated => "script.primary.isolated",
            Hook::Resumed => "script.resumed",
            Hook::RemotePrePromotion => "script.remote.pre.promotion",
            Hook::RemotePostPromotion => "script.remote.post.promotion",
            Hook::LoadBalancerAttach => "script.load.balancer.attach",
            Hook::LoadBalancerDetach => "script.load.balancer.detach",
            Hook::CustomMonitor => "script.custom.monitor",
            Hook::Notification => "script.notification",
        }
    }

    /// The placeholder letters replaced for this hook.
    #[must_use]
    pub fn placeholders(self) -> &'static [char] {
        match self {
            Hook::Fence | Hook::PostPromotion | Hook::RemotePrePromotion | Hook::RemotePostPromotion => &['p', 'f'],
            Hook::LoadBalancerAttach | Hook::LoadBalancerDetach => &['h', 't'],
            Hook::Notification => &['s', 'b'],
            Hook::DbFailure | Hook::PrimaryIsolated | Hook::Resumed | Hook::CustomMonitor => &[],
        }
    }

    /// What a failure of this hook means (see the module table).
    #[must_use]
    pub fn failure_policy(self) -> FailurePolicy {
        match self {
            Hook::Fence => FailurePolicy::AbortPromotion,
            Hook::CustomMonitor => FailurePolicy::CustomMonitor,
            Hook::Notification => FailurePolicy::LogOnly,
            _ => FailurePolicy::Report,
        }
    }

    /// The script's value in the configuration, if set.
    #[must_use]
    pub fn command_line(self, config: &crate::config::Config) -> Option<&str> {
        match self {
            Hook::Fence => config.script_fence.as_deref(),
            Hook::PostPromotion => config.script_post_promotion.as_deref(),
            Hook::DbFailure => config.script_db_failure.as_deref(),
            Hook::PrimaryIsolated => config.script_primary_isolated.as_deref(),
            Hook::Resumed => config.script_resumed.as_deref(),
            Hook::RemotePrePromotion => config.script_remote_pre_promotion.as_deref(),
            Hook::RemotePostPromotion => config.script_remote_post_promotion.as_deref(),
            Hook::LoadBalancerAttach => config.script_load_balancer_attach.as_deref(),
            Hook::LoadBalancerDetach => config.script_load_balancer_detach.as_deref(),
            Hook::CustomMonitor => config.script_custom_monitor.as_deref(),
            Hook::Notification => config.script_notification.as_deref(),
        }
    }
}

impl fmt::Display for Hook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.property())
    }
}

/// Values for the placeholders. Unset values substitute as empty strings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Substitutions {
    /// `%p`: the new (promoted) primary's address.
    pub new_primary: Option<String>,
    /// `%f`: the failed (old) primary's address.
    pub failed_primary: Option<String>,
    /// `%h`: the node attached to or detached from the load balancer.
    pub host: Option<String>,
    /// `%t`: that node's type (`p` primary, `s` standby).
    pub node_type: Option<String>,
    /// `%s`: the notification's subject.
    pub subject: Option<String>,
    /// `%b`: the notification's body.
    pub body: Option<String>,
}

impl Substitutions {
    fn value(&self, letter: char) -> Option<&str> {
        match letter {
            'p' => self.new_primary.as_deref(),
            'f' => self.failed_primary.as_deref(),
            'h' => self.host.as_deref(),
            't' => self.node_type.as_deref(),
            's' => self.subject.as_deref(),
            'b' => self.body.as_deref(),
            _ => None,
        }
    }
}

/// Why a script could not be run (a script that ran and failed is a [`ScriptOutcome`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScriptError {
    #[error("{hook}: the command line is empty")]
    Empty { hook: String },
    #[error("{hook}: {program:?} is not an absolute path (scripts are given with their full path)")]
    NotAbsolute { hook: String, program: String },
    #[error("{hook}: script {program} does not exist")]
    NotFound { hook: String, program: String },
    #[error("{hook}: script {program} is not an executable file")]
    NotExecutable { hook: String, program: String },
    #[error("{hook}: cannot run the script as {user:?}: {message}")]
    User { hook: String, user: String, message: String },
    #[error("{hook}: cannot start {program}: {message}")]
    Spawn { hook: String, program: String, message: String },
    #[error("{hook}: waiting for {program}: {message}")]
    Wait { hook: String, program: String, message: String },
}

/// How a script ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScriptOutcome {
    /// The argument vector run (program first), after substitution.
    pub argv: Vec<String>,
    /// The exit code; `None` when the process was ended by a signal.
    pub exit: Option<i32>,
    /// The signal that ended the process, if any.
    pub signal: Option<i32>,
    /// The timeout expired and the process group was killed.
    pub timed_out: bool,
    /// Captured standard output (lossy UTF-8), at most the cap.
    pub stdout: String,
    /// Captured standard error (lossy UTF-8), at most the cap.
    pub stderr: String,
    /// More standard output was produced than kept.
    pub stdout_truncated: bool,
    /// More standard error was produced than kept.
    pub stderr_truncated: bool,
    /// From start to the end of the process.
    pub duration: Duration,
}

impl ScriptOutcome {
    /// Exit code 0 within the timeout.
    #[must_use]
    pub fn success(&self) -> bool {
        !self.timed_out && self.exit == Some(0)
    }

    /// "exit code 3", "killed by signal 9", "timed out after 5s (killed)".
    #[must_use]
    pub fn status_text(&self) -> String {
        if self.timed_out {
            format!("timed out after {:.1}s (killed)", self.duration.as_secs_f64())
        } else if let Some(c) = self.exit {
            format!("exit code {c}")
        } else if let Some(s) = self.signal {
            format!("killed by signal {s}")
        } else {
            "ended".to_owned()
        }
    }

    /// The text EFM puts into a failure notification: `Exit Value:` and `Results:` (stdout,
    /// then stderr).
    #[must_use]
    pub fn report(&self) -> String {
        let exit = self.exit.map_or_else(|| self.status_text(), |c| c.to_string());
        format!("Exit Value: {exit}\nResults: {}", self.output_text())
    }

    /// Standard output then standard error, trimmed, with a note where either was cut at the
    /// cap.
    #[must_use]
    pub fn output_text(&self) -> String {
        let mut results = self.stdout.trim_end().to_owned();
        if self.stdout_truncated {
            results.push_str("\n[output truncated]");
        }
        let err = self.stderr.trim_end();
        if !err.is_empty() {
            if !results.is_empty() {
                results.push('\n');
            }
            results.push_str(err);
            if self.stderr_truncated {
                results.push_str("\n[error output truncated]");
            }
        }
        results
    }
}

/// Splits `command_line` on whitespace and substitutes the hook's placeholders (see the module
/// documentation). The program must be an absolute path.
pub fn substitute(hook: Hook, command_line: &str, subst: &Substitutions) -> Result<Vec<String>, ScriptError> {
    let allowed = hook.placeholders();
    let mut used = false;
    let mut argv: Vec<String> = command_line
        .split_whitespace()
        .map(|word| {
            let mut out = String::with_capacity(word.len());
            let mut chars = word.chars();
            while let Some(c) = chars.next() {
                if c != '%' {
                    out.push(c);
                    continue;
                }
                match chars.next() {
                    Some('%') | None => out.push('%'),
                    Some(l) if allowed.contains(&l) => {
                        used = true;
                        out.push_str(subst.value(l).unwrap_or(""));
                    }
                    Some(l) => {
                        out.push('%');
                        out.push(l);
                    }
                }
            }
            out
        })
        .collect();
    let Some(program) = argv.first() else {
        return Err(ScriptError::Empty { hook: hook.to_string() });
    };
    if !program.starts_with('/') {
        return Err(ScriptError::NotAbsolute { hook: hook.to_string(), program: program.clone() });
    }
    if hook == Hook::Notification && !used {
        argv.push(subst.subject.clone().unwrap_or_default());
        argv.push(subst.body.clone().unwrap_or_default());
    }
    Ok(argv)
}

pub use crate::users::{lookup_user, UserIds};

/// Options of one run (see [`run_argv`]).
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub timeout: Duration,
    /// Run as this user instead of the agent's.
    pub run_as: Option<UserIds>,
    pub output_cap: usize,
    pub kill_grace: Duration,
    /// Name used in errors (the hook's property, or what the command is for).
    pub what: String,
}

/// Kills the process group when dropped while armed (the caller's future was dropped).
struct GroupGuard {
    pgid: Option<i32>,
}

impl GroupGuard {
    fn signal(&self, sig: Signal) {
        if let Some(p) = self.pgid.and_then(Pid::from_raw) {
            // The group may be gone already; nothing to do then.
            let _ = rustix::process::kill_process_group(p, sig);
        }
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        self.signal(Signal::KILL);
    }
}

/// Reads a stream to its end, keeping at most `cap` bytes.
async fn read_capped<R: AsyncRead + Unpin>(mut r: R, cap: usize) -> (Vec<u8>, bool) {
    let mut kept = Vec::new();
    let mut truncated = false;
    let mut buf = [0u8; 8192];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let room = cap.saturating_sub(kept.len());
                if n > room {
                    truncated = true;
                }
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
    (kept, truncated)
}

/// Result of a reader task, or nothing when it did not finish in time.
async fn collect(h: Option<tokio::task::JoinHandle<(Vec<u8>, bool)>>, until: tokio::time::Instant) -> (String, bool) {
    let Some(mut h) = h else {
        return (String::new(), false);
    };
    if let Ok(Ok((bytes, trunc))) = tokio::time::timeout_at(until, &mut h).await {
        (String::from_utf8_lossy(&bytes).into_owned(), trunc)
    } else {
        h.abort();
        (String::new(), true)
    }
}

/// Checks that an absolute `program` exists and is an executable file.
fn check_program(program: &str, what: &str) -> Result<(), ScriptError> {
    use std::os::unix::fs::PermissionsExt;
    let path = Path::new(program);
    if !path.is_absolute() {
        return Ok(());
    }
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Err(ScriptError::NotFound { hook: what.to_owned(), program: program.to_owned() })
        }
        Err(e) => {
            Err(ScriptError::Spawn { hook: what.to_owned(), program: program.to_owned(), message: e.to_string() })
        }
        Ok(m) if !m.is_file() || m.permissions().mode() & 0o111 == 0 => {
            Err(ScriptError::NotExecutable { hook: what.to_owned(), program: program.to_owned() })
        }
        Ok(_) => Ok(()),
    }
}

/// The command for `argv`: own process group, stdin `/dev/null`, output piped, cwd `/`, and
/// the user switched before `exec` when `run_as` is set.
fn build_command(argv: &[String], run_as: Option<&UserIds>) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .current_dir("/")
        .process_group(0);
    if let Some(u) = run_as {
        cmd.env("HOME", &u.home).env("USER", &u.name).env("LOGNAME", &u.name);
        let (uid, gid) = (Uid::from_raw(u.uid), Gid::from_raw(u.gid));
        let groups: Vec<Gid> = u.groups.iter().copied().map(Gid::from_raw).collect();
        // SAFETY (`pre_exec` runs in the forked child, where only async-signal-safe calls are
        // allowed): the closure makes three raw system calls (rustix's linux_raw backend: no libc
        // locks, no allocation) on data prepared before the fork. They change the credentials
        // of the calling thread only, which in the child is the whole process: it has one thread.
        unsafe {
            cmd.pre_exec(move || {
                thread::set_thread_groups(&groups)?;
                thread::set_thread_gid(gid)?;
                thread::set_thread_uid(uid)?;
                Ok(())
            });
        }
    }
    cmd
}

fn spawn_error(e: &std::io::Error, program: &str, opts: &RunOptions) -> ScriptError {
    let hook = opts.what.clone();
    let program = program.to_owned();
    match (e.kind(), &opts.run_as) {
        (std::io::ErrorKind::NotFound, _) => ScriptError::NotFound { hook, program },
        (std::io::ErrorKind::PermissionDenied, Some(u)) => {
            ScriptError::User { hook, user: u.name.clone(), message: format!("{program}: {e}") }
        }
        (std::io::ErrorKind::PermissionDenied, None) => ScriptError::NotExecutable { hook, program },
        _ => ScriptError::Spawn { hook, program, message: e.to_string() },
    }
}

/// Runs `argv` (program first, absolute path) with the options: own process group, stdin
/// `/dev/null`, cwd `/`, output captured, process group killed at the timeout.
pub async fn run_argv(argv: &[String], opts: &RunOptions) -> Result<ScriptOutcome, ScriptError> {
    let what = || opts.what.clone();
    let Some(program) = argv.first() else {
        return Err(ScriptError::Empty { hook: what() });
    };
    check_program(program, &opts.what)?;
    let mut cmd = build_command(argv, opts.run_as.as_ref());
    let start = Instant::now();
    let mut child = cmd.spawn().map_err(|e| spawn_error(&e, program, opts))?;
    let guard = GroupGuard { pgid: child.id().and_then(|p| i32::try_from(p).ok()) };
    let cap = opts.output_cap;
    let out_task = child.stdout.take().map(|s| tokio::spawn(read_capped(s, cap)));
    let err_task = child.stderr.take().map(|s| tokio::spawn(read_capped(s, cap)));

    let wait_err =
        |e: std::io::Error| ScriptError::Wait { hook: what(), program: program.clone(), message: e.to_string() };
    let mut timed_out = false;
    let status = if let Ok(r) = tokio::time::timeout(opts.timeout, child.wait()).await {
        r.map_err(wait_err)?
    } else {
        timed_out = true;
        tracing::warn!(script = %program, what = %opts.what, timeout = ?opts.timeout,
            "script timed out; terminating its process group");
        guard.signal(Signal::TERM);
        if let Ok(r) = tokio::time::timeout(opts.kill_grace, child.wait()).await {
            // The leader is gone; make sure the rest of the group is too.
            guard.signal(Signal::KILL);
            r.map_err(wait_err)?
        } else {
            guard.signal(Signal::KILL);
            child.wait().await.map_err(wait_err)?
        }
    };
    let duration = start.elapsed();
    let until = tokio::time::Instant::now() + OUTPUT_GRACE;
    let (stdout, stdout_truncated) = collect(out_task, until).await;
    let (stderr, stderr_truncated) = collect(err_task, until).await;
    // Finished normally: background children of the script are left alone.
    let mut guard = guard;
    if !timed_out {
        guard.pgid = None;
    }
    drop(guard);
    Ok(ScriptOutcome {
        argv: argv.to_vec(),
        exit: status.code(),
        signal: status.signal(),
        timed_out,
        stdout,
        stderr,
        stdout_truncated,
        stderr_truncated,
        duration,
    })
}

/// Runs EFM script hooks (see the module documentation).
#[derive(Debug, Clone)]
pub struct ScriptRunner {
    output_cap: usize,
    kill_grace: Duration,
}

impl Default for ScriptRunner {
    fn default() -> Self {
        Self::new()
    }
}

impl ScriptRunner {
    /// A runner keeping 64 KiB of each output stream, with 2 s between SIGTERM and SIGKILL.
    #[must_use]
    pub fn new() -> Self {
        Self { output_cap: DEFAULT_OUTPUT_CAP, kill_grace: DEFAULT_KILL_GRACE }
    }

    /// Keeps at most `bytes` of stdout and of stderr.
    #[must_use]
    pub fn with_output_cap(mut self, bytes: usize) -> Self {
        self.output_cap = bytes;
        self
    }

    /// Time between SIGTERM and SIGKILL at a timeout.
    #[must_use]
    pub fn with_kill_grace(mut self, grace: Duration) -> Self {
        self.kill_grace = grace;
        self
    }

    /// Runs `command_line` for `hook` with the placeholders substituted, killed after
    /// `timeout`, as `run_as` when given (else as the agent's user). The outcome is logged.
    pub async fn run(
        &self,
        hook: Hook,
        command_line: &str,
        subst: &Substitutions,
        timeout: Duration,
        run_as: Option<&str>,
    ) -> Result<ScriptOutcome, ScriptError> {
        let argv = substitute(hook, command_line, subst)?;
        let run_as = match run_as {
            None => None,
            Some(name) => Some(lookup_user(name).map_err(|message| ScriptError::User {
                hook: hook.to_string(),
                user: name.to_owned(),
                message,
            })?),
        };
        let opts = RunOptions {
            timeout,
            run_as,
            output_cap: self.output_cap,
            kill_grace: self.kill_grace,
            what: hook.to_string(),
        };
        tracing::info!(hook = %hook, argv = ?argv, "running script");
        let outcome = run_argv(&argv, &opts).await;
        match &outcome {
            Ok(o) if o.success() => {
                tracing::info!(hook = %hook, took = ?o.duration, "script succeeded");
            }
            Ok(o) => {
                tracing::warn!(hook = %hook, status = %o.status_text(), stdout = %o.stdout.trim_end(),
                    stderr = %o.stderr.trim_end(), "script failed");
            }
            Err(e) => tracing::warn!(hook = %hook, error = %e, "script could not run"),
        }
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s() -> Substitutions {
        Substitutions {
            new_primary: Some("198.18.0.2".into()),
            failed_primary: Some("198.18.0.1".into()),
            host: Some("198.18.0.3".into()),
            node_type: Some("s".into()),
            subject: Some("Failover has completed".into()),
            body: Some("line 1\nline 2".into()),
        }
    }

    #[test]
    fn fence_placeholders() {
        let a = substitute(Hook::Fence, "/bin/fence  %p\t%f --x=%p:%% %h", &s()).unwrap();
        assert_eq!(a, ["/bin/fence", "198.18.0.2", "198.18.0.1", "--x=198.18.0.2:%", "%h"]);
    }

    #[test]
    fn missing_value_keeps_position() {
        let a = substitute(Hook::PostPromotion, "/x %f %p", &Substitutions::default()).unwrap();
        assert_eq!(a, ["/x", "", ""]);
    }

    #[test]
    fn load_balancer_placeholders() {
        let a = substitute(Hook::LoadBalancerDetach, "/lb %h %t %p 100%", &s()).unwrap();
        assert_eq!(a, ["/lb", "198.18.0.3", "s", "%p", "100%"]);
    }

    #[test]
    fn notification_gets_subject_and_body() {
        let a = substitute(Hook::Notification, "/notify --to ops", &s()).unwrap();
        assert_eq!(a, ["/notify", "--to", "ops", "Failover has completed", "line 1\nline 2"]);
        let b = substitute(Hook::Notification, "/notify %b", &s()).unwrap();
        assert_eq!(b, ["/notify", "line 1\nline 2"]);
    }

    #[test]
    fn program_must_be_absolute() {
        assert!(matches!(substitute(Hook::Fence, "fence.sh %p", &s()), Err(ScriptError::NotAbsolute { .. })));
        assert!(matches!(substitute(Hook::Fence, "   ", &s()), Err(ScriptError::Empty { .. })));
    }

    #[test]
    fn every_hook_has_a_property_and_policy() {
        let props: std::collections::HashSet<_> = Hook::ALL.iter().map(|h| h.property()).collect();
        assert_eq!(props.len(), Hook::ALL.len());
        assert_eq!(Hook::Fence.failure_policy(), FailurePolicy::AbortPromotion);
        assert_eq!(Hook::PostPromotion.failure_policy(), FailurePolicy::Report);
    }

    #[test]
    fn report_text() {
        let o = ScriptOutcome {
            argv: vec!["/x".into()],
            exit: Some(3),
            signal: None,
            timed_out: false,
            stdout: "out\n".into(),
            stderr: "err\n".into(),
            stdout_truncated: false,
            stderr_truncated: false,
            duration: Duration::from_millis(5),
        };
        assert!(!o.success());
        assert_eq!(o.report(), "Exit Value: 3\nResults: out\nerr");
        assert_eq!(o.status_text(), "exit code 3");
    }

    #[tokio::test]
    async fn runs_and_captures() {
        let r = ScriptRunner::new().with_output_cap(10);
        let o = r
            .run(
                Hook::Resumed,
                "/bin/sh -c echo${IFS}hello-world-long;echo${IFS}e>&2;exit${IFS}4",
                &Substitutions::default(),
                Duration::from_secs(10),
                None,
            )
            .await
            .unwrap();
        assert_eq!(o.exit, Some(4));
        assert_eq!(o.stdout, "hello-worl");
        assert!(o.stdout_truncated);
        assert_eq!(o.stderr, "e\n");
    }

    #[tokio::test]
    async fn missing_script() {
        let e = ScriptRunner::new()
            .run(Hook::Fence, "/nonexistent/fence.sh %p", &s(), Duration::from_secs(1), None)
            .await
            .unwrap_err();
        assert_eq!(e.to_string(), "script.fence: script /nonexistent/fence.sh does not exist");
    }
}
