//! Catalog golden list, level filtering, body layout, prefix, and the script lane.

use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use super::*;
use crate::scripts::Hook;

const BASE: &str = "db.user=efm\ndb.port=5444\ndb.database=edb\ndb.service.owner=postgres\n\
db.data.dir=/var/lib/pg\nbind.address=10.0.1.11:7800\n";

fn config(extra: &str) -> Config {
    crate::config::from_properties(
        &format!("{BASE}{extra}\n"),
        Path::new("/etc/efm/acctg.properties"),
        "acctg",
        Vec::new(),
    )
    .unwrap_or_else(|e| panic!("{e}"))
    .config
}

fn r() -> ScriptResult {
    ScriptResult { script: "/usr/local/bin/x.sh".into(), exit: "3".into(), output: "boom".into() }
}

fn s(a: &str) -> String {
    a.to_owned()
}

/// One event of every variant, in catalog order.
fn every_event() -> Vec<Event> {
    use Event as E;
    vec![
        E::FencingScriptExecuted { result: r() },
        E::PostPromotionScriptExecuted { result: r() },
        E::DbFailureScriptExecuted { result: r() },
        E::PrimaryIsolationScriptExecuted { result: r() },
        E::RemotePrePromotionScriptExecuted { result: r() },
        E::RemotePostPromotionScriptExecuted { result: r() },
        E::ResumedScriptExecuted { result: r() },
        E::LoadBalancerAttachScriptExecuted { result: r() },
        E::LoadBalancerDetachScriptExecuted { result: r() },
        E::WitnessAgentRunning,
        E::PrimaryAgentRunning,
        E::StandbyAgentRunning,
        E::IdleAgentRunning,
        E::AssigningVip { vip: s("10.0.1.100") },
        E::ReleasingVip { vip: s("10.0.1.100") },
        E::WitnessAgentExited,
        E::PrimaryAgentExited,
        E::PrimaryLeft { node: s("10.0.1.10") },
        E::StandbyAgentExited,
        E::AgentExitedDuringPromotion,
        E::AgentExited,
        E::AgentExitedEarly { reason: s("no key") },
        E::AutoResumeCheckStarted { period_secs: 30 },
        E::Resumed,
        E::SwitchoverCompleted { old_primary: s("10.0.1.10"), new_primary: s("10.0.1.12") },
        E::VipOnNonPrimary { vip: s("10.0.1.100") },
        E::NoStandbyAgent,
        E::StandbyAgentFailed { node: s("10.0.1.12") },
        E::StandbyDatabaseFailed { node: s("10.0.1.12") },
        E::StandbyCannotReachDatabase { node: s("10.0.1.12") },
        E::BelowThreeNodes { nodes: 2 },
        E::SubsetDisconnected { visible: vec![s("10.0.1.12")] },
        E::PromotionStarted { candidate: s("10.0.1.12") },
        E::WitnessFailure { node: s("10.0.1.13") },
        E::IdleAgentFailure { node: s("10.0.1.14") },
        E::NodesIsolated { visible: vec![] },
        E::NoLongerIsolated,
        E::PromotionRefusedPrimaryRunning { primary: s("10.0.1.10") },
        E::PromotionRefusedPrimaryUnverified { primary: s("10.0.1.10") },
        E::PromotionRefusedVipAssigned { vip: s("10.0.1.100") },
        E::PromotionRefusedOrphaned { server: s("10.0.1.1") },
        E::FailoverNotOccurred { reason: s("no standby") },
        E::ManualFailoverRequired { primary: s("10.0.1.10"), reason: s("node unreachable") },
        E::FailoverCompleted { old_primary: Some(s("10.0.1.10")), new_primary: s("10.0.1.12") },
        E::LockFileRemoved { path: s("/var/lock/efm/acctg.lock") },
        E::RecoveryConfFound { path: s("/var/lib/pg/standby.signal") },
        E::PromotionNotOccurred { in_progress: s("10.0.1.12") },
        E::StandbyNotReconfigured { new_primary: s("10.0.1.12") },
        E::ReplayResumeFailed { error: s("x") },
        E::NoStandbysAvailable { minimum: 1 },
        E::CustomMonitorTimeout { result: r() },
        E::CustomMonitorSafeModeFailure { result: r() },
        E::DbConnectFailed { node: s("10.0.1.12"), reason: s("too many connections") },
        E::PrimaryCannotPingLocalDb,
        E::CommunicationError { node: s("10.0.1.12"), error: s("x") },
        E::FencingScriptError { result: r() },
        E::PostPromotionScriptFailed { result: r() },
        E::DbFailureScriptError { result: r() },
        E::PrimaryIsolationScriptFailed { result: r() },
        E::RemotePrePromotionScriptFailed { result: r() },
        E::RemotePostPromotionScriptFailed { result: r() },
        E::ResumedScriptFailed { result: r() },
        E::LoadBalancerAttachScriptFailed { result: r() },
        E::LoadBalancerDetachScriptFailed { result: r() },
        E::PromotionFailed { error: s("x") },
        E::DemotionFailed { node: s("10.0.1.10"), error: s("x") },
        E::UnexpectedError { error: s("x") },
        E::PrimaryFencedOff { node: s("10.0.1.10") },
        E::IsolatedPrimary { node: s("10.0.1.10") },
        E::VipAssignFailed { vip: s("10.0.1.100"), error: s("x") },
        E::DatabaseFailure { role: NodeRole::Primary, node: s("10.0.1.10") },
        E::DatabaseFailure { role: NodeRole::Standby, node: s("10.0.1.12") },
        E::AgentTimingOut,
        E::ResumeTimedOut,
        E::InternalStateMismatch { detail: s("x") },
        E::DatabaseWrongState { node: s("10.0.1.12"), expected: s("in recovery"), found: s("a primary") },
        E::DatabaseConnectionFailure { error: s("x") },
        E::StandbyCustomMonitorFailure { result: r() },
        E::PrimaryCustomMonitorFailure { result: r() },
        E::Custom { severity: Severity::Warning, subject: s("Something odd"), detail: s("x") },
    ]
}

