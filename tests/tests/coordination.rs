//! The Raft coordination layer with real TCP between in-process coordinators on loopback
//! (127.0.0.11 .. 127.0.0.13; each test its own port): cluster formation from identical `.nodes`
//! files, forwarding, at most one promotion per epoch, leader failover (timed), restart with the
//! redb state and catch-up by snapshot, joins, forged frames, and a minority that cannot commit.

#![allow(clippy::many_single_char_names)]

use std::{
    fs,
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpStream},
    path::{Path, PathBuf},
    sync::atomic::{AtomicU16, Ordering},
    time::{Duration, Instant},
};

use efm_agent::coordination::{
    wire, ClusterState, Command, CoordConfig, CoordError, Coordinator, NodeInfo, NodeKind, RaftTimings, Rejected,
};

const CLUSTER: &str = "coordtest";

static PORT_SEQ: AtomicU16 = AtomicU16::new(0);

/// A port for one test: distinct per test and per process.
fn port() -> u16 {
    let base = 21_000 + u16::try_from(std::process::id() % 400).unwrap() * 50;
    base + PORT_SEQ.fetch_add(1, Ordering::Relaxed)
}

fn addr(i: u8, port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::new(127, 0, 0, 10 + i), port))
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!("efm-coord-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(&p).unwrap();
        Self(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

const DB: NodeInfo = NodeInfo { kind: NodeKind::Database, priority: 1, promotable: true };

fn config(root: &Path, me: SocketAddr, members: &[SocketAddr], timings: &RaftTimings) -> CoordConfig {
    let dir = root.join(me.ip().to_string());
    fs::create_dir_all(&dir).unwrap();
    let nodes_file_path = dir.join(format!("{CLUSTER}.nodes"));
    let text: Vec<String> = members.iter().map(ToString::to_string).collect();
    if !nodes_file_path.exists() {
        fs::write(&nodes_file_path, text.join(" ") + "\n").unwrap();
    }
    CoordConfig {
        cluster: CLUSTER.into(),
        me,
        key: efm_tests::key(),
        state_dir: dir,
        nodes_file_members: members.to_vec(),
        kind: DB.kind,
        priority: DB.priority,
        promotable: DB.promotable,
        auto_allow_hosts: false,
        stable_nodes_file: false,
        nodes_file_path,
        timings: timings.clone(),
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(4).enable_all().build().unwrap()
}

async fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < timeout, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Waits until every given node reports the same leader, which is one of them; returns it.
async fn agreed_leader(nodes: &[&Coordinator], timeout: Duration) -> SocketAddr {
    let mut leader = None;
    wait_for("a leader all nodes agree on", timeout, || {
        let ls: Vec<_> = nodes.iter().map(|c| c.leader()).collect();
        leader = ls[0];
        ls.iter().all(|l| l.is_some() && *l == ls[0]) && nodes.iter().any(|c| c.is_leader())
    })
    .await;
    leader.unwrap()
}

async fn wait_state(c: &Coordinator, want: &ClusterState, timeout: Duration) {
    let mut rx = c.state();
    let start = Instant::now();
    while **rx.borrow_and_update() != *want {
        let left = timeout.checked_sub(start.elapsed()).unwrap_or_default();
        assert!(
            tokio::time::timeout(left, rx.changed()).await.is_ok(),
            "state did not converge within {timeout:?}: have {:?}, want {want:?}",
            **rx.borrow()
        );
    }
}

async fn start3(root: &Path, port: u16, t: &RaftTimings) -> (Vec<SocketAddr>, Vec<Option<Coordinator>>) {
    let addrs: Vec<SocketAddr> = (1..=3).map(|i| addr(i, port)).collect();
    let cfgs: Vec<CoordConfig> = addrs.iter().map(|a| config(root, *a, &addrs, t)).collect();
    let started = futures_join_all(cfgs).await;
    (addrs, started.into_iter().map(Some).collect())
}

async fn futures_join_all(cfgs: Vec<CoordConfig>) -> Vec<Coordinator> {
    let handles: Vec<_> = cfgs.into_iter().map(|c| tokio::spawn(Coordinator::start(c))).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap().expect("coordinator start"));
    }
    out
}

fn live(nodes: &[Option<Coordinator>]) -> Vec<&Coordinator> {
    nodes.iter().flatten().collect()
}

fn promote(candidate: SocketAddr, expected_epoch: u64, reason: &str) -> Command {
    Command::Promote { candidate, expected_epoch, lsn: 0x300_0000, timeline: 2, at_unix_ms: 1, reason: reason.into() }
}

#[test]
fn coordination_cluster_forms_and_one_promotion_per_epoch() {
    let root = TempDir::new("form");
    let t = RaftTimings::default();
    rt().block_on(async {
        let (addrs, nodes) = start3(&root.0, port(), &t).await;
        let t0 = Instant::now();
        let leader = agreed_leader(&live(&nodes), Duration::from_secs(5)).await;
        eprintln!("3-node cluster formed from identical .nodes files; leader {leader} after {:?}", t0.elapsed());
        let n: Vec<&Coordinator> = live(&nodes);
        for c in &n {
            let m = c.metrics();
            let mut voters = m.voters.clone();
            voters.sort();
            assert_eq!(voters, addrs, "every node holds the full voter set");
        }
        // Every node registers itself through its own coordinator (followers forward).
        for (i, c) in n.iter().enumerate() {
            let r = c.propose(Command::Register { node: addrs[i], info: DB }).await.unwrap();
            assert!(r.unwrap().changed);
        }
        // Unknown nodes cannot register.
        let stranger = addr(9, 1);
        assert_eq!(
            n[0].propose(Command::Register { node: stranger, info: DB }).await.unwrap(),
            Err(Rejected::NotAllowed(stranger))
        );
        let r = n[1].propose(Command::SetPrimary { node: addrs[0], expected_epoch: 0 }).await.unwrap().unwrap();
        assert_eq!((r.epoch, r.primary), (1, Some(addrs[0])));

        // Replacing the primary needs votes from a majority (2 of 3).
        let r = n[0].propose(promote(addrs[1], 1, "no votes yet")).await.unwrap();
        assert_eq!(r, Err(Rejected::NotEnoughVotes { have: 0, need: 2 }));
        for (i, c) in n.iter().enumerate().skip(1) {
            let vote = Command::Vote { voter: addrs[i], epoch: 1 };
            c.propose(vote).await.unwrap().unwrap();
        }
        // Two standbys race to be promoted for epoch 1 from different nodes.
        let (a, b) = tokio::join!(
            n[1].propose(promote(addrs[1], 1, "race from node 2")),
            n[2].propose(promote(addrs[2], 1, "race from node 3"))
        );
        let (a, b) = (a.unwrap(), b.unwrap());
        eprintln!("concurrent promotions: node 2 -> {a:?}, node 3 -> {b:?}");
        assert_eq!(u8::from(a.is_ok()) + u8::from(b.is_ok()), 1, "exactly one promotion applies");
        let loser = if a.is_ok() { &b } else { &a };
        assert_eq!(loser, &Err(Rejected::StaleEpoch { expected: 1, current: 2 }));
        let winner = if a.is_ok() { addrs[1] } else { addrs[2] };
        // All replicas agree.
        let want = (**n[0].state().borrow()).clone();
        for c in &n {
            wait_state(c, &want, Duration::from_secs(2)).await;
        }
        let s = n[2].state().borrow().clone();
        assert_eq!((s.epoch, s.primary, s.history.len()), (2, Some(winner), 1));

        // Read barrier: a change committed through one node is in another node's state as soon
        // as that node's sync() returns (an operator's set-priority on n1, then promote on n3).
        for round in 0..20u32 {
            let (w, r) = (round as usize % 3, (round as usize + 1) % 3);
            let priority = 10 + round;
            n[w].propose(Command::SetPriority { node: addrs[w], priority }).await.unwrap().unwrap();
            n[r].sync().await.expect("read barrier");
            let seen = n[r].state().borrow().info(&addrs[w]).map(|i| i.priority);
            assert_eq!(
                seen,
                Some(priority),
                "round {round}: node {} after sync() sees node {}'s priority",
                r + 1,
                w + 1
            );
        }
        assert_eq!(s.history[0].epoch, 2);
        // .nodes files: membership == list, so they hold the same members.
        for c in nodes.into_iter().flatten() {
            c.shutdown().await;
        }
    });
}

#[test]
#[allow(clippy::too_many_lines)]
fn coordination_leader_failover_restart_and_minority() {
    let root = TempDir::new("failover");
    // Snapshot every 10 entries, so a node that was down catches up by snapshot.
    let t = RaftTimings { snapshot_every: 10, ..RaftTimings::default() };
    rt().block_on(async {
        let port = port();
        let (addrs, mut nodes) = start3(&root.0, port, &t).await;
        agreed_leader(&live(&nodes), Duration::from_secs(5)).await;
        for (i, a) in addrs.iter().enumerate() {
            live(&nodes)[i].propose(Command::Register { node: *a, info: DB }).await.unwrap().unwrap();
        }
        let mut times = Vec::new();
        for round in 0..5u64 {
            let old = agreed_leader(&live(&nodes), Duration::from_secs(5)).await;
            let idx = addrs.iter().position(|a| *a == old).unwrap();
            let killed = nodes[idx].take().unwrap();
            let t0 = Instant::now();
            killed.shutdown().await;
            let new = agreed_leader(&live(&nodes), Duration::from_secs(5)).await;
            let elected = t0.elapsed();
            assert_ne!(new, old);
            // A proposal commits under the new leader.
            let p0 = Instant::now();
            let r = live(&nodes)[0].propose(Command::SetPaused(round % 2 == 0)).await.unwrap().unwrap();
            let committed = t0.elapsed();
            eprintln!(
                "round {round}: killed leader {old}; new leader {new} after {elected:?}; first proposal \
                 committed after {committed:?} ({:?} for the proposal)",
                p0.elapsed()
            );
            assert!(r.changed);
            times.push(elected);
            // More entries while the old leader is down: beyond the snapshot interval, so the
            // restarted node must be sent a snapshot (its log was purged on the others).
            for k in 0..15 {
                live(&nodes)[1]
                    .propose(Command::SetPriority { node: addrs[(idx + 1) % 3], priority: 10 + k })
                    .await
                    .unwrap()
                    .unwrap();
            }
            // Restart it from its redb state.
            let cfg = config(&root.0, old, &addrs, &t);
            let s0 = Instant::now();
            let restarted = Coordinator::start(cfg).await.expect("restart");
            nodes[idx] = Some(restarted);
            let want = (**nodes[(idx + 1) % 3].as_ref().unwrap().state().borrow()).clone();
            for c in live(&nodes) {
                wait_state(c, &want, Duration::from_secs(5)).await;
            }
            eprintln!("round {round}: {old} restarted and caught up after {:?}", s0.elapsed());
            let m = nodes[idx].as_ref().unwrap().metrics();
            assert_eq!(m.voters.len(), 3, "the restarted node is still a voter: {m:?}");
        }
        times.sort();
        eprintln!(
            "leader election after killing the leader (3 nodes, heartbeat {} ms, election {}-{} ms): \
             min {:?}, median {:?}, max {:?}",
            t.heartbeat_ms,
            t.election_min_ms,
            t.election_max_ms,
            times[0],
            times[times.len() / 2],
            times[times.len() - 1]
        );
        assert!(times[times.len() - 1] < Duration::from_millis(1_200), "a leader change must fit in the lease wait");

        // Minority: shut two nodes down; the survivor cannot commit.
        let survivor = nodes.pop().unwrap().unwrap();
        for c in nodes.into_iter().flatten() {
            c.shutdown().await;
        }
        let before = (**survivor.state().borrow()).clone();
        let t0 = Instant::now();
        let r = survivor.propose(Command::SetAutoFailover(false)).await;
        let waited = t0.elapsed();
        eprintln!(
            "minority proposal after {waited:?}: {}",
            r.as_ref().map_or_else(ToString::to_string, |_| "committed?!".to_owned())
        );
        assert!(matches!(r, Err(CoordError::Timeout { .. })), "{r:?}");
        assert!(
            waited >= Duration::from_millis(t.propose_timeout_ms)
                && waited < Duration::from_millis(t.propose_timeout_ms + 1_000)
        );
        assert_eq!(**survivor.state().borrow(), before, "nothing applied without a majority");
        survivor.shutdown().await;
    });
}

#[test]
fn coordination_join_requires_allow() {
    let root = TempDir::new("join");
    let t = RaftTimings::default();
    rt().block_on(async {
        let port = port();
        let (a, b) = (addr(1, port), addr(2, port));
        // A: empty .nodes list -> single-voter cluster.
        let ca = Coordinator::start(config(&root.0, a, &[], &t)).await.unwrap();
        wait_for("A leads", Duration::from_secs(3), || ca.is_leader()).await;
        // B lists A only: it must join, and is not allowed yet.
        let r = Coordinator::start(config(&root.0, b, &[a], &t)).await;
        match r {
            Err(CoordError::JoinRefused { by, why }) => eprintln!("join refused by {by}: {why}"),
            Err(e) => panic!("expected a refusal, got {e}"),
            Ok(_) => panic!("expected a refusal, B joined"),
        }
        ca.propose(Command::AllowNode { node: b }).await.unwrap().unwrap();
        fs::remove_file(root.0.join("127.0.0.12").join(format!("{CLUSTER}.raft.redb"))).ok();
        let t0 = Instant::now();
        let cb = Coordinator::start(config(&root.0, b, &[a], &t)).await.unwrap();
        wait_for("B is a voter", Duration::from_secs(5), || cb.metrics().voters.len() == 2).await;
        eprintln!("B joined as voter after {:?}", t0.elapsed());
        let s = ca.state().borrow().clone();
        assert_eq!(s.info(&b), Some(&DB), "the joined node was registered");
        wait_state(&cb, &s, Duration::from_secs(2)).await;
        // A's .nodes file follows the membership.
        let path = root.0.join("127.0.0.11").join(format!("{CLUSTER}.nodes"));
        wait_for("A's .nodes file lists B", Duration::from_secs(2), || {
            fs::read_to_string(&path).is_ok_and(|t| t.contains(&b.to_string()) && t.contains(&a.to_string()))
        })
        .await;
        // Proposals from B are forwarded to A.
        cb.propose(Command::SetPaused(true)).await.unwrap().unwrap();
        // Disallowing B removes it from the membership.
        ca.propose(Command::DisallowNode { node: b }).await.unwrap().unwrap();
        wait_for("B removed from the membership", Duration::from_secs(3), || ca.metrics().voters == vec![a]).await;
        cb.shutdown().await;
        ca.shutdown().await;
    });
}

/// Expects the server to close the connection (EOF or reset) within a second.
fn expect_closed(s: &mut TcpStream, what: &str) {
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut buf = [0u8; 64];
    match s.read(&mut buf) {
        Ok(0) | Err(_) => {}
        Ok(n) => {
            // A HELLO-ACK is fine only when the case is about later frames.
            panic!("{what}: server answered {n} bytes instead of dropping the connection");
        }
    }
}

#[test]
#[allow(clippy::too_many_lines)]
fn coordination_transport_rejects_forged_frames() {
    let root = TempDir::new("forge");
    let t = RaftTimings::default();
    rt().block_on(async {
        let port = port();
        let (a, b) = (addr(1, port), addr(2, port));
        let ca = Coordinator::start(config(&root.0, a, &[a, b], &t)).await.unwrap();
        let cb = Coordinator::start(config(&root.0, b, &[a, b], &t)).await.unwrap();
        agreed_leader(&[&ca, &cb], Duration::from_secs(5)).await;
        let key = efm_tests::key();
        let hello = |k, from: SocketAddr| {
            let ctx = wire::MacCtx { key: k, cluster: CLUSTER.into(), client_nonce: [7; 16], server_nonce: [0; 16] };
            let mut p = ctx.client_nonce.to_vec();
            p.extend_from_slice(from.to_string().as_bytes());
            wire::encode(&ctx, wire::DIR_TO_SERVER, wire::KIND_HELLO, efm_agent::coordination::raft_id(&from), 0, &p)
        };
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("garbage", b"GET / HTTP/1.0\r\n\r\n".to_vec()),
            ("oversized length", (64u32 << 20).to_be_bytes().to_vec()),
            ("wrong key", hello(efm_common::wire::ClusterKeyBytes { k0: 1, k1: 2 }, b)),
            ("address mismatch (claims B from 127.0.0.1)", hello(key, b)),
        ];
        let before = ca.metrics().rejected_frames;
        for (what, bytes) in &cases {
            let mut s = TcpStream::connect_timeout(&a, Duration::from_secs(1)).unwrap();
            let _ = s.write_all(bytes);
            tokio::task::block_in_place(|| expect_closed(&mut s, what));
        }
        // From B's IP: an unknown sender, a tampered HELLO, and a replayed request after a
        // correct handshake.
        {
            use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
            let connect_from = |ip: std::net::IpAddr| async move {
                let sock = tokio::net::TcpSocket::new_v4().unwrap();
                sock.bind(SocketAddr::new(ip, 0)).unwrap();
                sock.connect(a).await.unwrap()
            };
            // Completes a HELLO as `from`; returns the stream and the MAC context.
            let handshake = |from: SocketAddr| async move {
                let mut s = connect_from(from.ip()).await;
                s.write_all(&hello(key, from)).await.unwrap();
                let mut len = [0u8; 4];
                s.read_exact(&mut len).await.unwrap();
                let mut ack = vec![0u8; u32::from_be_bytes(len) as usize];
                s.read_exact(&mut ack).await.unwrap();
                let server_nonce: [u8; 16] = ack[wire::HEADER_LEN..wire::HEADER_LEN + 16].try_into().unwrap();
                (s, wire::MacCtx { key, cluster: CLUSTER.into(), client_nonce: [7; 16], server_nonce })
            };
            let request = |ctx: &wire::MacCtx, from: SocketAddr, seq: u64| {
                let req =
                    serde_json::to_vec(&efm_agent::coordination::net::Rpc::ClientWrite(Command::SetPaused(false)))
                        .unwrap();
                wire::encode(
                    ctx,
                    wire::DIR_TO_SERVER,
                    wire::KIND_REQUEST,
                    efm_agent::coordination::raft_id(&from),
                    seq,
                    &req,
                )
            };
            let closed = |mut s: tokio::net::TcpStream, what: &'static str| async move {
                let mut buf = [0u8; 64];
                let n = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf)).await.unwrap().unwrap_or(0);
                assert_eq!(n, 0, "{what}: the connection must be dropped");
            };
            // Unknown sender (a member's IP, but a port no member uses): it proved the key, so the
            // handshake completes, but anything except Join drops the connection.
            let stranger = SocketAddr::new(b.ip(), port + 1000);
            let (mut s, ctx) = handshake(stranger).await;
            s.write_all(&request(&ctx, stranger, 1)).await.unwrap();
            closed(s, "request from an unknown sender").await;
            // Tampered HELLO (one bit of the nonce flipped after the MAC was computed).
            let mut h = hello(key, b);
            h[4 + wire::HEADER_LEN + 3] ^= 1;
            let mut s = connect_from(b.ip()).await;
            s.write_all(&h).await.unwrap();
            closed(s, "tampered HELLO").await;
            // Correct handshake, a request, then the same frame again.
            let (mut s, ctx) = handshake(b).await;
            let f1 = request(&ctx, b, 1);
            s.write_all(&f1).await.unwrap();
            let mut len = [0u8; 4];
            s.read_exact(&mut len).await.unwrap();
            let mut resp = vec![0u8; u32::from_be_bytes(len) as usize];
            s.read_exact(&mut resp).await.unwrap();
            eprintln!("authentic request answered ({} bytes)", resp.len());
            s.write_all(&f1).await.unwrap();
            closed(s, "replayed frame").await;
            // A frame with a bad MAC inside an authenticated connection.
            let (mut s, ctx) = handshake(b).await;
            let mut f = request(&ctx, b, 1);
            let last = f.len() - 1;
            f[last] ^= 0x80;
            s.write_all(&f).await.unwrap();
            closed(s, "bad MAC on a request").await;
        }
        let rejected = ca.metrics().rejected_frames - before;
        eprintln!("node A rejected {rejected} connections/frames");
        assert_eq!(rejected, 8);
        // Still healthy: the cluster commits.
        cb.propose(Command::SetPaused(true)).await.unwrap().unwrap();
        ca.propose(Command::SetPaused(false)).await.unwrap().unwrap();
        cb.shutdown().await;
        ca.shutdown().await;
    });
}
