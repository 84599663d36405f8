//! `AF_PACKET` sockets with rustix: a raw packet socket bound to one interface (we build the
//! Ethernet header; frames are sent without an address), waiting with `poll(2)`, and the probe
//! loop shared by the ARP and Neighbor Discovery probes.

use std::{
    io,
    os::fd::OwnedFd,
    time::{Duration, Instant},
};

use rustix::{
    event::{poll, PollFd, PollFlags, Timespec},
    io::Errno,
    net::{
        addr::{SocketAddrArg, SocketAddrLen, SocketAddrOpaque},
        bind, recv, send, socket_with, AddressFamily, RecvFlags, SendFlags, SocketFlags, SocketType,
    },
};

use super::Mac;

/// `struct sockaddr_ll` (`linux/if_packet.h`), the address of a packet socket. rustix has no
/// type for it; only `bind` uses it here (frames are sent and received without an address).
#[repr(C)]
struct LinkAddr {
    family: u16,
    /// Ethertype, network byte order; 0 receives nothing.
    protocol: u16,
    ifindex: i32,
    hatype: u16,
    pkttype: u8,
    halen: u8,
    addr: [u8; 8],
}

const _: () = assert!(size_of::<LinkAddr>() == 20, "sockaddr_ll is 20 bytes");

// SAFETY: `with_sockaddr` passes a pointer to `self` — a `#[repr(C)]` struct with the kernel's
// `sockaddr_ll` layout (20 bytes, no padding, all fields plain integers, checked above) — and
// its size; the pointer is valid for reads of that many bytes while `f` runs. This is the only
// `unsafe` of the VIP code: rustix does not model `sockaddr_ll`.
unsafe impl SocketAddrArg for LinkAddr {
    unsafe fn with_sockaddr<R>(&self, f: impl FnOnce(*const SocketAddrOpaque, SocketAddrLen) -> R) -> R {
        f(std::ptr::from_ref(self).cast(), 20)
    }
}

/// A raw `AF_PACKET` socket bound to one interface.
pub(super) struct PacketSocket {
    fd: OwnedFd,
}

impl PacketSocket {
    /// Bound to interface `ifindex`; receives the frames of `ethertype` that pass there, in both
    /// directions (0: receives nothing, for sending only).
    pub(super) fn open(ifindex: u32, ethertype: u16) -> io::Result<Self> {
        let ifindex = i32::try_from(ifindex).map_err(|_| io::Error::from(Errno::NODEV))?;
        let fd = socket_with(AddressFamily::PACKET, SocketType::RAW, SocketFlags::CLOEXEC, None)?;
        let addr = LinkAddr {
            family: AddressFamily::PACKET.as_raw(),
            protocol: ethertype.to_be(),
            ifindex,
            hatype: 0,
            pkttype: 0,
            halen: 0,
            addr: [0; 8],
        };
        bind(&fd, &addr)?;
        Ok(Self { fd })
    }

    /// Sends one complete Ethernet frame on the interface.
    pub(super) fn send(&self, frame: &[u8]) -> io::Result<()> {
        loop {
            match send(&self.fd, frame, SendFlags::empty()) {
                Ok(_) => return Ok(()),
                Err(Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// One frame if one is queued (without waiting).
    pub(super) fn try_recv<'b>(&self, buf: &'b mut [u8]) -> io::Result<Option<&'b [u8]>> {
        match recv(&self.fd, &mut *buf, RecvFlags::DONTWAIT) {
            Ok((n, _)) => Ok(Some(&buf[..n])),
            Err(Errno::WOULDBLOCK | Errno::INTR) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Waits until a frame is queued or `wait` has passed; `true` if one is.
    fn wait_readable(&self, wait: Duration) -> io::Result<bool> {
        let ts =
            Timespec { tv_sec: i64::try_from(wait.as_secs()).unwrap_or(i64::MAX), tv_nsec: wait.subsec_nanos().into() };
        let mut fds = [PollFd::new(&self.fd, PollFlags::IN)];
        match poll(&mut fds, Some(&ts)) {
            Ok(n) => Ok(n > 0),
            Err(Errno::INTR) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }
}

/// What one received frame is to a probe.
pub(super) enum Rx {
    /// A frame that is not an answer.
    Ignored,
    /// Someone answers for the address, with this MAC.
    Answer(Mac),
}

const PROBES: u32 = 3;

/// Sends `probe` `PROBES` times spread over `timeout` (at 0, ⅓ and ⅔ of it, so one lost frame
/// does not hide a holder) and reads the socket until `classify` finds an answer or the deadline.
pub(super) fn probe_loop(
    sock: &PacketSocket,
    timeout: Duration,
    probe: &[u8],
    mut classify: impl FnMut(&[u8]) -> Rx,
) -> io::Result<Option<Mac>> {
    let start = Instant::now();
    let deadline = start + timeout;
    let mut probes_sent = 0;
    let mut buf = [0u8; 1600];
    loop {
        let now = Instant::now();
        let next_send = start + timeout * probes_sent / PROBES;
        if probes_sent < PROBES && now >= next_send {
            sock.send(probe)?;
            probes_sent += 1;
            continue;
        }
        if now >= deadline {
            return Ok(None);
        }
        let until = if probes_sent < PROBES { next_send.min(deadline) } else { deadline };
        if sock.wait_readable(until.saturating_duration_since(now))? {
            while let Some(frame) = sock.try_recv(&mut buf)? {
                if let Rx::Answer(mac) = classify(frame) {
                    return Ok(Some(mac));
                }
            }
        }
    }
}