/// Exhaustive (no wildcard): a new variant does not compile until it is added here, and then
/// the coverage assertion below wants it in [`every_event`] and the golden list.
fn variant(e: &Event) -> &'static str {
    use Event as E;
    match e {
        E::FencingScriptExecuted { .. } => "FencingScriptExecuted",
        E::PostPromotionScriptExecuted { .. } => "PostPromotionScriptExecuted",
        E::DbFailureScriptExecuted { .. } => "DbFailureScriptExecuted",
        E::PrimaryIsolationScriptExecuted { .. } => "PrimaryIsolationScriptExecuted",
        E::RemotePrePromotionScriptExecuted { .. } => "RemotePrePromotionScriptExecuted",
        E::RemotePostPromotionScriptExecuted { .. } => "RemotePostPromotionScriptExecuted",
        E::ResumedScriptExecuted { .. } => "ResumedScriptExecuted",
        E::LoadBalancerAttachScriptExecuted { .. } => "LoadBalancerAttachScriptExecuted",
        E::LoadBalancerDetachScriptExecuted { .. } => "LoadBalancerDetachScriptExecuted",
        E::WitnessAgentRunning => "WitnessAgentRunning",
        E::PrimaryAgentRunning => "PrimaryAgentRunning",
        E::StandbyAgentRunning => "StandbyAgentRunning",
        E::IdleAgentRunning => "IdleAgentRunning",
        E::AssigningVip { .. } => "AssigningVip",
        E::ReleasingVip { .. } => "ReleasingVip",
        E::WitnessAgentExited => "WitnessAgentExited",
        E::PrimaryAgentExited => "PrimaryAgentExited",
        E::PrimaryLeft { .. } => "PrimaryLeft",
        E::StandbyAgentExited => "StandbyAgentExited",
        E::AgentExitedDuringPromotion => "AgentExitedDuringPromotion",
        E::AgentExited => "AgentExited",
        E::AgentExitedEarly { .. } => "AgentExitedEarly",
        E::AutoResumeCheckStarted { .. } => "AutoResumeCheckStarted",
        E::Resumed => "Resumed",
        E::SwitchoverCompleted { .. } => "SwitchoverCompleted",
        E::VipOnNonPrimary { .. } => "VipOnNonPrimary",
        E::NoStandbyAgent => "NoStandbyAgent",
        E::StandbyAgentFailed { .. } => "StandbyAgentFailed",
        E::StandbyDatabaseFailed { .. } => "StandbyDatabaseFailed",
        E::StandbyCannotReachDatabase { .. } => "StandbyCannotReachDatabase",
        E::BelowThreeNodes { .. } => "BelowThreeNodes",
        E::SubsetDisconnected { .. } => "SubsetDisconnected",
        E::PromotionStarted { .. } => "PromotionStarted",
        E::WitnessFailure { .. } => "WitnessFailure",
        E::IdleAgentFailure { .. } => "IdleAgentFailure",
        E::NodesIsolated { .. } => "NodesIsolated",
        E::NoLongerIsolated => "NoLongerIsolated",
        E::PromotionRefusedPrimaryRunning { .. } => "PromotionRefusedPrimaryRunning",
        E::PromotionRefusedPrimaryUnverified { .. } => "PromotionRefusedPrimaryUnverified",
        E::PromotionRefusedVipAssigned { .. } => "PromotionRefusedVipAssigned",
        E::PromotionRefusedOrphaned { .. } => "PromotionRefusedOrphaned",
        E::FailoverNotOccurred { .. } => "FailoverNotOccurred",
        E::ManualFailoverRequired { .. } => "ManualFailoverRequired",
        E::FailoverCompleted { .. } => "FailoverCompleted",
        E::LockFileRemoved { .. } => "LockFileRemoved",
        E::RecoveryConfFound { .. } => "RecoveryConfFound",
        E::PromotionNotOccurred { .. } => "PromotionNotOccurred",
        E::StandbyNotReconfigured { .. } => "StandbyNotReconfigured",
        E::ReplayResumeFailed { .. } => "ReplayResumeFailed",
        E::NoStandbysAvailable { .. } => "NoStandbysAvailable",
        E::CustomMonitorTimeout { .. } => "CustomMonitorTimeout",
        E::CustomMonitorSafeModeFailure { .. } => "CustomMonitorSafeModeFailure",
        E::DbConnectFailed { .. } => "DbConnectFailed",
        E::PrimaryCannotPingLocalDb => "PrimaryCannotPingLocalDb",
        E::CommunicationError { .. } => "CommunicationError",
        E::FencingScriptError { .. } => "FencingScriptError",
        E::PostPromotionScriptFailed { .. } => "PostPromotionScriptFailed",
        E::DbFailureScriptError { .. } => "DbFailureScriptError",
        E::PrimaryIsolationScriptFailed { .. } => "PrimaryIsolationScriptFailed",
        E::RemotePrePromotionScriptFailed { .. } => "RemotePrePromotionScriptFailed",
        E::RemotePostPromotionScriptFailed { .. } => "RemotePostPromotionScriptFailed",
        E::ResumedScriptFailed { .. } => "ResumedScriptFailed",
        E::LoadBalancerAttachScriptFailed { .. } => "LoadBalancerAttachScriptFailed",
        E::LoadBalancerDetachScriptFailed { .. } => "LoadBalancerDetachScriptFailed",
        E::PromotionFailed { .. } => "PromotionFailed",
        E::DemotionFailed { .. } => "DemotionFailed",
        E::UnexpectedError { .. } => "UnexpectedError",
        E::PrimaryFencedOff { .. } => "PrimaryFencedOff",
        E::IsolatedPrimary { .. } => "IsolatedPrimary",
        E::VipAssignFailed { .. } => "VipAssignFailed",
        E::DatabaseFailure { .. } => "DatabaseFailure",
        E::AgentTimingOut => "AgentTimingOut",
        E::ResumeTimedOut => "ResumeTimedOut",
        E::InternalStateMismatch { .. } => "InternalStateMismatch",
        E::DatabaseWrongState { .. } => "DatabaseWrongState",
        E::DatabaseConnectionFailure { .. } => "DatabaseConnectionFailure",
        E::StandbyCustomMonitorFailure { .. } => "StandbyCustomMonitorFailure",
        E::PrimaryCustomMonitorFailure { .. } => "PrimaryCustomMonitorFailure",
        E::Custom { .. } => "Custom",
    }
}

