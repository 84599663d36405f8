//! Ending the open client sessions when the node stops serving.
//!
//! The kernel fence (XDP ingress, TC egress) decides packet by packet; a client that sent its
//! statement before the fence and waits for the answer with TCP keepalives off would learn
//! nothing until the server sends again (`pg_sleep(60)`: a minute). So when the agent sees its
//! kernel go from serving to not serving, it ends those sessions at once, in two steps:
//!
//! 1. **Sockets** ([`end_sessions`]): every TCP socket of this network namespace whose local
//!    port is `db.port` and local address one of the node's service addresses (own addresses
//!    and VIP), that is not listening and whose remote address is not spared, is destroyed with
//!    `SOCK_DESTROY` over `NETLINK_SOCK_DIAG` (what `ss -K` does; needs
//!    `CONFIG_INET_DIAG_DESTROY` and `CAP_NET_ADMIN`). The kernel answers the client with a RST
//!    at once, and the backend's next read or write on the socket fails.
//! 2. **Backends** ([`terminate_backends`], best effort): `pg_terminate_backend` for every
//!    client backend and walsender whose `client_addr` is not spared (never the agent's own
//!    connection), so a statement still running inside is cancelled instead of committing.
//!
//! What this does not promise: a statement may still commit locally between the fence and the
//! termination (or when the database does not answer the agent), but its result is never
//! acknowledged — the socket is gone, and the kernel's egress fence turns any segment the server
//! sends from the database port into a RST while the node does not serve. A client sees a reset
//! connection (or a "terminating connection" error), never a success.
//!
//! Which remote addresses are spared is the caller's decision (a closure): always
//! `fence.exempt.hosts`, the node's own addresses (connections from this host, e.g. the agent's
//! checks, which the kernel fence does not see either), and the cluster's members only while
//! members are exempt (see [`Spare`]).

use std::{
    net::{IpAddr, SocketAddr},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use netlink_packet_core::{NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST};
use netlink_packet_sock_diag::{
    constants::{AF_INET, AF_INET6, IPPROTO_TCP},
    inet::{ExtensionFlags, InetRequest, SocketId, StateFlags},
    SockDiagDestroy, SockDiagMessage,
};
use netlink_sys::{protocols::NETLINK_SOCK_DIAG, Socket, SocketAddr as NlAddr};
use rustix::{io::Errno, net::RecvFlags};

use crate::{config::Cidr, postgres::DbTarget};

/// What went wrong ending sessions. Every variant says which step failed.
#[derive(Debug, thiserror::Error)]
pub enum SessionsError {
    #[error("sock_diag: opening a NETLINK_SOCK_DIAG socket: {0}")]
    Open(std::io::Error),
    #[error("sock_diag: {what}: {source}")]
    Io { what: &'static str, source: std::io::Error },
    #[error("sock_diag: {what}: the kernel answered {source}")]
    Kernel { what: &'static str, source: std::io::Error },
    #[error(
        "sock_diag: destroying {local} ← {remote}: the kernel does not support SOCK_DESTROY \
         (CONFIG_INET_DIAG_DESTROY is off); the kernel fence still answers the server's next segment"
    )]
    Unsupported { local: SocketAddr, remote: SocketAddr },
    #[error("sock_diag: destroying {local} ← {remote}: not permitted (the agent needs CAP_NET_ADMIN)")]
    NotPermitted { local: SocketAddr, remote: SocketAddr },
    #[error("sock_diag: destroying {local} ← {remote}: {source}")]
    Destroy { local: SocketAddr, remote: SocketAddr, source: std::io::Error },
    #[error("sock_diag: malformed answer from the kernel: {0}")]
    Decode(String),
    #[error("terminating backends: {0}")]
    Database(#[from] crate::postgres::DbError),
    #[error("terminating backends on {addr}: {message}")]
    Query { addr: String, message: String },
}

/// One TCP session on the database port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    /// The server side (a service address and `db.port`); v4-mapped IPv6 addresses are shown
    /// as IPv4.
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// TCP state number (`TCP_ESTABLISHED` = 1, ...).
    pub state: u8,
    family: u8,
    id: SocketId,
}

/// What one [`end_sessions`] call did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ended {
    /// Sessions destroyed (the client got a RST).
    pub destroyed: usize,
    /// Sessions left open because their remote address is spared.
    pub spared: usize,
    /// Sessions that were gone by the time they were destroyed.
    pub gone: usize,
}

