use super::*;

const PRIMARY: &str = "198.18.0.1";
const STANDBY: &str = "198.18.0.2";
const WITNESS: &str = "198.18.0.3";
const STANDBY2: &str = "198.18.0.4";
const VIP: &str = "198.18.0.100";

fn hb(age_ms: Option<u64>, p50: Option<u64>, p99: Option<u64>, verdict: Verdict) -> Heartbeat {
    Heartbeat { age_ms, rtt_p50_us: p50, rtt_p99_us: p99, verdict }
}

fn primary(lsn: &str) -> NodeStatus {
    NodeStatus {
        agent_type: AgentType::Primary,
        agent: AgentState::Up,
        db: DbState::Up,
        vip: VIP.to_owned(),
        vip_active: true,
        lsn: Some(lsn.to_owned()),
        lsn_info: Some(String::new()),
        promotion: Promotion { received_lsn: None, priority: None, promotable: true },
        heartbeat: hb(None, None, None, Verdict::SelfNode),
    }
}

fn standby(received: &str, replayed: &str, priority: u32) -> NodeStatus {
    NodeStatus {
        agent_type: AgentType::Standby,
        agent: AgentState::Up,
        db: DbState::Up,
        vip: VIP.to_owned(),
        vip_active: false,
        lsn: Some(replayed.to_owned()),
        lsn_info: Some(String::new()),
        promotion: Promotion { received_lsn: Some(received.to_owned()), priority: Some(priority), promotable: true },
        heartbeat: hb(Some(12), Some(85), Some(140), Verdict::Alive),
    }
}

fn witness() -> NodeStatus {
    NodeStatus {
        agent_type: AgentType::Witness,
        agent: AgentState::Up,
        db: DbState::NotApplicable,
        vip: String::new(),
        vip_active: false,
        lsn: None,
        lsn_info: None,
        promotion: Promotion::default(),
        heartbeat: hb(Some(7), Some(92), Some(1_250), Verdict::Alive),
    }
}

/// (a) Healthy: primary (this node), one standby, one witness.
fn healthy() -> ClusterStatus {
    let mut s = ClusterStatus {
        allowed_nodes: vec![PRIMARY.into(), STANDBY.into(), WITNESS.into()],
        membership_coordinator: PRIMARY.into(),
        failover_priority: vec![STANDBY.into()],
        efm: Extension { version: "0.1.0".into(), epoch: 7, cluster: "efm".into(), ..Default::default() },
        ..Default::default()
    };
    s.nodes.insert(PRIMARY.into(), primary("0/31000140"));
    s.nodes.insert(STANDBY.into(), standby("0/31000140", "0/31000140", 1));
    s.nodes.insert(WITNESS.into(), witness());
    s
}

/// (b) The standby has received everything but replayed less.
fn standby_behind() -> ClusterStatus {
    let mut s = healthy();
    s.nodes.insert(STANDBY.into(), standby("0/31000140", "0/30FFFF00", 1));
    s
}

/// (c) A second standby whose database went down: its agent is Idle.
fn with_idle() -> ClusterStatus {
    let mut s = healthy();
    s.allowed_nodes.push(STANDBY2.into());
    s.nodes.insert(
        STANDBY2.into(),
        NodeStatus {
            agent_type: AgentType::Idle,
            db: DbState::Unknown,
            vip_active: false,
            lsn: Some(LSN_UNKNOWN.into()),
            lsn_info: Some("Connection refused.".into()),
            promotion: Promotion { received_lsn: None, priority: None, promotable: true },
            heartbeat: hb(Some(15), Some(80), Some(130), Verdict::Alive),
            ..primary(LSN_UNKNOWN)
        },
    );
    s
}

/// (d) Standby's agent died (kernel still answers), witness node is dead.
fn with_missing() -> ClusterStatus {
    let mut s = healthy();
    s.nodes.remove(STANDBY);
    s.nodes.remove(WITNESS);
    s.add_missing(
        STANDBY,
        MissingNode {
            last_type: Some(AgentType::Standby),
            heartbeat: hb(Some(40), Some(88), Some(150), Verdict::AgentDeadNodeAlive),
        },
    );
    s.add_missing(
        WITNESS,
        MissingNode { last_type: Some(AgentType::Witness), heartbeat: hb(Some(31_400), None, None, Verdict::NodeDead) },
    );
    s
}