/// Number of arms in [`variant`].
const VARIANTS: usize = 79;

/// (severity, subject) of [`every_event`] for cluster `acctg`, node `10.0.1.11`.
const GOLDEN: &[(&str, &str)] = &[
    ("INFO", "Executed fencing script"),
    ("INFO", "Executed post-promotion script"),
    ("INFO", "Executed post-database failure script"),
    ("INFO", "Executed primary isolation script"),
    ("INFO", "Executed remote pre-promotion script"),
    ("INFO", "Executed remote post-promotion script"),
    ("INFO", "Executed agent resumed script"),
    ("INFO", "Executed load balancer attach script"),
    ("INFO", "Executed load balancer detach script"),
    ("INFO", "Witness agent running on 10.0.1.11 for cluster acctg"),
    ("INFO", "Primary agent running on 10.0.1.11 for cluster acctg"),
    ("INFO", "Standby agent running on 10.0.1.11 for cluster acctg"),
    ("INFO", "Idle agent running on 10.0.1.11 for cluster acctg"),
    ("INFO", "Assigning VIP to node 10.0.1.11"),
    ("INFO", "Releasing VIP from node 10.0.1.11"),
    ("INFO", "Witness agent exited on 10.0.1.11 for cluster acctg"),
    ("INFO", "Primary agent exited on 10.0.1.11 for cluster acctg"),
    ("INFO", "Cluster acctg notified that primary node has left"),
    ("INFO", "Standby agent exited on 10.0.1.11 for cluster acctg"),
    ("INFO", "Agent exited during promotion on 10.0.1.11 for cluster acctg"),
    ("INFO", "Agent exited on 10.0.1.11 for cluster acctg"),
    ("INFO", "Agent exited for cluster acctg"),
    ("INFO", "Starting auto resume check for cluster acctg"),
    ("INFO", "Agent resumed monitoring on 10.0.1.11 for cluster acctg"),
    ("INFO", "Switchover has completed on cluster acctg"),
    ("WARNING", "Virtual IP address assigned to non-primary node"),
    ("WARNING", "No standby agent in cluster for cluster acctg"),
    ("WARNING", "Standby agent failed for cluster acctg"),
    ("WARNING", "Standby database failed for cluster acctg"),
    ("WARNING", "Standby agent cannot reach database for cluster acctg"),
    ("WARNING", "Cluster acctg has dropped below three nodes"),
    ("WARNING", "Subset of cluster acctg disconnected from primary"),
    ("WARNING", "Promotion has started on cluster acctg."),
    ("WARNING", "Witness failure for cluster acctg"),
    ("WARNING", "Idle agent failure for cluster acctg."),
    ("WARNING", "One or more nodes isolated from network for cluster acctg"),
    ("WARNING", "Node no longer isolated from network for cluster acctg."),
    ("WARNING", "Standby agent tried to promote, but primary DB is still running"),
    ("WARNING", "Standby agent tried to promote, but could not verify primary DB"),
    ("WARNING", "Standby agent tried to promote, but VIP appears to still be assigned"),
    ("WARNING", "Standby agent tried to promote, but appears to be orphaned"),
    ("WARNING", "Failover has not occurred"),
    ("WARNING", "Potential manual failover required on cluster acctg."),
    ("WARNING", "Failover has completed on cluster acctg"),
    ("WARNING", "Lock file for cluster acctg has been removed"),
    ("WARNING", "standby.signal/recovery.conf file for cluster acctg has been found"),
    ("WARNING", "Promotion has not occurred for cluster acctg"),
    ("WARNING", "Standby not reconfigured after failover in cluster acctg"),
    ("WARNING", "Could not resume replay for cluster acctg"),
    ("WARNING", "No standbys available for promotion in cluster acctg"),
    ("WARNING", "Custom monitor timeout for cluster acctg"),
    ("WARNING", "Custom monitor 'safe mode' failure for cluster acctg"),
    ("SEVERE", "Unable to connect to DB on 10.0.1.12"),
    ("SEVERE", "Primary cannot ping local database for cluster acctg"),
    ("SEVERE", "Communication error for cluster acctg"),
    ("SEVERE", "Fencing script error"),
    ("SEVERE", "Post-promotion script failed"),
    ("SEVERE", "Post-database failure script error"),
    ("SEVERE", "Primary isolation script failed"),
    ("SEVERE", "Remote pre-promotion script failed"),
    ("SEVERE", "Remote post-promotion script failed"),
    ("SEVERE", "Agent resumed script failed"),
    ("SEVERE", "Load balancer attach script failed"),
    ("SEVERE", "Load balancer detach script failed"),
    ("SEVERE", "Could not promote standby"),
    ("SEVERE", "Error creating standby.signal/recovery.conf file on 10.0.1.10 for cluster acctg"),
    ("SEVERE", "An unexpected error has occurred for cluster acctg"),
    ("SEVERE", "Primary database being fenced off for cluster acctg"),
    ("SEVERE", "Isolated primary database for cluster acctg"),
    ("SEVERE", "Could not assign VIP to node 10.0.1.11"),
    ("SEVERE", "Primary database failure for cluster acctg"),
    ("SEVERE", "Standby database failure for cluster acctg"),
    ("SEVERE", "Agent is timing out for cluster acctg"),
    ("SEVERE", "Resume timed out for cluster acctg"),
    ("SEVERE", "Internal state mismatch for cluster acctg"),
    ("SEVERE", "Database in wrong state on 10.0.1.12"),
    ("SEVERE", "Database connection failure for cluster acctg"),
    ("SEVERE", "Standby custom monitor failure for cluster acctg"),
    ("SEVERE", "Primary custom monitor failure for cluster acctg"),
    ("WARNING", "Something odd"),
];

