//! The few `bpf(2)` commands the benchmarks need beyond what the datapath offers: loading
//! two-instruction XDP programs (the empty `XDP_PASS` baseline and the `XDP_TX` frame generator)
//! and TC programs (the empty `TCX_NEXT` baseline of the egress fence),
//! `BPF_PROG_RUN` with repeat and in live-frames mode, XDP links for those programs, and reading
//! a pinned array map.

use std::{
    ffi::CString,
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::Path,
    time::Duration,
};

use anyhow::{Context as _, Result};

const BPF_MAP_LOOKUP_ELEM: i64 = 1;
const BPF_PROG_LOAD: i64 = 5;
const BPF_OBJ_GET: i64 = 7;
const BPF_PROG_TEST_RUN: i64 = 10;
const BPF_LINK_CREATE: i64 = 28;
const BPF_PROG_TYPE_XDP: u32 = 6;
const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;
/// `TCX_NEXT`: what the empty TC baseline returns (and the egress fence when it passes).
pub const TCX_NEXT: i32 = -1;
const BPF_XDP: u32 = 37;
const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;
/// `BPF_F_TEST_XDP_LIVE_FRAMES`: frames run through the program really go where it sends them.
const BPF_F_TEST_XDP_LIVE_FRAMES: u32 = 1 << 1;

pub const XDP_DROP: i32 = 1;
pub const XDP_PASS: i32 = 2;
pub const XDP_TX: i32 = 3;

fn sys_bpf<T>(cmd: i64, attr: &mut T) -> io::Result<i64> {
    // SAFETY: `attr` is a live, properly laid out bpf_attr prefix of size_of::<T>() bytes; the
    // kernel accepts shorter attributes than its own union (the rest counts as zero).
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, std::ptr::from_mut(attr).cast::<u8>(), size_of::<T>()) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

