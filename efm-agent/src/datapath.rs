//! The kernel side as seen from user space: load the embedded XDP object, attach it, pin it, and
//! read and write its maps with typed values.
//!
//! All maps, the XDP links and the TCX egress links are pinned under one bpffs directory per
//! cluster (`/sys/fs/bpf/efm/<cluster>/`: `link_<iface>` for XDP, `egress_<iface>` for the egress
//! fence). Opening a datapath whose directory already holds pinned state re-uses the maps as they
//! are and atomically swaps the new programs onto the pinned links, so an agent restart or crash
//! never lifts a fence and never resets the kernel's view of the peers.
//! Only [`Datapath::detach`] (an orderly stop) removes the pins.
//!
//! Each generation of the maps has a random non-zero nonce ([`Datapath::nonce`], stored in
//! `EFM_CONFIG`): kept when the pinned maps are re-opened, drawn afresh whenever they are created.
//! The kernel accepts only heartbeats echoing it, so nothing captured before the maps were created
//! is accepted again (ARCHITECTURE.md, "no heartbeat is accepted twice"). Pinned maps of another
//! shape (another efm version) are refused with [`DatapathError::IncompatiblePin`], never re-used
//! or silently replaced.

#![expect(
    clippy::result_large_err,
    reason = "errors carry aya's error values for context; datapath calls are rare, never per packet"
)]

use std::{
    fs, io,
    net::IpAddr,
    path::{Path, PathBuf},
};

use aya::{
    maps::{
        lpm_trie::{Key, LpmTrie},
        Array, HashMap, MapData, MapError, MapInfo, PerCpuArray, ProgramArray,
    },
    programs::{
        links::{FdLink, PinnedLink},
        tc::{SchedClassifierLink, TcAttachOptions},
        xdp::XdpLink,
        LinkOrder, ProgramError, SchedClassifier, TcAttachType, TestRun, TestRunOptions, Xdp, XdpMode,
    },
    Ebpf, EbpfError, EbpfLoader, Pod,
};
use efm_common::jump::{JUMP_COUNT, JUMP_PROGRAMS, MAP_JUMP};
use efm_common::maps::{
    ClusterKey, Counter, DatapathConfig, FenceState, LeaseState, PeerAddr, PeerInfo, PeerSlot, RttHistogram,
    EGRESS_PROG_NAME, MAP_CONFIG, MAP_EXEMPT, MAP_FENCE, MAP_KEY, MAP_LEASE, MAP_PEERS, MAP_RTT_HIST, MAP_SERVICE,
    MAP_SLOTS, MAP_STATS, MAX_EXEMPT, MAX_PEER_ADDRS, MAX_SERVICE_ADDRS, MAX_SLOTS, PROG_NAME, RTT_BUCKETS,
};
use efm_common::serving::{EXEMPT_ALWAYS, EXEMPT_MEMBER};

/// The XDP object built from `efm-ebpf` by this crate's build script.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/efm.o"));

/// Where bpffs is mounted.
pub const BPFFS: &str = "/sys/fs/bpf";
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
const LINK_PREFIX: &str = "link_";
/// Pinned TCX egress links: `egress_<iface>`.
const EGRESS_PREFIX: &str = "egress_";

/// The pin directory of a cluster: `/sys/fs/bpf/efm/<cluster>`.
#[must_use]
pub fn pin_dir_for(cluster: &str) -> PathBuf {
    Path::new(BPFFS).join("efm").join(cluster)
}

/// How to attach (`xdp.mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ModeChoice {
    /// Native (driver) mode, falling back to generic when the driver refuses.
    #[default]
    Auto,
    Native,
    Generic,
}

/// How an interface ended up attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attachment {
    Native,
    Generic,
    /// A pinned link from an earlier run was found; the program on it was replaced atomically.
    Reattached,
}