#[test]
fn catalog_subjects_and_severities_match_the_golden_list() {
    let events = every_event();
    let covered: std::collections::HashSet<_> = events.iter().map(variant).collect();
    assert_eq!(covered.len(), VARIANTS, "every_event() misses a variant");
    let got: Vec<(&str, String)> = events
        .iter()
        .map(|e| (severity_name(e.severity()), e.subject("acctg", "10.0.1.11")))
        .collect();
    assert_eq!(got.len(), GOLDEN.len());
    for (g, want) in got.iter().zip(GOLDEN) {
        assert_eq!((g.0, g.1.as_str()), *want);
    }
    // Subjects are distinct (operators filter on them).
    let subjects: std::collections::HashSet<_> = got.iter().map(|g| g.1.clone()).collect();
    assert_eq!(subjects.len(), got.len());
}

#[test]
fn every_event_has_a_description_and_script_events_have_details() {
    for e in every_event() {
        let d = e.description("acctg", "10.0.1.11");
        assert!(!d.trim().is_empty(), "{e:?}");
        assert!(!d.contains("master"), "{d}");
        let name = variant(&e);
        let scripty = name.contains("Script") || name.contains("CustomMonitor");
        assert_eq!(e.details().is_some(), scripty, "{name}");
    }
}

#[test]
fn level_filters_by_severity() {
    use NotificationLevel as L;
    use Severity as S;
    let table = [
        (L::Info, S::Info, true),
        (L::Info, S::Warning, true),
        (L::Info, S::Severe, true),
        (L::Warning, S::Info, false),
        (L::Warning, S::Warning, true),
        (L::Warning, S::Severe, true),
        (L::Severe, S::Info, false),
        (L::Severe, S::Warning, false),
        (L::Severe, S::Severe, true),
    ];
    for (level, sev, want) in table {
        assert_eq!(passes(level, sev), want, "{level:?} {sev:?}");
    }
    assert_eq!(config("notification.level=warning").notification_level, L::Warning);
}

