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
        E::PromotionRefusedVipAssigned { vip: s("10.0.1.100"), candidate: s("10.0.1.12") },
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
    let got: Vec<(&str, String)> =
        events.iter().map(|e| (severity_name(e.severity()), e.subject("acctg", "10.0.1.11"))).collect();
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
    let c = config("virtual.ip=10.0.1.100\nvirtual.ip.prefix=24\nexternal.address=db1.example.com");
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
        format!(
            "#!/bin/sh\nfor a in \"$@\"; do printf '%s\\0' \"$a\" >> {0}; done\nprintf '\\036' >> {0}\n",
            out.display()
        ),
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
    assert!(e
        .details()
        .unwrap()
        .starts_with("Exit Value: not run\nResults: script.post.promotion: script /p does not exist"));
    let mut seen = std::collections::HashSet::new();
    for hook in Hook::ALL {
        match Event::for_script(hook, "/x", &Ok(outcome(1))) {
            Some(e) => assert!(seen.insert(e.subject("c", "n")), "{hook:?}"),
            None => assert!(matches!(hook, Hook::CustomMonitor | Hook::Notification)),
        }
    }
}

/// EFM's notification tables, the reference for the catalog: the EFM 2.0.3 guide's three tables
/// (§7) in full, and the events the 3.3 guide adds where its text shows the subject. (severity,
/// subject with EFM's placeholders `cluster_name` and `node_address`), as EFM writes them.
const EFM_REFERENCE: &[(&str, &str)] = &[
    // 2.0.3, INFO
    ("INFO", "Executing fencing script"),
    ("INFO", "Executed post-promotion script"),
    ("INFO", "Executed post-database failure script"),
    ("INFO", "Executed master isolation script"),
    ("INFO", "Witness agent running on node_address for cluster cluster_name"),
    ("INFO", "Master agent running on node_address for cluster cluster_name"),
    ("INFO", "Standby agent running on node_address for cluster cluster_name"),
    ("INFO", "Assigning VIP to node node_address"),
    ("INFO", "Releasing VIP from node node_address"),
    ("INFO", "Witness agent exited on node_address for cluster cluster_name"),
    ("INFO", "Master agent exited on node_address for cluster cluster_name"),
    ("INFO", "Cluster cluster_name notified that master node has left"),
    ("INFO", "Standby agent exited on node_address for cluster cluster_name"),
    ("INFO", "Agent exited during promotion on node_address for cluster cluster_name"),
    ("INFO", "Agent exited on node_address for cluster cluster_name"),
    ("INFO", "Agent exited for cluster cluster_name"),
    // 3.3, INFO
    ("INFO", "Starting auto resume check for cluster cluster_name"),
    // 2.0.3, WARNING
    ("WARNING", "Virtual IP address assigned to non-master node"),
    ("WARNING", "No standby agent in cluster for cluster cluster_name"),
    ("WARNING", "Standby agent failed for cluster cluster_name"),
    ("WARNING", "Standby database failed for cluster cluster_name"),
    ("WARNING", "Standby agent cannot reach database for cluster cluster_name"),
    ("WARNING", "Cluster cluster_name has dropped below three nodes"),
    ("WARNING", "Subset of cluster cluster_name disconnected from master"),
    ("WARNING", "Promotion has started on cluster cluster_name."),
    ("WARNING", "Witness failure for cluster cluster_name"),
    ("WARNING", "Idle agent failure for cluster cluster_name."),
    ("WARNING", "One or more nodes isolated from network for cluster cluster_name"),
    ("WARNING", "Node no longer isolated from network for cluster cluster_name."),
    ("WARNING", "Standby agent tried to promote, but master DB is still running"),
    ("WARNING", "Standby agent tried to promote, but could not verify master DB"),
    ("WARNING", "Standby agent tried to promote, but VIP appears to still be assigned"),
    ("WARNING", "Standby agent tried to promote, but appears to be orphaned"),
    ("WARNING", "Failover has not occurred"),
    ("WARNING", "Potential manual failover required on cluster cluster_name."),
    ("WARNING", "Failover has completed on cluster cluster_name"),
    ("WARNING", "Lock file for cluster cluster_name has been removed"),
    ("WARNING", "recovery.conf file for cluster cluster_name has been found"),
    ("WARNING", "Trial license expiring soon"),
    ("WARNING", "Full license expiring soon"),
    ("WARNING", "License has expired"),
    ("WARNING", "Promotion has not occurred for cluster cluster_name"),
    ("WARNING", "EFM Standby not reconfigured after failover in cluster cluster_name"),
    ("WARNING", "Could not resume replay for cluster cluster_name"),
    ("WARNING", "License is invalid"),
    // 3.3, WARNING
    ("WARNING", "No standbys available for promotion in cluster cluster_name"),
    ("WARNING", "Custom monitor timeout for cluster cluster_name"),
    ("WARNING", "Custom monitor 'safe mode' failure for cluster cluster_name"),
    // 2.0.3, SEVERE ("Unable to connect to DB" is listed three times, once per reason; the
    // database failure as "master_or_standby database failure")
    ("SEVERE", "Unable to connect to DB on node_address"),
    ("SEVERE", "Master cannot ping local database for cluster cluster_name"),
    ("SEVERE", "Communication error for cluster cluster_name"),
    ("SEVERE", "Fencing script error"),
    ("SEVERE", "Post-promotion script failed"),
    ("SEVERE", "Post-database failure script error"),
    ("SEVERE", "Master isolation script failed"),
    ("SEVERE", "Could not promote standby"),
    ("SEVERE", "Error creating recovery.conf file on node_address for cluster cluster_name"),
    ("SEVERE", "An unexpected error has occurred for cluster cluster_name"),
    ("SEVERE", "Master database being fenced off for cluster cluster_name"),
    ("SEVERE", "Could not assign VIP to node node_address"),
    ("SEVERE", "Master database failure for cluster cluster_name"),
    ("SEVERE", "Standby database failure for cluster cluster_name"),
    ("SEVERE", "Agent is timing out for cluster cluster_name"),
    ("SEVERE", "Resume timed out for cluster cluster_name"),
    ("SEVERE", "License has expired"),
    ("SEVERE", "License is invalid"),
    // 3.3, SEVERE
    ("SEVERE", "Internal state mismatch for cluster cluster_name"),
    ("SEVERE", "Database in wrong state on node_address"),
    ("SEVERE", "Database connection failure for cluster cluster_name"),
    ("SEVERE", "Standby custom monitor failure for cluster cluster_name"),
    ("SEVERE", "Master custom monitor failure for cluster cluster_name"),
    ("SEVERE", "Load balancer attach script failed"),
    ("SEVERE", "Load balancer detach script failed"),
];

