//! Keyed SipHash-2-4 over arbitrary byte strings, fed incrementally.
//!
//! The heartbeat MAC in `efm_common::wire::mac` is specialised to the 56-byte heartbeat (so the eBPF
//! verifier accepts it); the Raft transport authenticates frames of any length with the same
//! primitive and the same 128-bit cluster key.

/// An incremental SipHash-2-4 state.
#[derive(Clone, Debug)]
pub struct SipHasher24 {
    v0: u64,
    v1: u64,
    v2: u64,
    v3: u64,
    tail: u64,
    ntail: usize,
    len: u64,
}

#[inline]
fn round(v0: &mut u64, v1: &mut u64, v2: &mut u64, v3: &mut u64) {
    *v0 = v0.wrapping_add(*v1);
    *v1 = v1.rotate_left(13);
    *v1 ^= *v0;
    *v0 = v0.rotate_left(32);
    *v2 = v2.wrapping_add(*v3);
    *v3 = v3.rotate_left(16);
    *v3 ^= *v2;
    *v0 = v0.wrapping_add(*v3);
    *v3 = v3.rotate_left(21);
    *v3 ^= *v0;
    *v2 = v2.wrapping_add(*v1);
    *v1 = v1.rotate_left(17);
    *v1 ^= *v2;
    *v2 = v2.rotate_left(32);
}

impl SipHasher24 {
    /// A hasher keyed with the two little-endian key words (as `ClusterKeyBytes` holds them).
    #[must_use]
    pub fn new(k0: u64, k1: u64) -> Self {
        Self {
            v0: k0 ^ 0x736f_6d65_7073_6575,
            v1: k1 ^ 0x646f_7261_6e64_6f6d,
            v2: k0 ^ 0x6c79_6765_6e65_7261,
            v3: k1 ^ 0x7465_6462_7974_6573,
            tail: 0,
            ntail: 0,
            len: 0,
        }
    }

    fn compress(&mut self, m: u64) {
        self.v3 ^= m;
        round(&mut self.v0, &mut self.v1, &mut self.v2, &mut self.v3);
        round(&mut self.v0, &mut self.v1, &mut self.v2, &mut self.v3);
        self.v0 ^= m;
    }

    /// Feeds bytes.
    pub fn write(&mut self, mut bytes: &[u8]) {
        self.len = self.len.wrapping_add(bytes.len() as u64);
        // Complete a partial word first.
        while self.ntail > 0 && !bytes.is_empty() {
            self.tail |= u64::from(bytes[0]) << (8 * self.ntail);
            self.ntail += 1;
            bytes = &bytes[1..];
            if self.ntail == 8 {
                let m = self.tail;
                self.compress(m);
                self.tail = 0;
                self.ntail = 0;
            }
        }
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.compress(u64::from_le_bytes(w));
        }
        for (i, &b) in chunks.remainder().iter().enumerate() {
            self.tail |= u64::from(b) << (8 * i);
        }
        self.ntail = chunks.remainder().len();
    }

    /// The 64-bit tag.
    #[must_use]
    pub fn finish(mut self) -> u64 {
        let b = ((self.len & 0xff) << 56) | self.tail;
        self.compress(b);
        self.v2 ^= 0xff;
        for _ in 0..4 {
            round(&mut self.v0, &mut self.v1, &mut self.v2, &mut self.v3);
        }
        self.v0 ^ self.v1 ^ self.v2 ^ self.v3
    }
}

/// SipHash-2-4 of one byte string.
#[must_use]
pub fn siphash24(k0: u64, k1: u64, bytes: &[u8]) -> u64 {
    let mut h = SipHasher24::new(k0, k1);
    h.write(bytes);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Key 00..0f, messages 00, 00 01, ...: the first outputs of the reference `vectors.h`.
    #[test]
    fn coordination_siphash_reference_vectors() {
        let key: Vec<u8> = (0u8..16).collect();
        let k = efm_common::wire::ClusterKeyBytes::from_bytes(key.as_slice().try_into().unwrap());
        let expect: [u64; 4] = [
            u64::from_le_bytes([0x31, 0x0e, 0x0e, 0xdd, 0x47, 0xdb, 0x6f, 0x72]),
            u64::from_le_bytes([0xfd, 0x67, 0xdc, 0x93, 0xc5, 0x39, 0xf8, 0x74]),
            u64::from_le_bytes([0x5a, 0x4f, 0xa9, 0xd9, 0x09, 0x80, 0x6c, 0x0d]),
            u64::from_le_bytes([0x2d, 0x7e, 0xfb, 0xd7, 0x96, 0x66, 0x67, 0x85]),
        ];
        for (n, e) in expect.iter().enumerate() {
            let msg: Vec<u8> = (0..u8::try_from(n).unwrap()).collect();
            assert_eq!(siphash24(k.k0, k.k1, &msg), *e, "length {n}");
        }
        // Length 15 (vectors.h entry 15) and 63 split arbitrarily: incremental == one-shot.
        let msg: Vec<u8> = (0u8..63).collect();
        let whole = siphash24(k.k0, k.k1, &msg);
        for split in [0, 1, 3, 7, 8, 9, 30, 62, 63] {
            let mut h = SipHasher24::new(k.k0, k.k1);
            h.write(&msg[..split]);
            h.write(&msg[split..]);
            assert_eq!(h.finish(), whole, "split at {split}");
        }
        let msg15: Vec<u8> = (0u8..15).collect();
        assert_eq!(
            siphash24(k.k0, k.k1, &msg15),
            u64::from_le_bytes([0xe5, 0x45, 0xbe, 0x49, 0x61, 0xca, 0x29, 0xa1])
        );
    }

    #[test]
    fn coordination_siphash_matches_heartbeat_mac() {
        let k = efm_common::wire::ClusterKeyBytes::from_bytes(b"efm-test-key-16b");
        let mut hb = [0u8; efm_common::wire::HB_LEN];
        for (i, b) in hb.iter_mut().enumerate() {
            *b = u8::try_from(i * 7 % 251).unwrap();
        }
        let off = efm_common::wire::HB_MAC_OFFSET;
        assert_eq!(
            siphash24(k.k0, k.k1, &hb[..off]),
            efm_common::wire::mac(k.k0, k.k1, &hb)
        );
    }
}