#[test]
fn body_has_header_description_and_script_output() {
    let ctx = Context::from_config(&config(""));
    let n = Notification::render(&Event::PostPromotionScriptFailed { result: r() }, &ctx);
    assert_eq!(n.severity, Severity::Severe);
    assert_eq!(n.subject, "Post-promotion script failed");
    assert_eq!(
        n.body,
        "EFM node:      10.0.1.11\nCluster name:  acctg\nDatabase name: edb\nVIP support:   DISABLED\n\n\
         The post-promotion script /usr/local/bin/x.sh did not succeed.\n\nExit Value: 3\nResults: boom\n"
    );
    assert!(n.detail.starts_with("The post-promotion script"));
    assert!(!n.detail.contains("EFM node"));
}

#[test]
fn vip_and_external_address_in_header() {
    let c = config(
        "virtual.ip=10.0.1.100\nvirtual.ip.prefix=24\nexternal.address=db1.example.com",
    );
    let ctx = Context::from_config(&c);
    let h = ctx.header();
    assert!(h.contains("VIP support:   10.0.1.100\n"), "{h}");
    assert!(h.starts_with("EFM node:      db1.example.com\n"), "{h}");
    let n = Notification::render(&Event::PrimaryAgentRunning, &ctx);
    assert_eq!(n.subject, "Primary agent running on db1.example.com for cluster acctg");
}