impl std::fmt::Display for Attachment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Native => "native",
            Self::Generic => "generic",
            Self::Reattached => "re-attached to pinned link",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error("bpffs is not mounted at {BPFFS} and mounting it failed: {0}")]
    Bpffs(#[source] io::Error),
    #[error("cannot create pin directory {path}: {source}")]
    PinDir { path: PathBuf, source: io::Error },
    #[error(
        "pinned map {path} does not match this efm build ({what}: pinned {found}, expected \
         {expected}); it was left by another efm version: stop the old agent with an orderly \
         shutdown or remove {dir}"
    )]
    IncompatiblePin { path: PathBuf, dir: PathBuf, what: &'static str, found: u32, expected: u32 },
    #[error("loading the XDP object failed: {0} (efm needs root, or CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON, and a kernel with BTF)")]
    Load(#[source] EbpfError),
    #[error("the XDP object has no program {0}")]
    ProgramMissing(&'static str),
    #[error("program {PROG_NAME}: {0}")]
    Program(#[source] ProgramError),
    #[error("egress program {EGRESS_PROG_NAME}: {0}")]
    EgressProgram(#[source] ProgramError),
    #[error("attaching the egress fence (TCX egress) to {iface} failed: {source} (efm needs Linux 6.6 or later with CONFIG_NET_XGRESS)")]
    AttachEgress { iface: String, source: ProgramError },
    #[error("attaching XDP to {iface} in {mode} mode failed: {source}{hint}")]
    Attach { iface: String, mode: &'static str, hint: &'static str, source: ProgramError },
    #[error(
        "XDP on {iface} was attached through netlink, which cannot be pinned; efm needs bpf_link (Linux 5.9 or later)"
    )]
    NotPinnable { iface: String },
    #[error("pinning {path}: {source}")]
    Pin { path: PathBuf, source: io::Error },
    #[error("map {name}: {source}")]
    Map { name: &'static str, source: MapError },
    #[error("map {0} is missing from the XDP object")]
    MapMissing(&'static str),
    #[error("{what}: {count} entries given, at most {max} fit")]
    TooMany { what: &'static str, count: usize, max: usize },
    #[error("peer {addr}: slot {slot} is out of range (0..{MAX_SLOTS})")]
    BadSlot { addr: IpAddr, slot: u32 },
    #[error("peer address {addr} is listed twice")]
    DuplicatePeer { addr: IpAddr },
    #[error("exempt prefix {addr}/{prefix}: prefix length out of range")]
    BadPrefix { addr: IpAddr, prefix: u8 },
    #[error("BPF_PROG_RUN failed: {0}")]
    TestRun(#[source] ProgramError),
    #[error("drawing the datapath nonce from the kernel's random source failed: {0}")]
    Nonce(String),
}

fn map_err(name: &'static str) -> impl FnOnce(MapError) -> DatapathError {
    move |source| DatapathError::Map { name, source }
}

/// Program `name` of the object as its type `P`; a wrong type is reported through `err`.
fn program_in<'a, P>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
    err: fn(ProgramError) -> DatapathError,
) -> Result<&'a mut P, DatapathError>
where
    &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
{
    ebpf.program_mut(name).ok_or(DatapathError::ProgramMissing(name))?.try_into().map_err(err)
}

/// `BPF_PROG_RUN` of `frame`, `repeat` times, through an XDP or TC program, with room in the
/// output for a frame that grows.
fn run_frame<P>(prog: &P, frame: &[u8], repeat: u32) -> Result<RunResult, DatapathError>
where
    P: for<'a> TestRun<Opts<'a> = TestRunOptions<'a>, Result = aya::programs::TestRunResult>,
{
    let mut out = vec![0u8; frame.len().max(64) + 256];
    let mut opts = TestRunOptions::new();
    opts.data_in = Some(frame);
    opts.data_out = Some(&mut out);
    opts.repeat = repeat;
    let r = prog.test_run(opts).map_err(DatapathError::TestRun)?;
    out.truncate(r.data_size_out as usize);
    Ok(RunResult { action: r.return_value, frame: out, duration: r.duration })
}

/// 16-byte map form of an address (IPv4 mapped into IPv6).
#[must_use]
pub fn peer_addr(ip: IpAddr) -> PeerAddr {
    match ip {
        IpAddr::V4(v4) => PeerAddr::v4(v4.octets()),
        IpAddr::V6(v6) => PeerAddr::v6(v6.octets()),
    }
}

/// One peer node: its id, its slot, and every address its heartbeats may come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    pub node_id: u32,
    pub slot: u32,
    pub addrs: Vec<IpAddr>,
}

/// Outcome of one `BPF_PROG_RUN`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunResult {
    /// `XDP_ABORTED` 0, `XDP_DROP` 1, `XDP_PASS` 2, `XDP_TX` 3.
    pub action: u32,
    /// The frame as the program left it.
    pub frame: Vec<u8>,
    pub duration: std::time::Duration,
}

/// Counter values summed over CPUs, indexed by [`Counter`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters(pub Vec<u64>);

impl Counters {
    #[must_use]
    pub fn get(&self, c: Counter) -> u64 {
        self.0.get(c as usize).copied().unwrap_or(0)
    }

    /// The counters that moved since `before`, and by how much.
    #[must_use]
    pub fn moved_since(&self, before: &Self) -> Vec<(Counter, u64)> {
        Counter::ALL
            .iter()
            .filter_map(|&c| {
                let d = self.get(c).wrapping_sub(before.get(c));
                (d != 0).then_some((c, d))
            })
            .collect()
    }
}

/// The loaded XDP program and its maps.
pub struct Datapath {
    ebpf: Ebpf,
    pin_dir: PathBuf,
    attachments: Vec<(String, Attachment)>,
    reused_maps: bool,
    nonce: u64,
}

impl std::fmt::Debug for Datapath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Datapath")
            .field("pin_dir", &self.pin_dir)
            .field("attachments", &self.attachments)
            .field("reused_maps", &self.reused_maps)
            .field("nonce", &format_args!("{:#018x}", self.nonce))
            .finish_non_exhaustive()
    }
}

impl Datapath {
    /// Loads the program with its maps pinned in `pin_dir` (re-using any pinned there) without
    /// attaching it anywhere; used for `BPF_PROG_RUN` and by [`Datapath::open`].
    pub fn load(pin_dir: &Path) -> Result<Self, DatapathError> {
        ensure_bpffs()?;
        fs::create_dir_all(pin_dir).map_err(|source| DatapathError::PinDir { path: pin_dir.to_owned(), source })?;
        let reused_maps = check_pinned_maps(pin_dir)?;
        let whole_generation = GENERATION_MAPS.iter().all(|m| pin_dir.join(m).exists());
        let mut ebpf =
            EbpfLoader::new().default_map_pin_directory(pin_dir).load(OBJECT).map_err(DatapathError::Load)?;
        let prog: &mut Xdp = program_in(&mut ebpf, PROG_NAME, DatapathError::Program)?;
        prog.load().map_err(DatapathError::Program)?;
        let mut fds = Vec::new();
        for (index, name) in JUMP_PROGRAMS {
            let p: &mut Xdp = program_in(&mut ebpf, name, DatapathError::Program)?;
            p.load().map_err(DatapathError::Program)?;
            fds.push((
                index,
                p.fd()
                    .map_err(DatapathError::Program)?
                    .try_clone()
                    .map_err(|e| DatapathError::Program(ProgramError::IOError(e)))?,
            ));
        }
        let jump_map = ebpf.map_mut(MAP_JUMP).ok_or(DatapathError::MapMissing(MAP_JUMP))?;
        let mut jumps = ProgramArray::try_from(jump_map).map_err(map_err(MAP_JUMP))?;
        for (index, fd) in &fds {
            jumps.set(*index, fd, 0).map_err(map_err(MAP_JUMP))?;
        }
        let egress: &mut SchedClassifier = program_in(&mut ebpf, EGRESS_PROG_NAME, DatapathError::EgressProgram)?;
        egress.load().map_err(DatapathError::EgressProgram)?;
        let mut dp = Self { ebpf, pin_dir: pin_dir.to_owned(), attachments: Vec::new(), reused_maps, nonce: 0 };
        dp.init_nonce(whole_generation)?;
        Ok(dp)
    }

    /// Keeps the generation nonce of pinned maps that are re-opened whole, and draws a fresh one
    /// when any of the maps it protects was created now (see [`GENERATION_MAPS`]).
    fn init_nonce(&mut self, whole_generation: bool) -> Result<(), DatapathError> {
        let mut cfg: DatapathConfig = self.get_single(MAP_CONFIG)?;
        if !whole_generation || cfg.nonce == 0 {
            cfg.nonce = fresh_nonce()?;
            self.set_single(MAP_CONFIG, &cfg)?;
            tracing::info!(nonce = %format_args!("{:#018x}", cfg.nonce), "new datapath generation: fresh heartbeat nonce");
        } else {
            tracing::info!(nonce = %format_args!("{:#018x}", cfg.nonce), "re-opened pinned maps: heartbeat nonce kept");
        }
        self.nonce = cfg.nonce;
        Ok(())
    }

    /// This datapath generation's nonce (never 0): our PINGs carry it as their sender nonce, our
    /// kernel's PONGs too, and a heartbeat is accepted only if it echoes it.
    #[must_use]
    pub fn nonce(&self) -> u64 {
        self.nonce
    }

    /// Loads the programs and attaches them to every interface in `ifaces` (names in the calling
    /// thread's network namespace): XDP on ingress, the egress fence on TCX egress. Links pinned
    /// by an earlier run are taken over; pinned links for interfaces no longer listed are removed.
    pub fn open(pin_dir: &Path, ifaces: &[&str], mode: ModeChoice) -> Result<Self, DatapathError> {
        let mut dp = Self::load(pin_dir)?;
        for iface in ifaces {
            let att = dp.attach(iface, mode)?;
            dp.attach_egress(iface)?;
            dp.attachments.push(((*iface).to_owned(), att));
        }
        dp.remove_stale_links(ifaces);
        Ok(dp)
    }

    /// Interfaces and how each was attached.
    #[must_use]
    pub fn attachments(&self) -> &[(String, Attachment)] {
        &self.attachments
    }

    /// Whether the maps already existed (state kept from an earlier run).
    #[must_use]
    pub fn reused_maps(&self) -> bool {
        self.reused_maps
    }

    #[must_use]
    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    fn program(&mut self) -> Result<&mut Xdp, DatapathError> {
        program_in(&mut self.ebpf, PROG_NAME, DatapathError::Program)
    }

    fn egress_program(&mut self) -> Result<&mut SchedClassifier, DatapathError> {
        program_in(&mut self.ebpf, EGRESS_PROG_NAME, DatapathError::EgressProgram)
    }

    fn link_path(&self, iface: &str) -> PathBuf {
        self.pin_dir.join(format!("{LINK_PREFIX}{iface}"))
    }

    /// Attaches the egress fence to `iface` as a TCX egress link pinned at `egress_<iface>`, or
    /// swaps this load's program onto the link pinned by an earlier run (`bpf_link_update`:
    /// atomic, no packet passes unfenced in between). Returns whether a pinned link was re-used.
    fn attach_egress(&mut self, iface: &str) -> Result<bool, DatapathError> {
        let path = self.pin_dir.join(format!("{EGRESS_PREFIX}{iface}"));
        let err = |source| DatapathError::AttachEgress { iface: iface.into(), source };
        if path.exists() {
            if let Ok(pinned) = PinnedLink::from_pin(&path) {
                let fd_link: FdLink = pinned.into();
                if let Ok(link) = SchedClassifierLink::try_from(fd_link) {
                    self.egress_program()?.attach_to_link(link).map_err(err)?;
                    return Ok(true);
                }
            }
            // Not a usable TCX link (a stale file): replace it.
            let _ = fs::remove_file(&path);
        }
        let prog = self.egress_program()?;
        let id = prog
            .attach_with_options(iface, TcAttachType::Egress, TcAttachOptions::TcxOrder(LinkOrder::default()))
            .map_err(err)?;
        let link = prog.take_link(id).map_err(DatapathError::EgressProgram)?;
        let fd_link =
            FdLink::try_from(link).map_err(|e| err(ProgramError::IOError(io::Error::other(e.to_string()))))?;
        fd_link
            .pin(&path)
            .map_err(|e| DatapathError::Pin { path: path.clone(), source: io::Error::other(e.to_string()) })?;
        Ok(false)
    }

    fn attach(&mut self, iface: &str, mode: ModeChoice) -> Result<Attachment, DatapathError> {
        let path = self.link_path(iface);
        if path.exists() {
            if let Ok(pinned) = PinnedLink::from_pin(&path) {
                let fd_link: FdLink = pinned.into();
                if let Ok(link) = XdpLink::try_from(fd_link) {
                    self.program()?.attach_to_link(link).map_err(|source| DatapathError::Attach {
                        iface: iface.into(),
                        mode: "pinned",
                        hint: "",
                        source,
                    })?;
                    return Ok(Attachment::Reattached);
                }
            }
            // Not a usable XDP link (a stale file): replace it.
            let _ = fs::remove_file(&path);
        }
        let tries: &[(XdpMode, Attachment, &'static str)] = match mode {
            ModeChoice::Auto => {
                &[(XdpMode::Driver, Attachment::Native, "native"), (XdpMode::Skb, Attachment::Generic, "generic")]
            }
            ModeChoice::Native => &[(XdpMode::Driver, Attachment::Native, "native")],
            ModeChoice::Generic => &[(XdpMode::Skb, Attachment::Generic, "generic")],
        };
        let mut last = None;
        for &(xdp_mode, att, name) in tries {
            let prog = self.program()?;
            match prog.attach(iface, xdp_mode) {
                Ok(id) => {
                    let link = prog.take_link(id).map_err(DatapathError::Program)?;
                    let fd_link =
                        FdLink::try_from(link).map_err(|_| DatapathError::NotPinnable { iface: iface.into() })?;
                    fd_link.pin(&path).map_err(|e| DatapathError::Pin {
                        path: path.clone(),
                        source: io::Error::other(e.to_string()),
                    })?;
                    return Ok(att);
                }
                Err(source) => last = Some((name, source)),
            }
        }
        let (name, source) = last.expect("tries is never empty");
        let hint = if mode == ModeChoice::Native { "; try xdp.mode=auto or generic" } else { "" };
        Err(DatapathError::Attach { iface: iface.into(), mode: name, hint, source })
    }

    fn remove_stale_links(&self, keep: &[&str]) {
        let Ok(entries) = fs::read_dir(&self.pin_dir) else { return };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            for (prefix, what) in [(LINK_PREFIX, "XDP"), (EGRESS_PREFIX, "egress")] {
                if let Some(iface) = name.strip_prefix(prefix) {
                    if !keep.contains(&iface) {
                        tracing::warn!(
                            iface,
                            link = what,
                            "removing a pinned link of an interface no longer configured"
                        );
                        let _ = fs::remove_file(e.path());
                    }
                }
            }
        }
    }

    /// Orderly stop: detaches from every interface and removes all pins and the pin directory.
    /// A fence held in the maps is lifted by this; callers that must keep a node fenced across a
    /// stop drop the `Datapath` instead.
    pub fn detach(self) -> Result<(), DatapathError> {
        let dir = self.pin_dir.clone();
        drop(self);
        if let Ok(entries) = fs::read_dir(&dir) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with(LINK_PREFIX) || name.starts_with(EGRESS_PREFIX) || name.starts_with("EFM_") {
                    fs::remove_file(e.path()).map_err(|source| DatapathError::Pin { path: e.path(), source })?;
                }
            }
        }
        match fs::remove_dir(&dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(DatapathError::PinDir { path: dir, source: e }),
            _ => Ok(()),
        }
    }

    /// Runs the program once on `frame` with `BPF_PROG_RUN`.
    pub fn test_run(&mut self, frame: &[u8]) -> Result<RunResult, DatapathError> {
        self.test_run_repeat(frame, 1)
    }

    /// Runs the program `repeat` times on `frame`; `duration` is the kernel's mean per run.
    pub fn test_run_repeat(&mut self, frame: &[u8], repeat: u32) -> Result<RunResult, DatapathError> {
        run_frame(self.program()?, frame, repeat)
    }

    /// Runs the egress fence `repeat` times on `frame` (an Ethernet frame as it would leave);
    /// `action` is the TC verdict as `u32` (`TCX_NEXT` −1 = `u32::MAX`, `TC_ACT_SHOT` 2).
    pub fn test_run_egress(&mut self, frame: &[u8], repeat: u32) -> Result<RunResult, DatapathError> {
        run_frame(self.egress_program()?, frame, repeat)
    }

    fn array<V: Pod>(&self, name: &'static str) -> Result<Array<&MapData, V>, DatapathError> {
        let map = self.ebpf.map(name).ok_or(DatapathError::MapMissing(name))?;
        Array::try_from(map).map_err(map_err(name))
    }

    fn array_mut<V: Pod>(&mut self, name: &'static str) -> Result<Array<&mut MapData, V>, DatapathError> {
        let map = self.ebpf.map_mut(name).ok_or(DatapathError::MapMissing(name))?;
        Array::try_from(map).map_err(map_err(name))
    }

    fn set_single<V: Pod>(&mut self, name: &'static str, v: &V) -> Result<(), DatapathError> {
        self.array_mut::<V>(name)?.set(0, v, 0).map_err(map_err(name))
    }

    fn get_single<V: Pod>(&self, name: &'static str) -> Result<V, DatapathError> {
        self.array::<V>(name)?.get(&0, 0).map_err(map_err(name))
    }

    /// Writes the static settings. `cfg.nonce` is ignored: the generation's nonce, chosen when the
    /// maps were created, is written with them (it must never change while the maps live).
    pub fn set_config(&mut self, cfg: &DatapathConfig) -> Result<(), DatapathError> {
        let cfg = DatapathConfig { nonce: self.nonce, ..*cfg };
        self.set_single(MAP_CONFIG, &cfg)
    }

    pub fn config(&self) -> Result<DatapathConfig, DatapathError> {
        self.get_single(MAP_CONFIG)
    }

    pub fn set_key(&mut self, key: &ClusterKey) -> Result<(), DatapathError> {
        self.set_single(MAP_KEY, key)
    }

    /// Writes the agent's fence state. One map update: the kernel sees the old or the new value,
    /// never a mix, and applies it to the very next packet.
    pub fn set_fence(&mut self, fence: &FenceState) -> Result<(), DatapathError> {
        self.set_single(MAP_FENCE, fence)
    }

    pub fn fence(&self) -> Result<FenceState, DatapathError> {
        self.get_single(MAP_FENCE)
    }

    pub fn lease(&self) -> Result<LeaseState, DatapathError> {
        self.get_single(MAP_LEASE)
    }

    pub fn slot(&self, slot: u32) -> Result<PeerSlot, DatapathError> {
        self.array::<PeerSlot>(MAP_SLOTS)?.get(&slot, 0).map_err(map_err(MAP_SLOTS))
    }

    /// Clears a slot, for a slot handed to a different peer.
    pub fn reset_slot(&mut self, slot: u32) -> Result<(), DatapathError> {
        self.array_mut::<PeerSlot>(MAP_SLOTS)?.set(slot, PeerSlot::default(), 0).map_err(map_err(MAP_SLOTS))
    }

    /// The RTT histogram of a slot, summed over CPUs.
    pub fn rtt_histogram(&self, slot: u32) -> Result<[u64; RTT_BUCKETS], DatapathError> {
        let map = self.ebpf.map(MAP_RTT_HIST).ok_or(DatapathError::MapMissing(MAP_RTT_HIST))?;
        let arr: PerCpuArray<&MapData, RttHistogram> = PerCpuArray::try_from(map).map_err(map_err(MAP_RTT_HIST))?;
        let mut sum = [0u64; RTT_BUCKETS];
        for cpu in arr.get(&slot, 0).map_err(map_err(MAP_RTT_HIST))?.iter() {
            for (s, b) in sum.iter_mut().zip(cpu.buckets.iter()) {
                *s += b;
            }
        }
        Ok(sum)
    }

    /// All verdict counters, summed over CPUs.
    pub fn counters(&self) -> Result<Counters, DatapathError> {
        let map = self.ebpf.map(MAP_STATS).ok_or(DatapathError::MapMissing(MAP_STATS))?;
        let arr: PerCpuArray<&MapData, u64> = PerCpuArray::try_from(map).map_err(map_err(MAP_STATS))?;
        let mut out = Vec::with_capacity(Counter::COUNT as usize);
        for i in 0..Counter::COUNT {
            out.push(arr.get(&i, 0).map_err(map_err(MAP_STATS))?.iter().sum());
        }
        Ok(Counters(out))
    }

    /// Replaces the peer table.
    pub fn set_peers(&mut self, peers: &[Peer]) -> Result<(), DatapathError> {
        let mut want = std::collections::HashMap::new();
        for p in peers {
            for &addr in &p.addrs {
                if p.slot as usize >= MAX_SLOTS {
                    return Err(DatapathError::BadSlot { addr, slot: p.slot });
                }
                let info = PeerInfo { node_id: p.node_id, slot: p.slot };
                if want.insert(peer_addr(addr), info).is_some() {
                    return Err(DatapathError::DuplicatePeer { addr });
                }
            }
        }
        check_count("peer addresses", want.len(), MAX_PEER_ADDRS)?;
        let map = self.ebpf.map_mut(MAP_PEERS).ok_or(DatapathError::MapMissing(MAP_PEERS))?;
        let mut hm: HashMap<&mut MapData, PeerAddr, PeerInfo> = HashMap::try_from(map).map_err(map_err(MAP_PEERS))?;
        let old: Vec<PeerAddr> = hm.keys().filter_map(Result::ok).collect();
        for k in old.iter().filter(|k| !want.contains_key(k)) {
            hm.remove(k).map_err(map_err(MAP_PEERS))?;
        }
        for (k, v) in &want {
            hm.insert(k, v, 0).map_err(map_err(MAP_PEERS))?;
        }
        Ok(())
    }

    /// Replaces the set of this node's service addresses — its own `addrs` and the `vips`: client
    /// traffic to the database port on these is what the fence cuts off, and ARP requests for a
    /// VIP go unanswered while the node does not serve.
    pub fn set_service_addrs(&mut self, addrs: &[IpAddr], vips: &[IpAddr]) -> Result<(), DatapathError> {
        let mut want: std::collections::BTreeMap<[u8; 16], u32> =
            addrs.iter().map(|a| (peer_addr(*a).octets, efm_common::maps::SERVICE_NODE)).collect();
        for v in vips {
            want.insert(peer_addr(*v).octets, efm_common::maps::SERVICE_VIP);
        }
        check_count("service addresses", want.len(), MAX_SERVICE_ADDRS)?;
        let map = self.ebpf.map_mut(MAP_SERVICE).ok_or(DatapathError::MapMissing(MAP_SERVICE))?;
        let mut hm: HashMap<&mut MapData, PeerAddr, u32> = HashMap::try_from(map).map_err(map_err(MAP_SERVICE))?;
        let old: Vec<PeerAddr> = hm.keys().filter_map(Result::ok).collect();
        for k in old.iter().filter(|k| !want.contains_key(&k.octets)) {
            hm.remove(k).map_err(map_err(MAP_SERVICE))?;
        }
        for (o, kind) in &want {
            hm.insert(PeerAddr::v6(*o), kind, 0).map_err(map_err(MAP_SERVICE))?;
        }
        Ok(())
    }

    /// Replaces the exempt prefixes (`fence.exempt.hosts`), with no member entries: see
    /// [`Datapath::set_exempt_with_members`].
    pub fn set_exempt(&mut self, prefixes: &[(IpAddr, u8)]) -> Result<(), DatapathError> {
        self.set_exempt_with_members(prefixes, &[])
    }

    /// Replaces the `EFM_EXEMPT` trie: `prefixes` (`fence.exempt.hosts`) pass the fence in every
    /// state; `members` (the cluster's nodes) only while the node is fenced explicitly only
    /// (`efm_common::serving::exempt_applies`). A member covered by an always-exempt prefix gets
    /// no entry of its own: the trie's longest match would otherwise narrow the prefix's rule
    /// for that address.
    pub fn set_exempt_with_members(
        &mut self,
        prefixes: &[(IpAddr, u8)],
        members: &[IpAddr],
    ) -> Result<(), DatapathError> {
        let mut want = std::collections::BTreeMap::new();
        for &(addr, prefix) in prefixes {
            let bits = match addr {
                IpAddr::V4(_) if prefix <= 32 => 96 + u32::from(prefix),
                IpAddr::V6(_) if prefix <= 128 => u32::from(prefix),
                _ => return Err(DatapathError::BadPrefix { addr, prefix }),
            };
            want.insert((bits, mask(peer_addr(addr).octets, bits)), EXEMPT_ALWAYS);
        }
        let always: Vec<(u32, [u8; 16])> = want.keys().copied().collect();
        for &m in members {
            let octets = peer_addr(m).octets;
            if always.iter().any(|&(bits, data)| mask(octets, bits) == data) {
                continue;
            }
            want.entry((128, octets)).or_insert(EXEMPT_MEMBER);
        }
        check_count("exempt prefixes", want.len(), MAX_EXEMPT)?;
        let map = self.ebpf.map_mut(MAP_EXEMPT).ok_or(DatapathError::MapMissing(MAP_EXEMPT))?;
        let mut trie: LpmTrie<&mut MapData, [u8; 16], u32> = LpmTrie::try_from(map).map_err(map_err(MAP_EXEMPT))?;
        let old: Vec<Key<[u8; 16]>> = trie.keys().filter_map(Result::ok).collect();
        for k in &old {
            if !want.contains_key(&(k.prefix_len(), k.data())) {
                trie.remove(k).map_err(map_err(MAP_EXEMPT))?;
            }
        }
        for ((bits, data), kind) in &want {
            trie.insert(&Key::new(*bits, *data), kind, 0).map_err(map_err(MAP_EXEMPT))?;
        }
        Ok(())
    }
}

