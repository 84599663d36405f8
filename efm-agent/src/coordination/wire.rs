//! The authenticated TCP framing of the Raft transport.
//!
//! Every frame, after a 4-byte big-endian length of the rest:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 4 | magic `0x45464D52` ("EFMR") |
//! | 4 | 1 | version = 1 |
//! | 5 | 1 | kind: 1 HELLO, 2 HELLO-ACK, 3 REQUEST, 4 RESPONSE |
//! | 6 | 2 | flags (0) |
//! | 8 | 8 | sender node id (the Raft id of the sender's `bind.address`) |
//! | 16 | 8 | sequence number |
//! | 24 | n | payload |
//! | 24+n | 8 | MAC |
//!
//! MAC = SipHash-2-4 (the `siphasher` crate; the XDP heartbeat MAC `efm_common::wire::mac` is the
//! same primitive specialised for the verifier) keyed with the 128-bit cluster key over
//! `"efm-raft-1" ‖ len(cluster) ‖ cluster ‖ client nonce ‖ server nonce ‖ direction ‖ header ‖ payload`.
//!
//! A connection starts with HELLO (client → server: 16-byte random client nonce and the client's
//! `bind.address`; server nonce all zero in its MAC) and HELLO-ACK (server → client: 16-byte random
//! server nonce). From then on each direction numbers its frames 1, 2, 3, ... and the receiver
//! accepts only the next number: a frame cannot be replayed, reordered or reflected within a
//! connection (the direction is in the MAC), nor into another connection (the server nonce is fresh
//! for each). The server accepts a HELLO only if its id matches the claimed address and the
//! claimed IP is the connection's source IP; a sender that is not known (member, listed or
//! allowed) may then only send `Join` — anything else drops the connection. Frames above [`MAX_FRAME`] are refused
//! before reading them.

use std::{
    hash::Hasher as _,
    io,
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use efm_common::wire::ClusterKeyBytes;
use siphasher::sip::SipHasher24;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpSocket, TcpStream},
};

use super::types::raft_id;

pub const MAGIC: u32 = 0x4546_4D52;
/// 2 since the MAC is SipHash-2-4 of the documented concatenation. Version 1 computed it with a
/// hand-written incremental hasher that lost bytes whenever a write ended inside an 8-byte word
/// (not `SipHash`; different names could share a MAC): version-1 and version-2 agents refuse each
/// other's frames with "unsupported version" rather than a misleading "bad MAC".
pub const VERSION: u8 = 2;
pub const HEADER_LEN: usize = 24;
pub const MAC_LEN: usize = 8;
/// Largest frame (everything after the length word) accepted.
pub const MAX_FRAME: usize = 4 << 20;
pub const NONCE_LEN: usize = 16;

pub const KIND_HELLO: u8 = 1;
pub const KIND_HELLO_ACK: u8 = 2;
pub const KIND_REQUEST: u8 = 3;
pub const KIND_RESPONSE: u8 = 4;

/// Direction byte in the MAC.
pub const DIR_TO_SERVER: u8 = 0;
pub const DIR_TO_CLIENT: u8 = 1;

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("I/O: {0}")]
    Io(#[from] io::Error),
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("frame of {0} bytes exceeds the limit of {MAX_FRAME}")]
    TooLarge(usize),
    #[error("frame of {0} bytes is shorter than header and MAC")]
    TooShort(usize),
    #[error("bad magic {0:#010x} (not an efm Raft peer)")]
    BadMagic(u32),
    #[error("unsupported Raft frame version {0} (this agent speaks {VERSION}: upgrade every node)")]
    BadVersion(u8),
    #[error("bad MAC (wrong cluster key or cluster name, or a forged/altered frame)")]
    BadMac,
    #[error("unexpected frame kind {got} (expected {expected})")]
    UnexpectedKind { expected: u8, got: u8 },
    #[error("replayed or out-of-order frame: sequence {got}, expected {expected}")]
    Replay { expected: u64, got: u64 },
    #[error("malformed HELLO")]
    BadHello,
    #[error("sender id {id:#x} does not match the claimed address {addr}")]
    SenderMismatch { id: u64, addr: SocketAddr },
    #[error("connection from {src} claims to be {claimed}: the IP differs")]
    SourceMismatch { src: IpAddr, claimed: SocketAddr },
    #[error("unknown sender {0} (not a member, not in the .nodes file, not allowed)")]
    UnknownSender(SocketAddr),
    #[error("malformed payload: {0}")]
    Payload(String),
}