fn fd_of(rc: i64) -> Result<OwnedFd> {
    let fd = i32::try_from(rc).context("bpf(2) returned an fd out of range")?;
    // SAFETY: the kernel just returned this new descriptor to us; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

#[repr(C)]
#[derive(Default)]
struct ProgLoad {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// Loads the XDP program `r0 = action; exit`.
pub fn load_constant_xdp(action: i32, name: &str) -> Result<OwnedFd> {
    load_constant(BPF_PROG_TYPE_XDP, BPF_XDP, action, name)
}

/// Loads the TC (`sched_cls`) program `r0 = action; exit`: the empty baseline of the egress
/// fence (`TCX_NEXT` = −1).
pub fn load_constant_tc(action: i32, name: &str) -> Result<OwnedFd> {
    load_constant(BPF_PROG_TYPE_SCHED_CLS, 0, action, name)
}

fn load_constant(prog_type: u32, expected_attach_type: u32, action: i32, name: &str) -> Result<OwnedFd> {
    // BPF_ALU64 | BPF_MOV | BPF_K to r0, then BPF_JMP | BPF_EXIT.
    let mut insns = [0u64; 2];
    let mov = [0xb7u8, 0x00, 0, 0];
    let imm = action.to_le_bytes();
    insns[0] = u64::from_le_bytes([mov[0], mov[1], mov[2], mov[3], imm[0], imm[1], imm[2], imm[3]]);
    insns[1] = u64::from_le_bytes([0x95, 0, 0, 0, 0, 0, 0, 0]);
    let license = c"GPL";
    let mut attr = ProgLoad {
        prog_type,
        insn_cnt: 2,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        expected_attach_type,
        ..ProgLoad::default()
    };
    for (d, s) in attr.prog_name.iter_mut().zip(name.bytes().take(15)) {
        *d = s;
    }
    let rc = sys_bpf(BPF_PROG_LOAD, &mut attr).with_context(|| format!("BPF_PROG_LOAD of {name}"))?;
    fd_of(rc)
}

#[repr(C)]
#[derive(Default)]
struct TestRun {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    pad: u32,
}

/// `struct xdp_md` as the test-run context.
#[repr(C)]
#[derive(Default)]
struct XdpMd {
    data: u32,
    data_end: u32,
    data_meta: u32,
    ingress_ifindex: u32,
    rx_queue_index: u32,
    egress_ifindex: u32,
}

fn raw_fd(fd: &OwnedFd) -> u32 {
    u32::try_from(fd.as_raw_fd()).unwrap_or(u32::MAX)
}

/// Runs `prog` `repeat` times on `frame`: (action, the kernel's mean duration per run).
pub fn prog_run(prog: &OwnedFd, frame: &[u8], repeat: u32) -> Result<(u32, Duration)> {
    let mut out = vec![0u8; frame.len() + 256];
    let mut attr = TestRun {
        prog_fd: raw_fd(prog),
        data_size_in: u32::try_from(frame.len())?,
        data_size_out: u32::try_from(out.len())?,
        data_in: frame.as_ptr() as u64,
        data_out: out.as_mut_ptr() as u64,
        repeat,
        ..TestRun::default()
    };
    sys_bpf(BPF_PROG_TEST_RUN, &mut attr).context("BPF_PROG_RUN")?;
    Ok((attr.retval, Duration::from_nanos(u64::from(attr.duration))))
}

/// Injects `count` copies of `frame` as if received on `ifindex` (in the calling thread's network
/// namespace) through `prog` in live-frames mode: an `XDP_TX` program sends them out of that
/// interface. Batches of 64 frames, as the kernel defaults.
pub fn inject_live(prog: &OwnedFd, frame: &[u8], ifindex: u32, count: u32) -> Result<()> {
    let mut ctx = XdpMd { data_end: u32::try_from(frame.len())?, ingress_ifindex: ifindex, ..XdpMd::default() };
    let mut attr = TestRun {
        prog_fd: raw_fd(prog),
        data_size_in: u32::try_from(frame.len())?,
        data_in: frame.as_ptr() as u64,
        repeat: count,
        ctx_size_in: u32::try_from(size_of::<XdpMd>())?,
        ctx_in: std::ptr::from_mut(&mut ctx) as u64,
        flags: BPF_F_TEST_XDP_LIVE_FRAMES,
        ..TestRun::default()
    };
    sys_bpf(BPF_PROG_TEST_RUN, &mut attr).context("BPF_PROG_RUN in live-frames mode (Linux 5.18 or later)")?;
    Ok(())
}

#[repr(C)]
#[derive(Default)]
struct LinkCreate {
    prog_fd: u32,
    target_ifindex: u32,
    attach_type: u32,
    flags: u32,
    pad: [u64; 4],
}

/// Attaches `prog` in native mode to `ifindex` (calling thread's namespace) through a `bpf_link`;
/// dropping the returned fd detaches it.
pub fn attach_xdp(prog: &OwnedFd, ifindex: u32) -> Result<OwnedFd> {
    let mut attr = LinkCreate {
        prog_fd: raw_fd(prog),
        target_ifindex: ifindex,
        attach_type: BPF_XDP,
        flags: XDP_FLAGS_DRV_MODE,
        ..LinkCreate::default()
    };
    let rc = sys_bpf(BPF_LINK_CREATE, &mut attr).context("BPF_LINK_CREATE (native XDP)")?;
    fd_of(rc)
}

#[repr(C)]
#[derive(Default)]
struct ObjGet {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
}

/// Opens a pinned map.
pub fn obj_get(path: &Path) -> Result<OwnedFd> {
    let c = CString::new(path.as_os_str().as_encoded_bytes()).context("pin path with a NUL byte")?;
    let mut attr = ObjGet { pathname: c.as_ptr() as u64, ..ObjGet::default() };
    let rc = sys_bpf(BPF_OBJ_GET, &mut attr).with_context(|| format!("opening pinned {}", path.display()))?;
    fd_of(rc)
}

#[repr(C)]
#[derive(Default)]
struct MapElem {
    map_fd: u32,
    pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

/// Reads element `index` of an array map whose value type is `V` (plain integers only).
pub fn array_get<V: Copy + Default>(map: &OwnedFd, index: u32) -> Result<V> {
    let mut v = V::default();
    let mut attr = MapElem {
        map_fd: raw_fd(map),
        key: std::ptr::from_ref(&index) as u64,
        value: std::ptr::from_mut(&mut v) as u64,
        ..MapElem::default()
    };
    sys_bpf(BPF_MAP_LOOKUP_ELEM, &mut attr).context("BPF_MAP_LOOKUP_ELEM")?;
    Ok(v)
}

/// Reads element `index` of a per-CPU array map of `u64` into `out` (one value per possible CPU).
pub fn array_get_into(map: &OwnedFd, index: u32, out: &mut [u64]) -> Result<()> {
    let mut attr = MapElem {
        map_fd: raw_fd(map),
        key: std::ptr::from_ref(&index) as u64,
        value: out.as_mut_ptr() as u64,
        ..MapElem::default()
    };
    sys_bpf(BPF_MAP_LOOKUP_ELEM, &mut attr).context("BPF_MAP_LOOKUP_ELEM")?;
    Ok(())
}

/// The index of interface `name` in the calling thread's network namespace.
pub fn ifindex(name: &str) -> Result<u32> {
    let c = CString::new(name)?;
    // SAFETY: NUL-terminated name.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    anyhow::ensure!(i != 0, "no interface {name}: {}", io::Error::last_os_error());
    Ok(i)
}

fn ifreq_for(name: &str) -> Result<libc::ifreq> {
    // SAFETY: ifreq is plain old data; all zeroes is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    anyhow::ensure!(name.len() < req.ifr_name.len(), "interface name {name} too long");
    for (d, s) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *d = libc::c_char::from_ne_bytes([s]);
    }
    Ok(req)
}

fn ioctl_sock() -> Result<OwnedFd> {
    // SAFETY: plain socket(2).
    let s = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    anyhow::ensure!(s >= 0, "socket: {}", io::Error::last_os_error());
    // SAFETY: new descriptor owned here.
    Ok(unsafe { OwnedFd::from_raw_fd(s) })
}

/// The MAC address of `name` (calling thread's namespace).
pub fn mac_of(name: &str) -> Result<[u8; 6]> {
    let s = ioctl_sock()?;
    let mut req = ifreq_for(name)?;
    // SAFETY: SIOCGIFHWADDR fills the ifreq we own.
    let rc = unsafe { libc::ioctl(s.as_raw_fd(), libc::SIOCGIFHWADDR, &raw mut req) };
    anyhow::ensure!(rc == 0, "SIOCGIFHWADDR {name}: {}", io::Error::last_os_error());
    // SAFETY: the kernel filled the hwaddr member of the union.
    let sa = unsafe { req.ifr_ifru.ifru_hwaddr };
    let mut mac = [0u8; 6];
    for (d, s) in mac.iter_mut().zip(sa.sa_data.iter()) {
        *d = s.to_ne_bytes()[0];
    }
    Ok(mac)
}

/// Sets `name` (calling thread's namespace) administratively up or down with one ioctl: a link
/// fault at a precisely known time.
pub fn set_link(name: &str, up: bool) -> Result<()> {
    let s = ioctl_sock()?;
    let mut req = ifreq_for(name)?;
    // SAFETY: SIOCGIFFLAGS fills the ifreq we own.
    let rc = unsafe { libc::ioctl(s.as_raw_fd(), libc::SIOCGIFFLAGS, &raw mut req) };
    anyhow::ensure!(rc == 0, "SIOCGIFFLAGS {name}: {}", io::Error::last_os_error());
    // SAFETY: the flags member was just filled by the kernel.
    let mut flags = unsafe { req.ifr_ifru.ifru_flags };
    let up_flag = i16::try_from(libc::IFF_UP).unwrap_or(1);
    if up {
        flags |= up_flag;
    } else {
        flags &= !up_flag;
    }
    req.ifr_ifru.ifru_flags = flags;
    // SAFETY: SIOCSIFFLAGS reads the ifreq we own.
    let rc = unsafe { libc::ioctl(s.as_raw_fd(), libc::SIOCSIFFLAGS, &raw const req) };
    anyhow::ensure!(rc == 0, "SIOCSIFFLAGS {name}: {}", io::Error::last_os_error());
    Ok(())
}
