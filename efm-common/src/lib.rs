//! Types shared by the kernel side (`efm-ebpf`) and user space (`efm-agent`).
//!
//! Everything here is `#![no_std]`, `#[repr(C)]`, uses `u32`/`u64` fields with explicit padding (no
//! `bool`, no implicit holes) so the same bytes mean the same thing on both sides of a map.
//! - [`wire`]: heartbeat wire format v2 (with the replay-protection nonces) and its SipHash-2-4 MAC.
//! - [`maps`]: map names, keys and values.
//! - [`serving`]: the kernel's serving rule (fence reasons, member exemption), written once.
#![no_std]
// The XDP program needs these inlined: a BPF call costs verifier state and stack per frame.
#![allow(clippy::inline_always, reason = "the eBPF verifier needs the helpers inlined")]

pub mod jump;
pub mod maps;
pub mod serving;
pub mod wire;