/// Every non-listening TCP state a server-side session can be in (`TIME_WAIT` has no socket to
/// abort, `SYN_SENT` is a client state).
fn session_states() -> StateFlags {
    StateFlags::ESTABLISHED
        | StateFlags::SYN_RECV
        | StateFlags::FIN_WAIT1
        | StateFlags::FIN_WAIT2
        | StateFlags::CLOSE_WAIT
        | StateFlags::LAST_ACK
        | StateFlags::CLOSING
}

/// `::ffff:a.b.c.d` → `a.b.c.d` (a v4 client on a dual-stack listener).
fn canonical(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}

/// A `NETLINK_SOCK_DIAG` socket of the calling thread's network namespace.
struct Diag {
    sock: Socket,
    seq: u32,
    buf: Vec<u8>,
}

/// Netlink dumps come in datagrams of up to 32 KiB; a smaller buffer would truncate them.
const RECV_BUF: usize = 64 * 1024;

impl Diag {
    fn open() -> Result<Self, SessionsError> {
        let mut sock = Socket::new(NETLINK_SOCK_DIAG).map_err(SessionsError::Open)?;
        sock.bind_auto().map_err(|source| SessionsError::Io { what: "binding the netlink socket", source })?;
        sock.connect(&NlAddr::new(0, 0))
            .map_err(|source| SessionsError::Io { what: "connecting the netlink socket", source })?;
        Ok(Self { sock, seq: 0, buf: Vec::with_capacity(RECV_BUF) })
    }

    fn send<T>(&mut self, flags: u16, payload: T, what: &'static str) -> Result<u32, SessionsError>
    where
        T: netlink_packet_core::NetlinkSerializable + std::fmt::Debug,
        NetlinkPayload<T>: From<T>,
    {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = flags;
        header.sequence_number = self.seq;
        let mut msg = NetlinkMessage::new(header, NetlinkPayload::from(payload));
        msg.finalize();
        let mut out = vec![0; msg.buffer_len()];
        msg.serialize(&mut out);
        self.sock.send(&out, 0).map_err(|source| SessionsError::Io { what, source })?;
        Ok(self.seq)
    }

    /// One datagram from the kernel into `self.buf`.
    fn recv(&mut self, what: &'static str) -> Result<(), SessionsError> {
        self.buf.clear();
        // MSG_TRUNC: the answer is the datagram's real length, so a cut one is noticed.
        let (_, n) = rustix::net::recv(&self.sock, rustix::buffer::spare_capacity(&mut self.buf), RecvFlags::TRUNC)
            .map_err(|e| SessionsError::Io { what, source: e.into() })?;
        if n > self.buf.len() {
            return Err(SessionsError::Decode(format!(
                "{what}: a {n}-byte datagram did not fit the {RECV_BUF}-byte buffer"
            )));
        }
        Ok(())
    }

    /// Reads answers to request `seq` until `on` returns a result: every message of that
    /// sequence number is handed to `on` in order (`what` names the exchange in errors).
    fn answers<T>(
        &mut self,
        seq: u32,
        what: &'static str,
        mut on: impl FnMut(NetlinkPayload<SockDiagMessage>) -> Option<Result<T, SessionsError>>,
    ) -> Result<T, SessionsError> {
        loop {
            self.recv(what)?;
            let mut off = 0;
            while off < self.buf.len() {
                let msg = NetlinkMessage::<SockDiagMessage>::deserialize(&self.buf[off..])
                    .map_err(|e| SessionsError::Decode(format!("{what}: {e}")))?;
                let len = msg.header.length as usize;
                if len == 0 {
                    return Err(SessionsError::Decode(format!("{what}: a zero-length message")));
                }
                off += len;
                if msg.header.sequence_number != seq {
                    continue;
                }
                if let Some(r) = on(msg.payload) {
                    return r;
                }
            }
        }
    }

    /// The TCP sessions of `family` with local port `port` (the kernel filters on the port).
    fn dump(&mut self, family: u8, port: u16, out: &mut Vec<Session>) -> Result<(), SessionsError> {
        let mut id = if family == AF_INET { SocketId::new_v4() } else { SocketId::new_v6() };
        id.source_port = port;
        let req = InetRequest {
            family,
            protocol: IPPROTO_TCP,
            extensions: ExtensionFlags::empty(),
            states: session_states(),
            socket_id: id,
        };
        let seq = self.send(
            NLM_F_REQUEST | NLM_F_DUMP,
            SockDiagMessage::InetRequest(req),
            "sending the socket dump request",
        )?;
        self.answers(seq, "socket dump", |payload| match payload {
            NetlinkPayload::Done(_) => Some(Ok(())),
            NetlinkPayload::Error(e) => e.code.map(|code| {
                Err(SessionsError::Kernel {
                    what: "socket dump",
                    source: std::io::Error::from_raw_os_error(-code.get()),
                })
            }),
            NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(r)) => {
                let h = &r.header;
                if h.socket_id.source_port == port {
                    out.push(Session {
                        local: SocketAddr::new(canonical(h.socket_id.source_address), h.socket_id.source_port),
                        remote: SocketAddr::new(
                            canonical(h.socket_id.destination_address),
                            h.socket_id.destination_port,
                        ),
                        state: h.state,
                        family: h.family,
                        id: h.socket_id.clone(),
                    });
                }
                None
            }
            _ => None,
        })
    }