#[test]
fn prefix_goes_before_the_subject() {
    let ctx = Context::from_config(&config("notification.text.prefix=[PROD]"));
    let n = Notification::render(&Event::FailoverCompleted { old_primary: None, new_primary: s("x") }, &ctx);
    assert_eq!(n.subject, "[PROD] Failover has completed on cluster acctg");
    let ctx = Context::from_config(&config(""));
    let n = Notification::render(&Event::Custom { severity: Severity::Info, subject: s("Hi"), detail: s("d") }, &ctx);
    assert_eq!(n.subject, "Hi");
}

#[test]
fn script_result_from_outcome() {
    let o = crate::scripts::ScriptOutcome {
        argv: vec![s("/x")],
        exit: None,
        signal: Some(9),
        timed_out: true,
        stdout: s("partial\n"),
        stderr: String::new(),
        stdout_truncated: false,
        stderr_truncated: false,
        duration: Duration::from_secs(5),
    };
    let r = ScriptResult::from_outcome("/x --y", &o);
    assert_eq!(r.script, "/x --y");
    assert!(r.exit.starts_with("timed out after 5.0s"), "{}", r.exit);
    assert_eq!(r.output, "partial");
}

#[test]
fn new_properties_have_defaults_and_validate() {
    let c = config("");
    assert_eq!(c.smtp_server, "127.0.0.1");
    assert_eq!(c.smtp_port, 25);
    assert_eq!(c.smtp_tls, SmtpTls::None);
    assert_eq!(c.smtp_timeout, Duration::from_secs(10));
    assert_eq!(c.script_notification_timeout, Duration::from_secs(30));
    assert_eq!(c.from_email.as_deref(), Some("efm@%h"));
    let c = config("smtp.server=mail.example.com\nsmtp.port=587\nsmtp.tls=STARTTLS\nsmtp.timeout=2.5\nsmtp.username=efm\nsmtp.password=pw");
    assert_eq!(c.smtp_tls, SmtpTls::StartTls);
    assert_eq!(c.smtp_timeout, Duration::from_millis(2500));
    assert!(!format!("{c:?}").contains("\"pw\""), "the password shows in Debug");
    let bad = |extra: &str| {
        crate::config::from_properties(
            &format!("{BASE}{extra}\n"),
            Path::new("/etc/efm/acctg.properties"),
            "acctg",
            Vec::new(),
        )
        .unwrap_err()
        .to_string()
    };
    for (extra, want) in [
        ("smtp.port=0", "smtp.port"),
        ("smtp.tls=ssl", "expected one of none, starttls, tls"),
        ("smtp.timeout=0", "expected a duration longer than 0"),
        ("script.notification.timeout=0s", "script.notification.timeout"),
        ("smtp.server=bad host", "expected a host name or IP address"),
        ("smtp.password=pw", "smtp.username must be set too"),
    ] {
        let e = bad(extra);
        assert!(e.contains(want), "{extra}: {e}");
        assert!(e.contains("/etc/efm/acctg.properties:7"), "{extra}: {e}");
    }
}