/// Reference events that do not apply to efm, and why.
const NOT_APPLICABLE: &[(&str, &str)] = &[
    ("Trial license expiring soon", "efm has no license"),
    ("Full license expiring soon", "efm has no license"),
    ("License has expired", "efm has no license"),
    ("License is invalid", "efm has no license"),
];

/// A reference subject as efm writes it: "master" is "primary" (as EFM 4 on), `recovery.conf`
/// is `standby.signal/recovery.conf` (`PostgreSQL` 12 on), 2.0.3's "Executing fencing script" is
/// reported after the script ran ("Executed", as for every other script), and 2.0.3's "EFM "
/// before "Standby not reconfigured" is gone (3.3). Placeholders become `acctg`.
fn in_efm_terms(subject: &str) -> String {
    subject
        .replace("Executing fencing script", "Executed fencing script")
        .replace("EFM Standby not reconfigured", "Standby not reconfigured")
        .replace("recovery.conf", "standby.signal/recovery.conf")
        .replace("master", "primary")
        .replace("Master", "Primary")
        .replace("cluster_name", "acctg")
}

/// An address in one of our subjects, as the reference's placeholder.
fn addresses_as_placeholder(subject: &str) -> String {
    subject
        .split(' ')
        .map(|w| if w.parse::<std::net::IpAddr>().is_ok() { "node_address" } else { w })
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn every_event_of_efms_tables_is_in_the_catalog_with_its_severity() {
    let ours: std::collections::HashSet<(&str, String)> = every_event()
        .iter()
        .map(|e| (severity_name(e.severity()), addresses_as_placeholder(&e.subject("acctg", "10.0.1.11"))))
        .collect();
    let mut missing = Vec::new();
    let mut checked = 0;
    for (severity, subject) in EFM_REFERENCE {
        if NOT_APPLICABLE.iter().any(|(s, _)| s == subject) {
            continue;
        }
        checked += 1;
        let want = (*severity, in_efm_terms(subject));
        if !ours.contains(&want) {
            missing.push(format!("{severity} {subject:?} (as {:?})", want.1));
        }
    }
    assert!(
        missing.is_empty(),
        "EFM events missing from the catalog (or with another severity):\n{}",
        missing.join("\n")
    );
    assert_eq!(checked, EFM_REFERENCE.len() - 6, "every reference event but the six license ones is checked");
    // The list of events that were never sent: each is in the catalog (by variant).
    let names: std::collections::HashSet<&str> = every_event().iter().map(variant).collect();
    for v in [
        "NoStandbyAgent",
        "StandbyDatabaseFailed",
        "StandbyCannotReachDatabase",
        "BelowThreeNodes",
        "SubsetDisconnected",
        "NodesIsolated",
        "NoLongerIsolated",
        "PromotionRefusedPrimaryRunning",
        "PromotionRefusedPrimaryUnverified",
        "PromotionRefusedVipAssigned",
        "PromotionRefusedOrphaned",
        "VipOnNonPrimary",
        "VipAssignFailed",
        "LockFileRemoved",
        "RecoveryConfFound",
        "StandbyNotReconfigured",
        "ReplayResumeFailed",
        "NoStandbysAvailable",
        "DbConnectFailed",
        "PrimaryCannotPingLocalDb",
        "CommunicationError",
        "UnexpectedError",
        "AgentTimingOut",
        "ResumeTimedOut",
        "InternalStateMismatch",
        "DatabaseWrongState",
        "DatabaseConnectionFailure",
        "AutoResumeCheckStarted",
        "AgentExitedDuringPromotion",
        "AgentExitedEarly",
    ] {
        assert!(names.contains(v), "{v}");
    }
}

mod local_db {
    use std::time::{Duration, Instant};

    use crate::notify::local::{connect_refusal, LocalDbNotices};
    use crate::notify::Event;
    use crate::postgres::{monitor::DbEvent, DbError, DbInfo};

    fn info(in_recovery: bool) -> DbInfo {
        DbInfo {
            in_recovery,
            server_version_num: 150_004,
            current_lsn: None,
            receive_lsn: None,
            replay_lsn: None,
            timeline: Some(1),
            is_streaming: false,
            upstream_host: None,
        }
    }

    fn too_many() -> DbError {
        DbError::Connect { addr: "198.18.0.1:5432".into(), message: "sorry, too many clients already (53300)".into() }
    }

    fn timeout() -> DbError {
        DbError::Timeout { addr: "198.18.0.1:5432".into(), stage: "querying", timeout: Duration::from_secs(1) }
    }

    fn failed(error: DbError, secs: u64) -> DbEvent {
        DbEvent::CheckFailed { error, silent_for: Duration::from_secs(secs) }
    }

    #[test]
    fn refusals_are_efms_reasons_only() {
        assert!(connect_refusal(&too_many()).unwrap().contains("max_connections"));
        let auth =
            DbError::Auth { addr: "a".into(), user: "efm".into(), message: "password authentication failed".into() };
        assert!(connect_refusal(&auth).unwrap().contains("password authentication failed"));
        assert_eq!(connect_refusal(&timeout()), None);
        assert_eq!(connect_refusal(&DbError::Refused { addr: "a".into() }), None);
        let other = DbError::Connect { addr: "a".into(), message: "database \"x\" does not exist (3D000)".into() };
        assert_eq!(connect_refusal(&other), None);
    }

    #[test]
    fn unable_to_connect_once_per_episode() {
        let t0 = Instant::now();
        let mut n = LocalDbNotices::new(Duration::from_mins(1));
        let none = || None;
        assert!(n.observe(&DbEvent::Available(info(true)), t0, "198.18.0.1", none).is_empty());
        let e = n.observe(&failed(too_many(), 1), t0, "198.18.0.1", none);
        assert!(
            matches!(&e[..], [Event::DbConnectFailed { node, reason }] if node == "198.18.0.1" && reason.contains("53300")),
            "{e:?}"
        );
        assert!(n.observe(&failed(too_many(), 2), t0, "198.18.0.1", none).is_empty(), "once per episode");
        assert!(n.observe(&DbEvent::Checked(info(true)), t0, "198.18.0.1", none).is_empty());
        assert_eq!(n.observe(&failed(too_many(), 1), t0, "198.18.0.1", none).len(), 1, "a new episode");
    }

    #[test]
    fn timing_out_is_a_final_check_that_succeeded() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let none = || None;
        let mut n = LocalDbNotices::new(s(60));
        n.observe(&DbEvent::Available(info(true)), t0, "n", none);
        // Failed checks, then a success before local.timeout: not timing out.
        n.observe(&failed(timeout(), 10), t0 + s(10), "n", none);
        assert!(n.observe(&DbEvent::Checked(info(true)), t0 + s(20), "n", none).is_empty());
        // Silent for local.timeout, then the final check succeeds.
        n.observe(&failed(timeout(), 50), t0 + s(70), "n", none);
        let e = n.observe(&DbEvent::Checked(info(true)), t0 + s(81), "n", none);
        assert_eq!(e, vec![Event::AgentTimingOut]);
        // Declared failed and recovered: EFM's resume flow, not timing out.
        n.observe(&failed(timeout(), 50), t0 + s(130), "n", none);
        n.observe(
            &DbEvent::Failed { error: timeout(), silent_for: s(70), ever_available: true },
            t0 + s(151),
            "n",
            none,
        );
        assert!(n.observe(&DbEvent::Recovered(info(true)), t0 + s(300), "n", none).is_empty());
        // Never seen before: a slow start is not timing out either.
        let mut n = LocalDbNotices::new(s(60));
        n.observe(&failed(timeout(), 70), t0 + s(70), "n", none);
        assert!(n.observe(&DbEvent::Available(info(true)), t0 + s(80), "n", none).is_empty());
    }

    #[test]
    fn standby_signal_on_a_primary_is_reported_once() {
        let t0 = Instant::now();
        let mut n = LocalDbNotices::new(Duration::from_mins(1));
        let mut asked = 0;
        let e = n.observe(&DbEvent::Available(info(true)), t0, "n", || {
            asked += 1;
            Some("/pg/standby.signal".into())
        });
        assert!(e.is_empty(), "a standby: not asked");
        let e = n.observe(&DbEvent::Checked(info(false)), t0, "n", || {
            asked += 1;
            Some("/pg/standby.signal".into())
        });
        assert_eq!(e, vec![Event::RecoveryConfFound { path: "/pg/standby.signal".into() }]);
        let e = n.observe(&DbEvent::Checked(info(false)), t0, "n", || {
            asked += 1;
            Some("/pg/standby.signal".into())
        });
        assert!(e.is_empty());
        assert_eq!(asked, 1, "asked only the first time the database is a primary");
    }

    #[test]
    fn recovery_file_looks_in_the_data_directory() {
        let dir = std::env::temp_dir().join(format!("efm-recovery-file-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut cfg = super::config("");
        cfg.db_data_dir = Some(dir.clone());
        assert_eq!(crate::notify::local::recovery_file(&cfg), None);
        std::fs::write(dir.join("standby.signal"), "").unwrap();
        assert_eq!(crate::notify::local::recovery_file(&cfg), Some(dir.join("standby.signal")));
        std::fs::remove_file(dir.join("standby.signal")).unwrap();
        std::fs::write(dir.join("recovery.conf"), "").unwrap();
        assert_eq!(crate::notify::local::recovery_file(&cfg), Some(dir.join("recovery.conf")));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

/// Where each event is sent, or why it cannot occur in efm.
enum Sent {
    /// Emitted by one of these source files (each path relative to `efm-agent/src`).
    At(&'static [&'static str]),
    /// Cannot occur in efm's design; the reason.
    NotApplicable(&'static str),
}

/// Every variant of [`Event`] with where it is sent (or why it is not). Exhaustive with
/// [`variant`]: a new variant fails [`every_event_is_sent_somewhere_or_documented_as_not_applicable`]
/// until it has an entry here.
const SENT: &[(&str, Sent)] = &[
    ("FencingScriptExecuted", Sent::At(&["notify/catalog.rs"])),
    ("PostPromotionScriptExecuted", Sent::At(&["notify/catalog.rs"])),
    ("DbFailureScriptExecuted", Sent::At(&["notify/catalog.rs"])),
    ("PrimaryIsolationScriptExecuted", Sent::At(&["notify/catalog.rs"])),
    ("RemotePrePromotionScriptExecuted", Sent::At(&["notify/catalog.rs"])),
    ("RemotePostPromotionScriptExecuted", Sent::At(&["notify/catalog.rs"])),
    ("ResumedScriptExecuted", Sent::At(&["notify/catalog.rs"])),
    ("LoadBalancerAttachScriptExecuted", Sent::At(&["notify/catalog.rs"])),
    ("LoadBalancerDetachScriptExecuted", Sent::At(&["notify/catalog.rs"])),
    ("WitnessAgentRunning", Sent::At(&["agent.rs"])),
    ("PrimaryAgentRunning", Sent::At(&["agent.rs"])),
    ("StandbyAgentRunning", Sent::At(&["agent.rs"])),
    ("IdleAgentRunning", Sent::At(&["agent.rs"])),
    ("AssigningVip", Sent::At(&["ha/effects.rs"])),
    ("ReleasingVip", Sent::At(&["ha/effects.rs"])),
    ("WitnessAgentExited", Sent::At(&["agent.rs"])),
    ("PrimaryAgentExited", Sent::At(&["agent.rs"])),
    ("PrimaryLeft", Sent::At(&["agent.rs"])),
    ("StandbyAgentExited", Sent::At(&["agent.rs"])),
    ("AgentExitedDuringPromotion", Sent::At(&["agent.rs"])),
    ("AgentExited", Sent::At(&["agent.rs"])),
    ("AgentExitedEarly", Sent::At(&["bin/efm-agent.rs"])),
    ("AutoResumeCheckStarted", Sent::At(&["ha/monitoring.rs"])),
    ("Resumed", Sent::At(&["ha/runtime.rs"])),
    ("SwitchoverCompleted", Sent::At(&["ha/runtime.rs"])),
    ("VipOnNonPrimary", Sent::At(&["ha/effects.rs"])),
    ("NoStandbyAgent", Sent::At(&["ha/effects.rs"])),
    ("StandbyAgentFailed", Sent::At(&["agent.rs"])),
    ("StandbyDatabaseFailed", Sent::At(&["ha/effects.rs"])),
    ("StandbyCannotReachDatabase", Sent::At(&["ha/effects.rs"])),
    ("BelowThreeNodes", Sent::At(&["operator.rs"])),
    ("SubsetDisconnected", Sent::At(&["ha/effects.rs"])),
    ("PromotionStarted", Sent::At(&["ha/primary.rs"])),
    ("WitnessFailure", Sent::At(&["agent.rs"])),
    ("IdleAgentFailure", Sent::At(&["agent.rs"])),
    ("NodesIsolated", Sent::At(&["ha/effects.rs"])),
    ("NoLongerIsolated", Sent::At(&["ha/effects.rs"])),
    ("PromotionRefusedPrimaryRunning", Sent::At(&["ha/leader.rs"])),
    (
        "PromotionRefusedPrimaryUnverified",
        Sent::NotApplicable(
            "efm never refuses a promotion because the primary's database could not be checked: a \
             promotion commits only after a majority stopped endorsing the old primary for longer \
             than its lease, so its kernel refuses clients whether or not anyone can reach it; a \
             database that does not answer a remote check within remote.timeout counts as down",
        ),
    ),
    ("PromotionRefusedVipAssigned", Sent::At(&["ha/leader.rs"])),
    ("PromotionRefusedOrphaned", Sent::At(&["ha/leader.rs"])),
    ("FailoverNotOccurred", Sent::At(&["ha/leader.rs"])),
    ("ManualFailoverRequired", Sent::At(&["ha/voter.rs"])),
    ("FailoverCompleted", Sent::At(&["ha/runtime.rs"])),
    ("LockFileRemoved", Sent::At(&["ha/local.rs"])),
    ("RecoveryConfFound", Sent::At(&["notify/local.rs"])),
    ("PromotionNotOccurred", Sent::At(&["ha/primary.rs"])),
    ("StandbyNotReconfigured", Sent::At(&["ha/standby.rs"])),
    ("ReplayResumeFailed", Sent::At(&["ha/local.rs"])),
    ("NoStandbysAvailable", Sent::At(&["ha/effects.rs"])),
    ("CustomMonitorTimeout", Sent::At(&["custom_monitor.rs"])),
    ("CustomMonitorSafeModeFailure", Sent::At(&["custom_monitor.rs"])),
    ("DbConnectFailed", Sent::At(&["notify/local.rs"])),
    ("PrimaryCannotPingLocalDb", Sent::At(&["ha/confirm.rs"])),
    ("CommunicationError", Sent::At(&["ha/effects.rs"])),
    ("FencingScriptError", Sent::At(&["notify/catalog.rs"])),
    ("PostPromotionScriptFailed", Sent::At(&["notify/catalog.rs"])),
    ("DbFailureScriptError", Sent::At(&["notify/catalog.rs"])),
    ("PrimaryIsolationScriptFailed", Sent::At(&["notify/catalog.rs"])),
    ("RemotePrePromotionScriptFailed", Sent::At(&["notify/catalog.rs"])),
    ("RemotePostPromotionScriptFailed", Sent::At(&["notify/catalog.rs"])),
    ("ResumedScriptFailed", Sent::At(&["notify/catalog.rs"])),
    ("LoadBalancerAttachScriptFailed", Sent::At(&["notify/catalog.rs"])),
    ("LoadBalancerDetachScriptFailed", Sent::At(&["notify/catalog.rs"])),
    ("PromotionFailed", Sent::At(&["ha/runtime.rs"])),
    ("DemotionFailed", Sent::At(&["ha/standby.rs"])),
    ("UnexpectedError", Sent::At(&["ha/runtime.rs"])),
    ("PrimaryFencedOff", Sent::At(&["ha/standby.rs"])),
    ("IsolatedPrimary", Sent::At(&["ha/primary.rs"])),
    ("VipAssignFailed", Sent::At(&["ha/effects.rs"])),
    ("DatabaseFailure", Sent::At(&["ha/primary.rs", "ha/standby.rs"])),
    ("AgentTimingOut", Sent::At(&["notify/local.rs"])),
    ("ResumeTimedOut", Sent::At(&["ha/runtime.rs"])),
    ("InternalStateMismatch", Sent::At(&["ha/effects.rs"])),
    ("DatabaseWrongState", Sent::At(&["ha/standby.rs"])),
    ("DatabaseConnectionFailure", Sent::At(&["ha/confirm.rs"])),
    ("StandbyCustomMonitorFailure", Sent::At(&["custom_monitor.rs"])),
    ("PrimaryCustomMonitorFailure", Sent::At(&["custom_monitor.rs"])),
    ("Custom", Sent::NotApplicable("not an EFM event: a subject of the caller's own; efm itself sends none")),
];

/// The source of the files [`SENT`] names.
fn source(path: &str) -> &'static str {
    match path {
        "agent.rs" => include_str!("../agent.rs"),
        "bin/efm-agent.rs" => include_str!("../bin/efm-agent.rs"),
        "custom_monitor.rs" => include_str!("../custom_monitor.rs"),
        "operator.rs" => include_str!("../operator.rs"),
        "notify/catalog.rs" => include_str!("catalog.rs"),
        "notify/local.rs" => include_str!("local.rs"),
        "ha/confirm.rs" => include_str!("../ha/confirm.rs"),
        "ha/effects.rs" => include_str!("../ha/effects.rs"),
        "ha/leader.rs" => include_str!("../ha/leader.rs"),
        "ha/local.rs" => include_str!("../ha/local.rs"),
        "ha/monitoring.rs" => include_str!("../ha/monitoring.rs"),
        "ha/primary.rs" => include_str!("../ha/primary.rs"),
        "ha/runtime.rs" => include_str!("../ha/runtime.rs"),
        "ha/standby.rs" => include_str!("../ha/standby.rs"),
        "ha/voter.rs" => include_str!("../ha/voter.rs"),
        other => panic!("SENT names {other}, which source() does not know"),
    }
}

/// Every event is either sent from a named place (the source constructs it there:
/// `Event::X`/`Notice::X` — for the script events, `Event::for_script`, which `run_hook`
/// uses for every hook) or documented as not applicable with the reason; the golden list of
/// subjects above covers every variant too.
#[test]
fn every_event_is_sent_somewhere_or_documented_as_not_applicable() {
    let names: Vec<&str> = every_event().iter().map(variant).collect();
    let mut listed: Vec<&str> = SENT.iter().map(|(n, _)| *n).collect();
    listed.sort_unstable();
    let mut all = names.clone();
    all.sort_unstable();
    all.dedup();
    assert_eq!(listed, all, "SENT must list every variant exactly once");
    let mut unsent = Vec::new();
    for (name, sent) in SENT {
        match sent {
            Sent::At(files) => {
                let found = files.iter().any(|f| {
                    let text = source(f);
                    // Constructed, not merely named in a pattern: followed by a field list, a
                    // comma, a closing parenthesis or the end of a statement.
                    [format!("Event::{name}"), format!("Notice::{name}")].iter().any(|pat| {
                        text.match_indices(pat.as_str()).any(|(i, _)| {
                            let after = text[i + pat.len()..].trim_start();
                            !after.starts_with("=>")
                                && !after.starts_with("{ ..")
                                && !text[i + pat.len()..].starts_with(|c: char| c.is_alphanumeric())
                        })
                    })
                });
                if !found {
                    unsent.push(format!("{name}: not constructed in {files:?}"));
                }
            }
            Sent::NotApplicable(why) => assert!(why.len() > 20, "{name}: say why"),
        }
    }
    assert!(unsent.is_empty(), "events not sent where SENT says:\n{}", unsent.join("\n"));
}