/// What a MAC is bound to: the key, the cluster and the connection's nonces.
#[derive(Clone, Debug)]
pub struct MacCtx {
    pub key: ClusterKeyBytes,
    pub cluster: String,
    pub client_nonce: [u8; NONCE_LEN],
    pub server_nonce: [u8; NONCE_LEN],
}

impl MacCtx {
    #[must_use]
    pub fn mac(&self, dir: u8, header: &[u8], payload: &[u8]) -> u64 {
        let mut h = SipHasher24::new_with_keys(self.key.k0, self.key.k1);
        h.write(b"efm-raft-1");
        h.write(&u32::try_from(self.cluster.len()).unwrap_or(u32::MAX).to_be_bytes());
        h.write(self.cluster.as_bytes());
        h.write(&self.client_nonce);
        h.write(&self.server_nonce);
        h.write(&[dir]);
        h.write(header);
        h.write(payload);
        h.finish()
    }
}

/// A whole frame, length word included.
#[must_use]
pub fn encode(ctx: &MacCtx, dir: u8, kind: u8, sender: u64, seq: u64, payload: &[u8]) -> Vec<u8> {
    let body = HEADER_LEN + payload.len() + MAC_LEN;
    let mut out = Vec::with_capacity(4 + body);
    out.extend_from_slice(&u32::try_from(body).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(&MAGIC.to_be_bytes());
    out.push(VERSION);
    out.push(kind);
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&sender.to_be_bytes());
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(payload);
    let mac = ctx.mac(dir, &out[4..4 + HEADER_LEN], payload);
    out.extend_from_slice(&mac.to_be_bytes());
    out
}

/// A frame read off the wire, not yet authenticated.
#[derive(Debug)]
pub struct RawFrame {
    pub kind: u8,
    pub sender: u64,
    pub seq: u64,
    header: [u8; HEADER_LEN],
    pub payload: Vec<u8>,
    mac: u64,
}

impl RawFrame {
    pub fn verify(&self, ctx: &MacCtx, dir: u8) -> Result<(), WireError> {
        if ctx.mac(dir, &self.header, &self.payload) == self.mac {
            Ok(())
        } else {
            Err(WireError::BadMac)
        }
    }
}

fn be64(b: &[u8]) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[..8]);
    u64::from_be_bytes(w)
}

/// Reads one frame; `Ok(None)` on a clean end of stream before its first byte.
pub async fn read_raw(stream: &mut TcpStream) -> Result<Option<RawFrame>, WireError> {
    let mut len = [0u8; 4];
    match stream.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(WireError::TooLarge(len));
    }
    if len < HEADER_LEN + MAC_LEN {
        return Err(WireError::TooShort(len));
    }
    let mut header = [0u8; HEADER_LEN];
    stream.read_exact(&mut header).await?;
    let magic = u32::from_be_bytes([header[0], header[1], header[2], header[3]]);
    if magic != MAGIC {
        return Err(WireError::BadMagic(magic));
    }
    if header[4] != VERSION {
        return Err(WireError::BadVersion(header[4]));
    }
    let mut payload = vec![0u8; len - HEADER_LEN - MAC_LEN];
    stream.read_exact(&mut payload).await?;
    let mut mac = [0u8; 8];
    stream.read_exact(&mut mac).await?;
    Ok(Some(RawFrame {
        kind: header[5],
        sender: be64(&header[8..]),
        seq: be64(&header[16..]),
        header,
        payload,
        mac: u64::from_be_bytes(mac),
    }))
}

fn nonce() -> [u8; NONCE_LEN] {
    let mut n = [0u8; NONCE_LEN];
    // getrandom only fails when the OS has no randomness source at all.
    getrandom::getrandom(&mut n).expect("getrandom");
    n
}

async fn within<T>(d: Duration, f: impl std::future::Future<Output = Result<T, WireError>>) -> Result<T, WireError> {
    tokio::time::timeout(d, f).await.map_err(|_| WireError::Timeout(d))?
}

/// One authenticated connection, either end.
#[derive(Debug)]
pub struct Conn {
    stream: TcpStream,
    ctx: MacCtx,
    me: u64,
    peer: u64,
    /// Our direction (`DIR_TO_SERVER` on the client).
    dir: u8,
    send_seq: u64,
    recv_seq: u64,
    /// The peer's claimed and verified `bind.address`.
    pub peer_addr: SocketAddr,
    /// Server side: whether the peer is a member, listed or allowed. An unknown peer that proved
    /// the cluster key may only ask to join.
    pub known: bool,
}