/// A temporary directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        static N: AtomicU64 = AtomicU64::new(0);
        let p = std::env::temp_dir().join(format!(
            "efm-notify-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir_all(&p).unwrap();
        Self(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A script appending each argument, NUL-terminated, then a record separator, to `out`.
fn recorder(dir: &Path, out: &Path) -> PathBuf {
    let p = dir.join("record.sh");
    fs::write(
        &p,
        format!("#!/bin/sh\nfor a in \"$@\"; do printf '%s\\0' \"$a\" >> {0}; done\nprintf '\\036' >> {0}\n", out.display()),
    )
    .unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
    p
}

fn calls(out: &Path) -> Vec<Vec<String>> {
    let text = fs::read_to_string(out).unwrap_or_default();
    text.split('\u{1e}')
        .filter(|c| !c.is_empty())
        .map(|c| c.split('\0').filter(|a| !a.is_empty()).map(str::to_owned).collect())
        .collect()
}

#[tokio::test]
async fn script_gets_subject_and_body_above_the_level() {
    let dir = TempDir::new("script");
    let out = dir.0.join("calls");
    let rec = recorder(&dir.0, &out);
    let n = Notifier::start(&config(&format!(
        "script.notification={} --subject=%s %b\nnotification.level=WARNING\nnotification.text.prefix=[T]",
        rec.display()
    )));
    n.send(Event::StandbyAgentRunning);
    n.send(Event::FailoverCompleted { old_primary: Some(s("10.0.1.10")), new_primary: s("10.0.1.12") });
    n.flush().await;
    let c = calls(&out);
    assert_eq!(c.len(), 1, "{c:?}");
    assert_eq!(c[0][0], "--subject=[T] Failover has completed on cluster acctg");
    assert!(c[0][1].starts_with("EFM node:      10.0.1.11\n"), "{:?}", c[0][1]);
    assert!(c[0][1].contains("10.0.1.12 replaces the failed primary 10.0.1.10"));
    let st = n.stats();
    assert_eq!((st.sent, st.filtered, st.scripts_ok, st.dropped), (2, 1, 1, 0));
}

#[tokio::test]
async fn script_without_placeholders_gets_two_arguments() {
    let dir = TempDir::new("append");
    let out = dir.0.join("calls");
    let rec = recorder(&dir.0, &out);
    let n = Notifier::start(&config(&format!("script.notification={}", rec.display())));
    n.send(Event::Custom { severity: Severity::Info, subject: s("Hello"), detail: s("World") });
    n.flush().await;
    let c = calls(&out);
    assert_eq!(c.len(), 1);
    assert_eq!(c[0].len(), 2);
    assert_eq!(c[0][0], "Hello");
    assert!(c[0][1].ends_with("\n\nWorld\n"), "{:?}", c[0][1]);
}

#[tokio::test]
async fn send_never_waits_for_a_slow_script() {
    let dir = TempDir::new("slow");
    let p = dir.0.join("slow.sh");
    fs::write(&p, "#!/bin/sh\nsleep 5\n").unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
    let n = Notifier::start(&config(&format!("script.notification={}", p.display())));
    let start = Instant::now();
    for i in 0..(QUEUE_CAPACITY + 20) {
        n.send(Event::Custom { severity: Severity::Severe, subject: format!("n{i}"), detail: s("d") });
    }
    assert!(start.elapsed() < Duration::from_secs(1), "{:?}", start.elapsed());
    let st = n.stats();
    assert!(st.dropped >= 19, "{st:?}");
    assert_eq!(st.sent, u64::try_from(QUEUE_CAPACITY + 20).unwrap());
    // Dropping the runtime at the end of the test kills the running script's process group.
}

#[tokio::test]
async fn dead_mail_server_is_bounded_and_does_not_stop_the_script() {
    let dir = TempDir::new("deadmail");
    let out = dir.0.join("calls");
    let rec = recorder(&dir.0, &out);
    // A port nobody listens on: bind, learn the port, close.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let n = Notifier::start(&config(&format!(
        "script.notification={}\nuser.email=dba@example.com\nsmtp.port={port}\nsmtp.timeout=2",
        rec.display()
    )));
    n.send(Event::PrimaryAgentRunning);
    let start = Instant::now();
    n.flush().await;
    assert!(start.elapsed() < Duration::from_secs(4), "{:?}", start.elapsed());
    let st = n.stats();
    assert_eq!((st.scripts_ok, st.mails_ok, st.mails_failed), (1, 0, 1));
    assert_eq!(calls(&out).len(), 1);
}