/// Golden report for case (a).
const HEALTHY_TEXT: &str = "\
Cluster Status: efm

\tAgent Type  Address              Agent  DB       VIP               HB age   RTT p50/p99
\t---------------------------------------------------------------------------------------
\tPrimary     198.18.0.1           UP     UP       198.18.0.100*     -        -
\tStandby     198.18.0.2           UP     UP       198.18.0.100      12ms     85us/140us
\tWitness     198.18.0.3           UP     N/A                        7ms      92us/1.2ms

Allowed node host list:
\t198.18.0.1 198.18.0.2 198.18.0.3

Membership coordinator: 198.18.0.1

Standby priority host list:
\t198.18.0.2

Promote Status:

\tDB Type     Address              WAL Received LSN   WAL Replayed LSN   Info
\t---------------------------------------------------------------------------
\tPrimary     198.18.0.1                              0/31000140
\tStandby     198.18.0.2           0/31000140         0/31000140

\tStandby database(s) in sync with primary. It is safe to promote.
";

/// Golden report for case (b).
const BEHIND_TEXT: &str = "\
Cluster Status: efm

\tAgent Type  Address              Agent  DB       VIP               HB age   RTT p50/p99
\t---------------------------------------------------------------------------------------
\tPrimary     198.18.0.1           UP     UP       198.18.0.100*     -        -
\tStandby     198.18.0.2           UP     UP       198.18.0.100      12ms     85us/140us
\tWitness     198.18.0.3           UP     N/A                        7ms      92us/1.2ms

Allowed node host list:
\t198.18.0.1 198.18.0.2 198.18.0.3

Membership coordinator: 198.18.0.1

Standby priority host list:
\t198.18.0.2

Promote Status:

\tDB Type     Address              WAL Received LSN   WAL Replayed LSN   Info
\t---------------------------------------------------------------------------
\tPrimary     198.18.0.1                              0/31000140
\tStandby     198.18.0.2           0/31000140         0/30FFFF00

\tOne or more standby databases are not in sync with the primary.
\tStandby 198.18.0.2 has replayed up to 0/30FFFF00, primary is at 0/31000140.
\tIt is not safe to promote.
";

/// Golden report for case (c).
const IDLE_TEXT: &str = "\
Cluster Status: efm

\tAgent Type  Address              Agent  DB       VIP               HB age   RTT p50/p99
\t---------------------------------------------------------------------------------------
\tPrimary     198.18.0.1           UP     UP       198.18.0.100*     -        -
\tStandby     198.18.0.2           UP     UP       198.18.0.100      12ms     85us/140us
\tWitness     198.18.0.3           UP     N/A                        7ms      92us/1.2ms
\tIdle        198.18.0.4           UP     UNKNOWN  198.18.0.100      15ms     80us/130us

Allowed node host list:
\t198.18.0.1 198.18.0.2 198.18.0.3 198.18.0.4

Membership coordinator: 198.18.0.1

Standby priority host list:
\t198.18.0.2

Promote Status:

\tDB Type     Address              WAL Received LSN   WAL Replayed LSN   Info
\t---------------------------------------------------------------------------
\tPrimary     198.18.0.1                              0/31000140
\tStandby     198.18.0.2           0/31000140         0/31000140

\tStandby database(s) in sync with primary. It is safe to promote.

Idle Node Status (idle nodes ignored in WAL LSN comparisons):

\tAddress              WAL Received LSN   WAL Replayed LSN   Info
\t------------------------------------------------------------------------------
\t198.18.0.4           UNKNOWN            UNKNOWN            Connection refused.
";

/// Golden report for case (d).
const MISSING_TEXT: &str = "\
Cluster Status: efm