fn mask(mut octets: [u8; 16], bits: u32) -> [u8; 16] {
    for (i, o) in octets.iter_mut().enumerate() {
        let start = u32::try_from(i).unwrap_or(u32::MAX) * 8;
        if start >= bits {
            *o = 0;
        } else if bits - start < 8 {
            *o &= 0xffu8 << (8 - (bits - start));
        }
    }
    octets
}

fn check_count(what: &'static str, count: usize, max: u32) -> Result<(), DatapathError> {
    let max = max as usize;
    if count > max {
        return Err(DatapathError::TooMany { what, count, max });
    }
    Ok(())
}

/// Mounts bpffs at [`BPFFS`] when nothing is mounted there (systemd normally does this).
fn ensure_bpffs() -> Result<(), DatapathError> {
    if rustix::fs::statfs(BPFFS).is_ok_and(|st| st.f_type == BPF_FS_MAGIC) {
        return Ok(());
    }
    fs::create_dir_all(BPFFS).map_err(DatapathError::Bpffs)?;
    rustix::mount::mount("bpf", BPFFS, "bpf", rustix::mount::MountFlags::empty(), None)
        .map_err(|e| DatapathError::Bpffs(e.into()))?;
    tracing::warn!(
        "bpffs was not mounted at {BPFFS}; mounted it. If this process runs in a private mount \
         namespace (ip netns exec, some container runtimes), the pins live only as long as it \
         does and a crash lifts the fence: mount bpffs on the host instead"
    );
    Ok(())
}