    /// `SOCK_DESTROY` for one session. `Ok(false)`: it was already gone.
    fn destroy(&mut self, s: &Session) -> Result<bool, SessionsError> {
        // netlink-packet-sock-diag names the SOCK_DESTROY message type (`SockDiagDestroy`, type
        // 21) but only parses SOCK_DIAG_BY_FAMILY answers; the answer to a destroy is a plain
        // netlink ack, which the core's `NetlinkPayload::Error` covers.
        let req = InetRequest {
            family: s.family,
            protocol: IPPROTO_TCP,
            extensions: ExtensionFlags::empty(),
            states: StateFlags::all(),
            socket_id: s.id.clone(),
        };
        let seq = self.send(
            NLM_F_REQUEST | NLM_F_ACK,
            SockDiagDestroy::new(SockDiagMessage::InetRequest(req)),
            "sending SOCK_DESTROY",
        )?;
        let (local, remote) = (s.local, s.remote);
        self.answers(seq, "SOCK_DESTROY answer", |payload| {
            let NetlinkPayload::Error(e) = payload else { return None };
            let Some(code) = e.code else { return Some(Ok(true)) };
            let errno = -code.get();
            Some(match Errno::from_raw_os_error(errno) {
                Errno::NOENT => Ok(false),
                Errno::OPNOTSUPP => Err(SessionsError::Unsupported { local, remote }),
                Errno::PERM | Errno::ACCESS => Err(SessionsError::NotPermitted { local, remote }),
                _ => Err(SessionsError::Destroy { local, remote, source: std::io::Error::from_raw_os_error(errno) }),
            })
        })
    }
}

/// The TCP sessions (not listening) of this thread's network namespace with local port `port`
/// on one of `service` (the node's own addresses and VIPs), IPv4 and IPv6.
pub fn list(port: u16, service: &[IpAddr]) -> Result<Vec<Session>, SessionsError> {
    let mut diag = Diag::open()?;
    let mut all = Vec::new();
    diag.dump(AF_INET, port, &mut all)?;
    diag.dump(AF_INET6, port, &mut all)?;
    let service: Vec<IpAddr> = service.iter().copied().map(canonical).collect();
    all.retain(|s| service.contains(&s.local.ip()));
    Ok(all)
}