\tAgent Type  Address              Agent  DB       VIP               HB age   RTT p50/p99
\t---------------------------------------------------------------------------------------
\tPrimary     198.18.0.1           UP     UP       198.18.0.100*     -        -

Missing nodes:

\tAgent Type  Address              Heartbeat                HB age
\t----------------------------------------------------------------
\tStandby     198.18.0.2           agent dead, node alive   40ms
\tWitness     198.18.0.3           node dead                31.4s

Allowed node host list:
\t198.18.0.1 198.18.0.2 198.18.0.3

Membership coordinator: 198.18.0.1

Standby priority host list:
\t198.18.0.2

Promote Status:

\tDB Type     Address              WAL Received LSN   WAL Replayed LSN   Info
\t---------------------------------------------------------------------------
\tPrimary     198.18.0.1                              0/31000140

\tNo standby databases were found.
\tIt is not safe to promote.
";

#[test]
fn golden_healthy() {
    assert_eq!(render_text(&healthy()), HEALTHY_TEXT);
}

#[test]
fn golden_standby_behind() {
    assert_eq!(render_text(&standby_behind()), BEHIND_TEXT);
}

#[test]
fn golden_idle_node() {
    assert_eq!(render_text(&with_idle()), IDLE_TEXT);
}

#[test]
fn golden_missing_nodes() {
    assert_eq!(render_text(&with_missing()), MISSING_TEXT);
}

#[test]
fn columns_grow_for_long_addresses() {
    let mut s = healthy();
    let v6 = "2001:db8:ffff:ffff:ffff:ffff:ffff:2";
    let node = s.nodes.remove(STANDBY).unwrap();
    s.nodes.insert(v6.into(), node);
    s.failover_priority = vec![v6.into()];
    let text = render_text(&s);
    // The longest address plus two spaces sets the column width; IPv4 sorts before IPv6.
    assert!(text.contains("\tPrimary     198.18.0.1                           UP     UP"), "{text}");
    assert!(text.contains(&format!("\tStandby     {v6}  UP     UP")), "{text}");
    let promote = text.split("Promote Status:").nth(1).unwrap();
    assert!(promote.contains(&format!("\tStandby     {v6}  0/31000140")), "{promote}");
}

#[test]
fn standbys_listed_in_priority_order_and_empty_lists_say_so() {
    let mut s = healthy();
    s.nodes.insert(STANDBY2.into(), standby("0/31000140", "0/31000140", 1));
    s.failover_priority = vec![STANDBY2.into(), STANDBY.into()];
    let text = render_text(&s);
    let promote = text.split("Promote Status:").nth(1).unwrap();
    let first = promote.find(STANDBY2).unwrap();
    let second = promote.find(STANDBY).unwrap();
    assert!(first < second, "{promote}");

    s.failover_priority.clear();
    let text = render_text(&s);
    assert!(text.contains("Standby priority host list:\n\t(List is empty.)\n"), "{text}");
}

#[test]
fn partial_sync_names_the_safe_standbys() {
    let mut s = healthy();
    s.nodes.insert(STANDBY2.into(), standby("0/31000140", "0/31000000", 2));
    s.failover_priority.push(STANDBY2.into());
    let text = render_text(&s);
    assert!(text.contains("\tOne or more standby databases are not in sync with the primary.\n"));
    assert!(text.contains("\tStandby database(s) in sync with primary, safe to promote: 198.18.0.2.\n"));
    assert_eq!(exit_code(&s), 1);
}

#[test]
fn messages_are_printed_last() {
    let mut s = healthy();
    s.messages.push("Node 198.18.0.9 is not allowed to join.".into());
    let text = render_text(&s);
    assert!(text.ends_with("safe to promote.\n\nNode 198.18.0.9 is not allowed to join.\n"));
}