/// The maps one generation nonce protects: created together, so the nonce is kept only when all
/// of them are re-opened. (`EFM_CONFIG` holds the nonce, `EFM_SLOTS` the last accepted
/// heartbeats, `EFM_LEASE` the endorsements.)
const GENERATION_MAPS: [&str; 3] = [MAP_CONFIG, MAP_SLOTS, MAP_LEASE];

/// A random non-zero 64-bit nonce.
fn fresh_nonce() -> Result<u64, DatapathError> {
    loop {
        let mut b = [0u8; 8];
        getrandom::getrandom(&mut b).map_err(|e| DatapathError::Nonce(e.to_string()))?;
        let n = u64::from_ne_bytes(b);
        if n != 0 {
            return Ok(n);
        }
    }
}

/// Expected key size, value size and entries of every pinned map.
fn expected_maps() -> [(&'static str, u32, u32, u32); 11] {
    fn sz<T>() -> u32 {
        u32::try_from(size_of::<T>()).unwrap_or(u32::MAX)
    }
    let slots = u32::try_from(MAX_SLOTS).unwrap_or(u32::MAX);
    [
        (MAP_CONFIG, 4, sz::<DatapathConfig>(), 1),
        (MAP_KEY, 4, sz::<ClusterKey>(), 1),
        (MAP_FENCE, 4, sz::<FenceState>(), 1),
        (MAP_LEASE, 4, sz::<LeaseState>(), 1),
        (MAP_PEERS, 16, sz::<PeerInfo>(), MAX_PEER_ADDRS),
        (MAP_SLOTS, 4, sz::<PeerSlot>(), slots),
        (MAP_RTT_HIST, 4, sz::<RttHistogram>(), slots),
        (MAP_SERVICE, 16, 4, MAX_SERVICE_ADDRS),
        (MAP_EXEMPT, 20, 4, MAX_EXEMPT),
        (MAP_STATS, 4, 8, Counter::COUNT),
        (MAP_JUMP, 4, 4, JUMP_COUNT),
    ]
}

/// Refuses pinned maps whose shape differs from this build's (aya would silently re-use them).
/// Returns whether any pinned map was found.
fn check_pinned_maps(dir: &Path) -> Result<bool, DatapathError> {
    let mut found = false;
    for (name, key, value, entries) in expected_maps() {
        let path = dir.join(name);
        if !path.exists() {
            continue;
        }
        found = true;
        let info = MapInfo::from_pin(&path).map_err(map_err(name))?;
        for (what, got, want) in [
            ("key size", info.key_size(), key),
            ("value size", info.value_size(), value),
            ("max entries", info.max_entries(), entries),
        ] {
            if got != want {
                return Err(DatapathError::IncompatiblePin {
                    path,
                    dir: dir.to_owned(),
                    what,
                    found: got,
                    expected: want,
                });
            }
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::mask;

    #[test]
    fn mask_clears_host_bits() {
        let a = [0xff; 16];
        assert_eq!(mask(a, 128), a);
        assert_eq!(mask(a, 0), [0; 16]);
        let m = mask(a, 96 + 20);
        assert_eq!(&m[12..16], &[0xff, 0xff, 0xf0, 0]);
    }
}