impl Conn {
    /// Connects from `me`'s IP to `peer` and performs the HELLO exchange, all within `timeout`.
    pub async fn connect(
        me: SocketAddr,
        peer: SocketAddr,
        key: ClusterKeyBytes,
        cluster: &str,
        timeout: Duration,
    ) -> Result<Self, WireError> {
        within(timeout, async {
            let sock = if peer.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
            // Source address = our bind address, so the peer can check it against our claim.
            sock.bind(SocketAddr::new(me.ip(), 0))?;
            let mut stream = sock.connect(peer).await?;
            stream.set_nodelay(true)?;
            let mut ctx =
                MacCtx { key, cluster: cluster.to_owned(), client_nonce: nonce(), server_nonce: [0; NONCE_LEN] };
            let me_id = raft_id(&me);
            let mut hello = ctx.client_nonce.to_vec();
            hello.extend_from_slice(me.to_string().as_bytes());
            stream.write_all(&encode(&ctx, DIR_TO_SERVER, KIND_HELLO, me_id, 0, &hello)).await?;
            let f = read_raw(&mut stream).await?.ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
            if f.kind != KIND_HELLO_ACK {
                return Err(WireError::UnexpectedKind { expected: KIND_HELLO_ACK, got: f.kind });
            }
            let sn: [u8; NONCE_LEN] = f.payload.as_slice().try_into().map_err(|_| WireError::BadHello)?;
            ctx.server_nonce = sn;
            f.verify(&ctx, DIR_TO_CLIENT)?;
            let peer_id = raft_id(&peer);
            if f.sender != peer_id || f.seq != 0 {
                return Err(WireError::SenderMismatch { id: f.sender, addr: peer });
            }
            Ok(Self {
                stream,
                ctx,
                me: me_id,
                peer: peer_id,
                dir: DIR_TO_SERVER,
                send_seq: 0,
                recv_seq: 0,
                peer_addr: peer,
                known: true,
            })
        })
        .await
    }