/// Destroys every session [`list`] finds whose remote address `spare` does not spare. Runs in
/// the calling thread's network namespace; blocking (netlink), call it off the async loop.
pub fn end_sessions(port: u16, service: &[IpAddr], spare: impl Fn(IpAddr) -> bool) -> Result<Ended, SessionsError> {
    let sessions = list(port, service)?;
    let mut diag = Diag::open()?;
    let mut ended = Ended::default();
    let mut first_err = None;
    for s in &sessions {
        if spare(s.remote.ip()) {
            ended.spared += 1;
            continue;
        }
        match diag.destroy(s) {
            Ok(true) => ended.destroyed += 1,
            Ok(false) => ended.gone += 1,
            // Without support or permission no other session will go either.
            Err(e @ (SessionsError::Unsupported { .. } | SessionsError::NotPermitted { .. })) => return Err(e),
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    match first_err {
        Some(e) if ended.destroyed == 0 => Err(e),
        Some(e) => {
            tracing::warn!(error = %e, destroyed = ended.destroyed, "some client sessions could not be destroyed");
            Ok(ended)
        }
        None => Ok(ended),
    }
}

/// `pg_terminate_backend` for every client backend and walsender of the database at `target`
/// whose `client_addr` `spare` does not spare; never the connection doing it, never a backend
/// without a client address (Unix socket). Returns how many were signalled.
pub async fn terminate_backends(
    target: &DbTarget,
    timeout: Duration,
    spare: impl Fn(IpAddr) -> bool,
) -> Result<usize, SessionsError> {
    let client = crate::postgres::connect(target, timeout).await?;
    let addr = target.addr();
    let q = |e: tokio_postgres::Error| SessionsError::Query {
        addr: addr.clone(),
        message: e.as_db_error().map_or_else(|| e.to_string(), |d| d.message().to_owned()),
    };
    let work = async {
        let rows = client
            .query(
                "SELECT pid, host(client_addr) FROM pg_stat_activity \
                 WHERE client_addr IS NOT NULL AND pid <> pg_backend_pid() \
                   AND backend_type IN ('client backend', 'walsender')",
                &[],
            )
            .await
            .map_err(q)?;
        let pids: Vec<i32> = rows
            .iter()
            .filter_map(|r| {
                let pid: i32 = r.get(0);
                let ip: IpAddr = r.get::<_, String>(1).parse().ok()?;
                (!spare(canonical(ip))).then_some(pid)
            })
            .collect();
        if pids.is_empty() {
            return Ok(0);
        }
        let row = client
            .query_one("SELECT count(*) FILTER (WHERE pg_terminate_backend(p)) FROM unnest($1::int4[]) AS p", &[&pids])
            .await
            .map_err(q)?;
        Ok(usize::try_from(row.get::<_, i64>(0)).unwrap_or(0))
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(r) => r,
        Err(_) => Err(SessionsError::Query {
            addr: target.addr(),
            message: format!("no answer within {} ms", timeout.as_millis()),
        }),
    }
}

/// Which remote addresses keep their sessions when the node stops serving.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Spare {
    /// `fence.exempt.hosts`: always spared.
    pub exempt: Vec<Cidr>,
    /// The node's own addresses: connections from this host (the agent's own checks and its
    /// connection to the local database), which the kernel fence does not see either.
    pub local: Vec<IpAddr>,
    /// The cluster's members (the `.nodes` file), spared only while `members_spared`.
    pub members: Vec<IpAddr>,
    pub members_spared: bool,
}

impl Spare {
    #[must_use]
    pub fn spares(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.exempt.iter().any(|c| c.contains(ip))
            || self.local.contains(&ip)
            || (self.members_spared && self.members.contains(&ip))
    }
}

/// What the kernel lets through, as far as sessions are concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gate {
    /// Clients pass (not fenced, not epoch-fenced, lease valid).
    pub serving: bool,
    /// Members' connections pass: serving, or fenced explicitly only
    /// (`efm_common::serving::exempt_applies`).
    pub members_pass: bool,
}