#[test]
fn automatic_failover_disabled_is_said_under_the_verdict() {
    let mut s = healthy();
    for on in [None, Some(true)] {
        s.efm.auto_failover = on;
        assert!(!render_text(&s).contains("Automatic failover"), "{on:?}");
    }
    s.efm.auto_failover = Some(false);
    let text = render_text(&s);
    assert!(
        text.contains(
            "\tStandby database(s) in sync with primary. It is safe to promote.\n\tAutomatic failover is disabled.\n"
        ),
        "{text}"
    );
    assert_eq!(text.matches("Automatic failover is disabled.").count(), 1);
    assert_eq!(json(&s)["efm"]["auto_failover"], serde_json::Value::Bool(false));
    // EFM's own keys are unchanged; an agent that does not report it reads as unknown.
    let back: ClusterStatus = serde_json::from_str(&healthy().to_json()).unwrap();
    assert_eq!(back.efm.auto_failover, None);
}

// ---- JSON ----

fn json(s: &ClusterStatus) -> serde_json::Value {
    serde_json::from_str(&s.to_json()).unwrap()
}

#[test]
fn json_uses_efm5_field_names() {
    let v = json(&healthy());
    let top: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    for key in [
        "nodes",
        "allowednodes",
        "membershipcoordinator",
        "failoverpriority",
        "minimumstandbys",
        "missingnodes",
        "messages",
        "efm",
    ] {
        assert!(top.contains(&key), "missing top-level {key}: {top:?}");
    }
    assert_eq!(v["membershipcoordinator"], PRIMARY);
    assert_eq!(v["failoverpriority"], serde_json::json!([STANDBY]));
    assert_eq!(v["minimumstandbys"], 0);
    assert_eq!(v["missingnodes"], serde_json::json!([]));
    assert_eq!(v["messages"], serde_json::json!([]));
    assert_eq!(v["efm"]["version"], "0.1.0");
    assert_eq!(v["efm"]["epoch"], 7);

    let p = &v["nodes"][PRIMARY];
    assert_eq!(p["type"], "Primary");
    assert_eq!(p["agent"], "UP");
    assert_eq!(p["db"], "UP");
    assert_eq!(p["vip"], VIP);
    assert_eq!(p["vip_active"], true);
    assert_eq!(p["lsn"], "0/31000140");
    assert_eq!(p["lsninfo"], "");
    assert_eq!(p["heartbeat"]["verdict"], "self");

    let sb = &v["nodes"][STANDBY];
    assert_eq!(sb["type"], "Standby");
    assert_eq!(sb["vip_active"], false);
    assert_eq!(sb["promotion"]["receivedLsn"], "0/31000140");
    assert_eq!(sb["promotion"]["priority"], 1);
    assert_eq!(sb["promotion"]["promotable"], true);
    assert_eq!(sb["heartbeat"]["ageMs"], 12);
    assert_eq!(sb["heartbeat"]["rttP50Us"], 85);
    assert_eq!(sb["heartbeat"]["rttP99Us"], 140);
    assert_eq!(sb["heartbeat"]["verdict"], "alive");

    // A witness has no database: "N/A", and no LSN keys at all (as in EFM's example).
    let w = v["nodes"][WITNESS].as_object().unwrap();
    assert_eq!(w["db"], "N/A");
    assert!(!w.contains_key("lsn") && !w.contains_key("lsninfo"));

    let text = healthy().to_json();
    assert!(text.contains("\"lsn\""));
    assert!(!text.contains("xlog"), "{text}");
    assert!(!text.contains("Master"), "{text}");
}

#[test]
fn json_key_order_follows_efm() {
    let text = healthy().to_json();
    let pos = |k: &str| text.find(&format!("\"{k}\"")).unwrap();
    let order = [
        "nodes",
        "allowednodes",
        "membershipcoordinator",
        "failoverpriority",
        "minimumstandbys",
        "missingnodes",
        "messages",
        "efm",
    ];
    assert!(order.windows(2).all(|w| pos(w[0]) < pos(w[1])), "{text}");
    let node = ["type", "agent", "db", "vip", "vip_active", "lsn", "lsninfo"];
    assert!(node.windows(2).all(|w| pos(w[0]) < pos(w[1])), "{text}");
}