#[test]
fn script_runs_map_to_executed_and_failed_events() {
    let outcome = |exit| crate::scripts::ScriptOutcome {
        argv: vec![s("/f")],
        exit: Some(exit),
        signal: None,
        timed_out: false,
        stdout: s("out"),
        stderr: String::new(),
        stdout_truncated: false,
        stderr_truncated: false,
        duration: Duration::from_millis(3),
    };
    let ok = Event::for_script(Hook::Fence, "/f %p", &Ok(outcome(0))).unwrap();
    assert_eq!(ok.subject("c", "n"), "Executed fencing script");
    assert_eq!(ok.severity(), Severity::Info);
    let bad = Event::for_script(Hook::Fence, "/f %p", &Ok(outcome(2))).unwrap();
    assert_eq!(bad.subject("c", "n"), "Fencing script error");
    assert_eq!(bad.details().unwrap(), "Exit Value: 2\nResults: out");
    let err = crate::scripts::ScriptError::NotFound { hook: s("script.post.promotion"), program: s("/p") };
    let e = Event::for_script(Hook::PostPromotion, "/p", &Err(err)).unwrap();
    assert_eq!(e.subject("c", "n"), "Post-promotion script failed");
    assert!(e.details().unwrap().starts_with("Exit Value: not run\nResults: script.post.promotion: script /p does not exist"));
    let mut seen = std::collections::HashSet::new();
    for hook in Hook::ALL {
        match Event::for_script(hook, "/x", &Ok(outcome(1))) {
            Some(e) => assert!(seen.insert(e.subject("c", "n")), "{hook:?}"),
            None => assert!(matches!(hook, Hook::CustomMonitor | Hook::Notification)),
        }
    }
}