    /// Server side: reads and checks the HELLO (within `timeout`), answers HELLO-ACK.
    pub async fn accept(
        mut stream: TcpStream,
        me: SocketAddr,
        key: ClusterKeyBytes,
        cluster: &str,
        is_known: impl FnOnce(&SocketAddr) -> bool,
        timeout: Duration,
    ) -> Result<Self, WireError> {
        let src = stream.peer_addr()?.ip();
        let f = within(timeout, async {
            read_raw(&mut stream).await?.ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof).into())
        })
        .await?;
        if f.kind != KIND_HELLO {
            return Err(WireError::UnexpectedKind { expected: KIND_HELLO, got: f.kind });
        }
        if f.payload.len() < NONCE_LEN || f.seq != 0 {
            return Err(WireError::BadHello);
        }
        let mut ctx = MacCtx {
            key,
            cluster: cluster.to_owned(),
            client_nonce: f.payload[..NONCE_LEN].try_into().map_err(|_| WireError::BadHello)?,
            server_nonce: [0; NONCE_LEN],
        };
        f.verify(&ctx, DIR_TO_SERVER)?;
        let claimed: SocketAddr = std::str::from_utf8(&f.payload[NONCE_LEN..])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or(WireError::BadHello)?;
        if raft_id(&claimed) != f.sender {
            return Err(WireError::SenderMismatch { id: f.sender, addr: claimed });
        }
        if canonical(src) != canonical(claimed.ip()) {
            return Err(WireError::SourceMismatch { src, claimed });
        }
        let known = is_known(&claimed);
        ctx.server_nonce = nonce();
        let me_id = raft_id(&me);
        stream.set_nodelay(true)?;
        let sn = ctx.server_nonce;
        stream.write_all(&encode(&ctx, DIR_TO_CLIENT, KIND_HELLO_ACK, me_id, 0, &sn)).await?;
        Ok(Self {
            stream,
            ctx,
            me: me_id,
            peer: f.sender,
            dir: DIR_TO_CLIENT,
            send_seq: 0,
            recv_seq: 0,
            peer_addr: claimed,
            known,
        })
    }

    /// Sends one payload as the next frame.
    pub async fn send(&mut self, payload: &[u8]) -> Result<(), WireError> {
        if payload.len() + HEADER_LEN + MAC_LEN > MAX_FRAME {
            return Err(WireError::TooLarge(payload.len() + HEADER_LEN + MAC_LEN));
        }
        self.send_seq += 1;
        let kind = if self.dir == DIR_TO_SERVER { KIND_REQUEST } else { KIND_RESPONSE };
        let frame = encode(&self.ctx, self.dir, kind, self.me, self.send_seq, payload);
        self.stream.write_all(&frame).await?;
        Ok(())
    }

    /// Receives the next authenticated payload; `Ok(None)` when the peer closed the connection.
    pub async fn recv(&mut self) -> Result<Option<Vec<u8>>, WireError> {
        let Some(f) = read_raw(&mut self.stream).await? else {
            return Ok(None);
        };
        let (kind, dir) =
            if self.dir == DIR_TO_SERVER { (KIND_RESPONSE, DIR_TO_CLIENT) } else { (KIND_REQUEST, DIR_TO_SERVER) };
        f.verify(&self.ctx, dir)?;
        if f.kind != kind {
            return Err(WireError::UnexpectedKind { expected: kind, got: f.kind });
        }
        if f.sender != self.peer {
            return Err(WireError::SenderMismatch { id: f.sender, addr: self.peer_addr });
        }
        if f.seq != self.recv_seq + 1 {
            return Err(WireError::Replay { expected: self.recv_seq + 1, got: f.seq });
        }
        self.recv_seq = f.seq;
        Ok(Some(f.payload))
    }

    /// One request and its response, within `timeout`. On any error the connection must be
    /// dropped (a late response would be out of step).
    pub async fn call(&mut self, payload: &[u8], timeout: Duration) -> Result<Vec<u8>, WireError> {
        within(timeout, async {
            self.send(payload).await?;
            self.recv().await?.ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof).into())
        })
        .await
    }
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> MacCtx {
        MacCtx {
            key: ClusterKeyBytes::from_bytes(b"efm-test-key-16b"),
            cluster: "efm".into(),
            client_nonce: [1; NONCE_LEN],
            server_nonce: [2; NONCE_LEN],
        }
    }

    #[test]
    fn coordination_frame_mac_binds_everything() {
        let c = ctx();
        let f = encode(&c, DIR_TO_SERVER, KIND_REQUEST, 7, 1, b"hello");
        assert_eq!(f.len(), 4 + HEADER_LEN + 5 + MAC_LEN);
        let header = &f[4..4 + HEADER_LEN];
        let mac = u64::from_be_bytes(f[f.len() - 8..].try_into().unwrap());
        assert_eq!(c.mac(DIR_TO_SERVER, header, b"hello"), mac);
        assert_ne!(c.mac(DIR_TO_CLIENT, header, b"hello"), mac, "direction");
        assert_ne!(c.mac(DIR_TO_SERVER, header, b"hellp"), mac, "payload");
        let mut other = c.clone();
        other.cluster = "efn".into();
        assert_ne!(other.mac(DIR_TO_SERVER, header, b"hello"), mac, "cluster");
        let mut other = c.clone();
        other.server_nonce[0] = 9;
        assert_ne!(other.mac(DIR_TO_SERVER, header, b"hello"), mac, "nonce");
        let mut other = c;
        other.key.k1 ^= 1;
        assert_ne!(other.mac(DIR_TO_SERVER, header, b"hello"), mac, "key");
    }

    /// The MAC is SipHash-2-4 of the documented concatenation, however it is fed.
    #[test]
    fn coordination_frame_mac_is_siphash_of_the_documented_bytes() {
        let c = ctx();
        let header = [0xa5u8; HEADER_LEN];
        let mut msg = b"efm-raft-1".to_vec();
        msg.extend_from_slice(&3u32.to_be_bytes());
        msg.extend_from_slice(b"efm");
        msg.extend_from_slice(&c.client_nonce);
        msg.extend_from_slice(&c.server_nonce);
        msg.push(DIR_TO_CLIENT);
        msg.extend_from_slice(&header);
        msg.extend_from_slice(b"xyz");
        let mut h = SipHasher24::new_with_keys(c.key.k0, c.key.k1);
        h.write(&msg);
        assert_eq!(c.mac(DIR_TO_CLIENT, &header, b"xyz"), h.finish());
    }

    /// The frame format is fixed: a known frame's bytes (MAC included) never change. The MAC was
    /// checked with a one-shot SipHash-2-4 validated against the reference vectors.
    #[test]
    fn coordination_frame_bytes_are_stable() {
        let f = encode(&ctx(), DIR_TO_CLIENT, KIND_RESPONSE, 0x0102_0304_0506_0708, 42, b"payload");
        let want: [u8; 43] = [
            0x00, 0x00, 0x00, 0x27, 0x45, 0x46, 0x4d, 0x52, 0x02, 0x04, 0x00, 0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06,
            0x07, 0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x2a, b'p', b'a', b'y', b'l', b'o', b'a', b'd', 0x2b,
            0x0b, 0x22, 0xba, 0x59, 0xcb, 0x8a, 0xe9,
        ];
        assert_eq!(f, want, "{f:02x?}");
    }
}