#[test]
fn json_missing_nodes_and_verdicts() {
    let v = json(&with_missing());
    assert_eq!(v["missingnodes"], serde_json::json!([STANDBY, WITNESS]));
    assert!(v["nodes"].get(STANDBY).is_none());
    let m = &v["efm"]["missing"];
    assert_eq!(m[STANDBY]["type"], "Standby");
    assert_eq!(m[STANDBY]["heartbeat"]["verdict"], "agent dead, node alive");
    assert_eq!(m[WITNESS]["heartbeat"]["verdict"], "node dead");
    assert_eq!(m[WITNESS]["heartbeat"]["rttP50Us"], serde_json::Value::Null);
}

#[test]
fn json_round_trip() {
    for s in [healthy(), standby_behind(), with_idle(), with_missing()] {
        let back: ClusterStatus = serde_json::from_str(&s.to_json()).unwrap();
        assert_eq!(back, s);
    }
}

#[test]
fn add_missing_is_idempotent() {
    let mut s = with_missing();
    s.add_missing(STANDBY, MissingNode::default());
    assert_eq!(s.missing_nodes, vec![STANDBY.to_owned(), WITNESS.to_owned()]);
    assert_eq!(s.efm.missing[STANDBY].heartbeat.verdict, Verdict::Unknown);
}

/// EFM 3.3's documented `cluster-status-json` example (with its "Master" and "xlog"
/// spellings and Java's escaped slash) reads into our model; our keys default.
#[test]
fn reads_efm_33_json() {
    let efm33 = r#"{
        "nodes": {
            "172.16.144.176": {"type": "Witness", "agent": "UP", "db": "N\/A",
                               "vip": "", "vip_active": false},
            "172.16.144.177": {"type": "Master", "agent": "UP", "db": "UP",
                               "vip": "", "vip_active": false,
                               "xlog": "2\/77000220", "xloginfo": ""},
            "172.16.144.180": {"type": "Standby", "agent": "UP", "db": "UP",
                               "vip": "", "vip_active": false,
                               "xlog": "2\/77000220", "xloginfo": ""}
        },
        "allowednodes": ["172.16.144.177", "172.16.144.160", "172.16.144.180",
                         "172.16.144.176"],
        "membershipcoordinator": "172.16.144.177",
        "failoverpriority": ["172.16.144.180"],
        "minimumstandbys": 0,
        "missingnodes": [],
        "messages": []
    }"#;
    let s: ClusterStatus = serde_json::from_str(efm33).unwrap();
    assert_eq!(s.nodes["172.16.144.177"].agent_type, AgentType::Primary);
    assert_eq!(s.nodes["172.16.144.176"].db, DbState::NotApplicable);
    assert_eq!(s.nodes["172.16.144.180"].lsn.as_deref(), Some("2/77000220"));
    assert_eq!(s.nodes["172.16.144.180"].heartbeat.verdict, Verdict::Unknown);
    assert_eq!(exit_code(&s), 0);
    // Written back out, it uses EFM 5 names.
    let out = s.to_json();
    assert!(out.contains("\"lsn\": \"2/77000220\"") && !out.contains("xlog"), "{out}");
}

// ---- exit codes ----

#[test]
fn exit_codes_for_the_golden_cases() {
    assert_eq!(exit_code(&healthy()), 0);
    assert!(problems(&healthy()).is_empty());

    assert_eq!(exit_code(&standby_behind()), 1);
    assert_eq!(
        problems(&standby_behind()),
        vec![Problem::NotInSync {
            address: STANDBY.into(),
            replayed: "0/30FFFF00".into(),
            primary: "0/31000140".into(),
        }]
    );

    assert_eq!(exit_code(&with_idle()), 1);
    assert_eq!(problems(&with_idle()), vec![Problem::IdleAgent(STANDBY2.into())]);

    assert_eq!(exit_code(&with_missing()), 1);
    assert_eq!(
        problems(&with_missing()),
        vec![Problem::MissingAgents(vec![STANDBY.into(), WITNESS.into()]), Problem::NoStandby]
    );
}