/// Watches the kernel's state cycle by cycle and says when sessions must end: when it stops
/// serving, and — in that same episode, while it has not served again — when members stop being
/// exempt. States before the node first serves in this agent's life end nothing: at start-up a
/// primary is fenced until the log confirms it, then unendorsed for a moment, and its clients
/// and walsenders must survive an agent restart. (An agent that starts on a node that already
/// does not serve leaves those sessions to the egress fence, which answers the server's next
/// segment.)
#[derive(Clone, Debug, Default)]
pub struct Tracker {
    last: Option<Gate>,
    /// The node served, then stopped: a fence episode is under way.
    episode: bool,
}

impl Tracker {
    /// `Some(members_spared)` when sessions must end now.
    pub fn observe(&mut self, now: Gate) -> Option<bool> {
        let prev = self.last.replace(now);
        if now.serving {
            self.episode = false;
            return None;
        }
        let prev = prev?;
        if prev.serving {
            self.episode = true;
            return Some(now.members_pass);
        }
        (self.episode && prev.members_pass && !now.members_pass).then_some(false)
    }
}

/// How long after the first round the second one runs (connections whose handshake raced the
/// fence).
pub const SECOND_ROUND: Duration = Duration::from_millis(300);
/// Bound on the database step of a round.
pub const BACKEND_TIMEOUT: Duration = Duration::from_secs(3);

/// The agent's session ender: rounds run off the heartbeat loop; stopping the database waits
/// for the first round ([`Ender::settled`]).
#[derive(Clone, Debug)]
pub struct Ender {
    port: u16,
    service: Vec<IpAddr>,
    spare: Spare,
    /// The local database, for `pg_terminate_backend` (`None`: sockets only).
    db: Option<DbTarget>,
    requested: Arc<AtomicU64>,
    done: Arc<tokio::sync::watch::Sender<u64>>,
}

impl Ender {
    /// `spare.members_spared` is set per round.
    #[must_use]
    pub fn new(port: u16, service: Vec<IpAddr>, spare: Spare, db: Option<DbTarget>) -> Self {
        Self {
            port,
            service,
            spare,
            db,
            requested: Arc::new(AtomicU64::new(0)),
            done: Arc::new(tokio::sync::watch::channel(0).0),
        }
    }

    /// Ends the sessions now (and once more [`SECOND_ROUND`] later), in a task; returns at
    /// once. Must be called inside a tokio runtime.
    pub fn end_now(&self, members_spared: bool, why: &'static str) {
        let n = self.requested.fetch_add(1, Ordering::SeqCst) + 1;
        let this = self.clone();
        tokio::spawn(async move {
            this.round(members_spared, why, 1).await;
            this.done.send_modify(|d| *d = (*d).max(n));
            tokio::time::sleep(SECOND_ROUND).await;
            this.round(members_spared, why, 2).await;
        });
    }

    async fn round(&self, members_spared: bool, why: &'static str, round: u8) {
        let started = Instant::now();
        let spare = Spare { members_spared, ..self.spare.clone() };
        let (port, service, sp) = (self.port, self.service.clone(), spare.clone());
        let sockets = tokio::task::spawn_blocking(move || end_sessions(port, &service, |ip| sp.spares(ip))).await;
        let sockets = match sockets {
            Ok(r) => r,
            Err(e) => Err(SessionsError::Decode(format!("the session-ending task failed: {e}"))),
        };
        let backends = match &self.db {
            Some(t) => Some(terminate_backends(t, BACKEND_TIMEOUT, |ip| spare.spares(ip)).await),
            None => None,
        };
        let ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let (destroyed, spared) = sockets.as_ref().map_or((0, 0), |e| (e.destroyed, e.spared));
        let terminated = backends.as_ref().and_then(|b| b.as_ref().ok()).copied().unwrap_or(0);
        if round == 1 || destroyed > 0 || terminated > 0 {
            tracing::info!(
                round,
                why,
                members_spared,
                destroyed,
                spared,
                terminated,
                took_ms = ms,
                "client sessions ended"
            );
        }
        if let Err(e) = sockets {
            tracing::error!(round, error = %e, "ending client sessions failed; the kernel fence answers the server's next segment");
        }
        if let Some(Err(e)) = backends {
            tracing::warn!(round, error = %e, "terminating client backends failed (their results are never acknowledged)");
        }
    }

