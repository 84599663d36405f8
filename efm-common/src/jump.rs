//! Tail-call table of the XDP program: the entry program `efm_xdp` parses a frame and jumps to
//! one of these programs, which the loader puts into `EFM_JUMP` at these indices.

pub const JUMP_HEARTBEAT: u32 = 0;
pub const JUMP_CLIENT_TCP: u32 = 1;
pub const JUMP_CLIENT_UDP: u32 = 2;
pub const JUMP_COUNT: u32 = 3;

/// Program names by index.
pub const JUMP_PROGRAMS: [(u32, &str); 3] = [
    (JUMP_HEARTBEAT, "efm_xdp_heartbeat"),
    (JUMP_CLIENT_TCP, "efm_xdp_client_tcp"),
    (JUMP_CLIENT_UDP, "efm_xdp_client_udp"),
];

/// Name of the tail-call map.
pub const MAP_JUMP: &str = "EFM_JUMP";