#[test]
fn exit_code_rules() {
    // Database down on a standby: it is reported, and its LSN is unknown.
    let mut s = healthy();
    let sb = s.nodes.get_mut(STANDBY).unwrap();
    sb.db = DbState::Down;
    sb.lsn = Some(LSN_UNKNOWN.into());
    assert_eq!(exit_code(&s), 1);
    assert_eq!(
        problems(&s),
        vec![
            Problem::DatabaseNotUp { address: STANDBY.into(), db: DbState::Down },
            Problem::LsnUnavailable(STANDBY.into()),
        ]
    );

    // Primary LSN could not be read.
    let mut s = healthy();
    s.nodes.get_mut(PRIMARY).unwrap().lsn = None;
    assert_eq!(problems(&s), vec![Problem::LsnUnavailable(PRIMARY.into())]);

    // No primary agent.
    let mut s = healthy();
    s.nodes.remove(PRIMARY);
    assert_eq!(problems(&s), vec![Problem::NoPrimary]);
    assert!(render_text(&s).contains("\tNo primary database was found.\n\tIt is not safe"));

    // Two primaries.
    let mut s = healthy();
    s.nodes.insert(STANDBY2.into(), primary("0/31000140"));
    assert_eq!(problems(&s), vec![Problem::MultiplePrimaries(vec![PRIMARY.into(), STANDBY2.into()])]);

    // Primary and witness only: no standby.
    let mut s = healthy();
    s.nodes.remove(STANDBY);
    assert_eq!(exit_code(&s), 1);

    // A witness's N/A database and missing VIPs do not matter.
    let mut s = healthy();
    for n in s.nodes.values_mut() {
        n.vip.clear();
        n.vip_active = false;
    }
    assert_eq!(exit_code(&s), 0);

    // A standby ahead of the (earlier-queried) primary is in sync.
    let mut s = healthy();
    s.nodes.get_mut(STANDBY).unwrap().lsn = Some("0/31000200".into());
    assert_eq!(exit_code(&s), 0);
}

// ---- LSN ----

#[test]
fn lsn_parsing_and_sync() {
    assert_eq!(parse_lsn("0/0"), Some(Lsn(0)));
    assert_eq!(parse_lsn("0/31000140"), Some(Lsn(0x3100_0140)));
    assert_eq!(parse_lsn(" 2/77000220\n"), Some(Lsn((2 << 32) | 0x7700_0220)));
    assert_eq!(parse_lsn("FFFFFFFF/FFFFFFFF"), Some(Lsn(u64::MAX)));
    assert_eq!(parse_lsn("ab/cd"), Some(Lsn((0xab << 32) | 0xcd)));
    for bad in ["", "/", "0/", "/0", "0", "UNKNOWN", "1/2/3", "100000000/0", "0/-1", "0/+1", "g/0"] {
        assert_eq!(parse_lsn(bad), None, "{bad}");
    }

    assert!(lsn_in_sync("0/31000140", "0/31000140"));
    assert!(lsn_in_sync("0/31000140", "0/31000141"));
    assert!(!lsn_in_sync("0/31000140", "0/3100013F"));
    // Compared as numbers, not as text ("0/A0" sorts after "0/9F0" as a string).
    assert!(!lsn_in_sync("0/9F0", "0/A0"));
    assert!(lsn_in_sync("0/FFFFFFFF", "1/0"));
    assert!(!lsn_in_sync("0/1", LSN_UNKNOWN));
    assert!(!lsn_in_sync(LSN_UNKNOWN, "0/1"));
}

#[test]
fn duration_formats() {
    let h = |age| Heartbeat { age_ms: Some(age), ..Heartbeat::default() };
    assert_eq!(render::hb_age_for_test(&h(0)), "0ms");
    assert_eq!(render::hb_age_for_test(&h(999)), "999ms");
    assert_eq!(render::hb_age_for_test(&h(1_050)), "1.0s");
    assert_eq!(render::hb_age_for_test(&h(99_999)), "99.9s");
    assert_eq!(render::hb_age_for_test(&h(3_600_000)), "3600s");
    assert_eq!(render::hb_age_for_test(&Heartbeat::default()), "-");
}
