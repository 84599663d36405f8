//! `pg_lsn` values.

use std::{fmt, str::FromStr};

/// A write-ahead-log position (Postgres's `pg_lsn`).
///
/// Displayed the way the server prints it: the upper 32 bits and the lower 32 bits in uppercase
/// hexadecimal without padding, separated by `/` (`0/3000148`, `16/B374D848`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, serde::Serialize, serde::Deserialize)]
pub struct Lsn(pub u64);

impl Lsn {
    /// `0/0`, which Postgres uses as "invalid".
    pub const INVALID: Lsn = Lsn(0);

    /// Bytes of WAL between `self` and a later position (0 if `later` is not later).
    #[must_use]
    pub fn bytes_until(self, later: Lsn) -> u64 {
        later.0.saturating_sub(self.0)
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xffff_ffff)
    }
}

/// Why a string is not an LSN.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid LSN {0:?}: expected two hexadecimal numbers of at most 8 digits, like 16/B374D848")]
pub struct ParseLsnError(pub String);

impl FromStr for Lsn {
    type Err = ParseLsnError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseLsnError(s.to_owned());
        let (hi, lo) = s.split_once('/').ok_or_else(err)?;
        let half = |p: &str| -> Result<u64, ParseLsnError> {
            if p.is_empty() || p.len() > 8 || !p.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(err());
            }
            u64::from_str_radix(p, 16).map_err(|_| err())
        };
        Ok(Lsn((half(hi)? << 32) | half(lo)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_matches_postgres() {
        assert_eq!(Lsn(0).to_string(), "0/0");
        assert_eq!(Lsn(0x0300_0148).to_string(), "0/3000148");
        assert_eq!(Lsn(0x16_B374_D848).to_string(), "16/B374D848");
        assert_eq!(Lsn(u64::MAX).to_string(), "FFFFFFFF/FFFFFFFF");
    }

    #[test]
    fn parse_round_trip_and_case() {
        for v in [0, 1, 0xffff_ffff, 0x1_0000_0000, 0x16_B374_D848, u64::MAX] {
            assert_eq!(Lsn(v).to_string().parse::<Lsn>(), Ok(Lsn(v)));
        }
        assert_eq!("16/b374d848".parse::<Lsn>(), Ok(Lsn(0x16_B374_D848)));
        assert_eq!("00000000/00000010".parse::<Lsn>(), Ok(Lsn(16)));
    }

    #[test]
    fn parse_rejects_garbage() {
        for s in [
            "",
            "/",
            "0/",
            "/0",
            "0",
            "0/0/0",
            "G/0",
            "0/123456789",
            "+1/0",
            " 0/0",
            "0/-1",
            "0/+1",
            "100000000/0",
            "UNKNOWN",
        ] {
            assert!(s.parse::<Lsn>().is_err(), "{s:?} parsed");
        }
    }

    #[test]
    fn ordering_follows_position() {
        assert!("0/FFFFFFFF".parse::<Lsn>().unwrap() < "1/0".parse().unwrap());
        assert_eq!(Lsn(10).bytes_until(Lsn(30)), 20);
        assert_eq!(Lsn(30).bytes_until(Lsn(10)), 0);
    }
}