    /// Waits (at most `bound`) until the first round of every ending requested so far is done.
    pub async fn settled(&self, bound: Duration) {
        let want = self.requested.load(Ordering::SeqCst);
        let mut rx = self.done.subscribe();
        let _ = tokio::time::timeout(bound, rx.wait_for(|d| *d >= want)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn spare_exempt_always_members_only_while_exempt() {
        let mut s = Spare {
            exempt: vec![Cidr { addr: ip("198.18.5.0"), prefix: 24 }],
            local: vec![ip("198.18.0.1")],
            members: vec![ip("198.18.0.2"), ip("fd00:efd::2")],
            members_spared: true,
        };
        assert!(s.spares(ip("198.18.5.9")));
        assert!(s.spares(ip("::ffff:198.18.5.9")), "a v4 client on a dual-stack listener");
        assert!(s.spares(ip("198.18.0.1")), "this host's own connections");
        assert!(s.spares(ip("198.18.0.2")) && s.spares(ip("fd00:efd::2")));
        assert!(!s.spares(ip("198.18.0.66")));
        s.members_spared = false;
        assert!(!s.spares(ip("198.18.0.2")) && !s.spares(ip("fd00:efd::2")));
        assert!(s.spares(ip("198.18.5.9")) && s.spares(ip("198.18.0.1")));
    }

    #[test]
    fn tracker_fires_on_stopping_to_serve_and_on_members_losing_the_exemption() {
        let serving = Gate { serving: true, members_pass: true };
        let handing_over = Gate { serving: false, members_pass: true };
        let epoch_fenced = Gate { serving: false, members_pass: false };
        let unendorsed = Gate { serving: false, members_pass: false };
        let mut t = Tracker::default();
        assert_eq!(t.observe(handing_over), None, "the first state is the baseline");
        assert_eq!(t.observe(unendorsed), None, "start-up: fenced until the log agrees, then not endorsed yet");
        assert_eq!(t.observe(serving), None, "starting to serve ends nothing");
        assert_eq!(t.observe(serving), None);
        assert_eq!(t.observe(handing_over), Some(true), "fenced explicitly: members keep replication");
        assert_eq!(t.observe(handing_over), None, "once per change");
        assert_eq!(t.observe(epoch_fenced), Some(false), "a newer epoch: members' sessions end too");
        assert_eq!(t.observe(epoch_fenced), None);
        assert_eq!(t.observe(handing_over), None, "members exempt again within the episode: nothing to end");
        assert_eq!(t.observe(epoch_fenced), Some(false));
        assert_eq!(t.observe(serving), None);
        let mut t = Tracker::default();
        t.observe(serving);
        assert_eq!(t.observe(epoch_fenced), Some(false), "lease lapsed: everyone but the exempt hosts");
    }

    #[tokio::test]
    async fn settled_waits_for_the_first_round_only_when_one_was_requested() {
        let e = Ender::new(5432, vec![], Spare::default(), None);
        // Nothing requested: returns at once.
        let t = Instant::now();
        e.settled(Duration::from_secs(5)).await;
        assert!(t.elapsed() < Duration::from_secs(1));
        // A request not finished yet holds it back until the bound.
        e.requested.fetch_add(1, Ordering::SeqCst);
        let t = Instant::now();
        e.settled(Duration::from_millis(200)).await;
        assert!(t.elapsed() >= Duration::from_millis(200));
        e.done.send_modify(|d| *d = 1);
        let t = Instant::now();
        e.settled(Duration::from_secs(5)).await;
        assert!(t.elapsed() < Duration::from_secs(1));
    }
}
