//! Value kinds and their validators.
//!
//! Every validator takes the raw text of a property (already trimmed, never
//! empty: an empty value means "not set" and is handled by the caller) and
//! returns either a typed [`Value`] or a short phrase describing what was
//! expected, e.g. `"expected true or false"`.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

/// How a property's value is validated and typed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `true` / `false`, case-insensitive.
    Bool,
    /// TCP/UDP port 1..=65535.
    Port,
    /// Non-negative integer.
    UInt,
    /// `500ms`, `0.5s`, `0.5` or `2` (bare numbers are seconds).
    Duration,
    /// One of a fixed set of words, case-insensitive.
    Enum(&'static [&'static str]),
    /// A literal IPv4 or IPv6 address.
    Ip,
    /// `ip:port`, IPv6 as `[addr]:port`.
    IpPort,
    /// A host name or a literal IP address.
    Host,
    /// An absolute path.
    AbsPath,
    /// A command line whose program is given by absolute path.
    Command,
    /// Free text (user names, prefixes, shell fragments).
    Text,
    /// One e-mail address (`%h` is allowed in the domain).
    Email,
    /// E-mail addresses separated by commas or whitespace.
    EmailList,
    /// Network prefix length 0..=128.
    Prefix,
    /// Node addresses (`ip` or `ip:port`) separated by commas or whitespace.
    NodeList,
    /// IP addresses or CIDR blocks separated by commas.
    CidrList,
    /// A network interface name.
    Interface,
}

impl Kind {
    /// Short human name used in `effective()` listings and docs.
    #[must_use]
    pub fn describe(self) -> String {
        match self {
            Kind::Bool => "true|false".into(),
            Kind::Port => "port 1-65535".into(),
            Kind::UInt => "non-negative integer".into(),
            Kind::Duration => "duration (500ms, 0.5s, 2)".into(),
            Kind::Enum(words) => words.join("|"),
            Kind::Ip => "IP address".into(),
            Kind::IpPort => "ip:port".into(),
            Kind::Host => "host name or IP address".into(),
            Kind::AbsPath => "absolute path".into(),
            Kind::Command => "command with absolute path".into(),
            Kind::Text => "text".into(),
            Kind::Email => "e-mail address".into(),
            Kind::EmailList => "e-mail addresses".into(),
            Kind::Prefix => "prefix length 0-128".into(),
            Kind::NodeList => "node addresses".into(),
            Kind::CidrList => "IP addresses or CIDR blocks".into(),
            Kind::Interface => "interface name".into(),
        }
    }
}

/// An IP network: address plus prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl Cidr {
    /// Whether `ip` lies inside this network.
    #[must_use]
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = mask_u32(self.prefix);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = if self.prefix == 0 { 0 } else { u128::MAX << (128 - u32::from(self.prefix)) };
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

fn mask_u32(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix))
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// A validated value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Bool(bool),
    Port(u16),
    UInt(u64),
    Duration(Duration),
    Enum(&'static str),
    Ip(IpAddr),
    SocketAddr(SocketAddr),
    Text(String),
    Path(PathBuf),
    List(Vec<String>),
    Cidrs(Vec<Cidr>),
    Prefix(u8),
}

/// Validate `raw` (trimmed, non-empty) as `kind`.
pub fn validate(kind: Kind, raw: &str) -> Result<Value, String> {
    match kind {
        Kind::Bool => parse_bool(raw).map(Value::Bool).ok_or_else(|| "expected true or false".into()),
        Kind::Port => parse_port(raw).map(Value::Port).ok_or_else(|| "expected a port number 1-65535".into()),
        Kind::UInt => raw.parse::<u64>().map(Value::UInt).map_err(|_| "expected a non-negative integer".into()),
        Kind::Duration => parse_duration(raw).map(Value::Duration),
        Kind::Enum(words) => words
            .iter()
            .find(|w| w.eq_ignore_ascii_case(raw))
            .map(|w| Value::Enum(w))
            .ok_or_else(|| format!("expected one of {}", words.join(", "))),
        Kind::Ip => raw.parse::<IpAddr>().map(Value::Ip).map_err(|_| "expected an IP address".into()),
        Kind::IpPort => parse_socket_addr(raw).map(Value::SocketAddr),
        Kind::Host => {
            if raw.parse::<IpAddr>().is_ok() || is_host_name(raw) {
                Ok(Value::Text(raw.to_owned()))
            } else {
                Err("expected a host name or IP address".into())
            }
        }
        Kind::AbsPath => {
            if raw.starts_with('/') {
                Ok(Value::Path(PathBuf::from(raw)))
            } else {
                Err("expected an absolute path".into())
            }
        }
        Kind::Command => {
            if raw.starts_with('/') {
                Ok(Value::Text(raw.to_owned()))
            } else {
                Err("expected a command starting with an absolute path".into())
            }
        }
        Kind::Text => Ok(Value::Text(raw.to_owned())),
        Kind::Email => {
            if is_email(raw) {
                Ok(Value::Text(raw.to_owned()))
            } else {
                Err("expected an e-mail address (user@domain)".into())
            }
        }
        Kind::EmailList => {
            let list = split_list(raw);
            match list.iter().find(|e| !is_email(e)) {
                Some(bad) => Err(format!("expected e-mail addresses (user@domain); \"{bad}\" is not one")),
                None => Ok(Value::List(list)),
            }
        }
        Kind::Prefix => match raw.parse::<u8>() {
            Ok(p) if p <= 128 => Ok(Value::Prefix(p)),
            _ => Err("expected a prefix length 0-128".into()),
        },
        Kind::NodeList => {
            let list = split_list(raw);
            match list.iter().find(|e| e.parse::<IpAddr>().is_err() && parse_socket_addr(e).is_err()) {
                Some(bad) => Err(format!("expected node addresses (ip or ip:port); \"{bad}\" is not one")),
                None => Ok(Value::List(list)),
            }
        }
        Kind::CidrList => {
            let mut out = Vec::new();
            for item in split_list(raw) {
                out.push(parse_cidr(&item).ok_or_else(|| {
                    format!("expected IP addresses or CIDR blocks separated by commas; \"{item}\" is not one")
                })?);
            }
            Ok(Value::Cidrs(out))
        }
        Kind::Interface => {
            let ok = raw.len() <= 15
                && raw.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':' | '@'));
            if ok {
                Ok(Value::Text(raw.to_owned()))
            } else {
                Err("expected a network interface name (at most 15 characters)".into())
            }
        }
    }
}

fn parse_bool(raw: &str) -> Option<bool> {
    if raw.eq_ignore_ascii_case("true") {
        Some(true)
    } else if raw.eq_ignore_ascii_case("false") {
        Some(false)
    } else {
        None
    }
}

fn parse_port(raw: &str) -> Option<u16> {
    raw.parse::<u16>().ok().filter(|p| *p != 0)
}

/// Parse `ip:port` (IPv6 as `[addr]:port`); port 0 is rejected.
pub fn parse_socket_addr(raw: &str) -> Result<SocketAddr, String> {
    match raw.parse::<SocketAddr>() {
        Ok(a) if a.port() != 0 => Ok(a),
        Ok(_) => Err("expected ip:port with a port number 1-65535".into()),
        Err(_) if raw.parse::<std::net::Ipv6Addr>().is_ok() => {
            Err("expected ip:port; write IPv6 addresses as [addr]:port".into())
        }
        Err(_) => Err("expected ip:port (IPv6 as [addr]:port)".into()),
    }
}

/// Parse a duration: `500ms`, `0.5s`, `0.5` or `2` (bare numbers are seconds).
pub fn parse_duration(raw: &str) -> Result<Duration, String> {
    const EXPECTED: &str = "expected a duration such as 500ms, 0.5s or 2 (seconds)";
    let (number, unit_nanos): (&str, u128) = if let Some(n) = raw.strip_suffix("ms") {
        (n, 1_000_000)
    } else if let Some(n) = raw.strip_suffix('s') {
        (n, 1_000_000_000)
    } else {
        (raw, 1_000_000_000)
    };
    let (int, frac) = number.split_once('.').unwrap_or((number, ""));
    let digits = |s: &str| s.chars().all(|c| c.is_ascii_digit());
    if number.ends_with('.') || int.is_empty() || !digits(int) || !digits(frac) || frac.len() > 9 || int.len() > 12 {
        return Err(EXPECTED.into());
    }
    let int: u128 = int.parse().map_err(|_| EXPECTED.to_owned())?;
    let frac_val: u128 = if frac.is_empty() { 0 } else { frac.parse().map_err(|_| EXPECTED.to_owned())? };
    let scale = 10u128.pow(u32::try_from(frac.len()).unwrap_or(0));
    let nanos = int * unit_nanos + frac_val * unit_nanos / scale;
    let secs = u64::try_from(nanos / 1_000_000_000).map_err(|_| EXPECTED.to_owned())?;
    let sub = u32::try_from(nanos % 1_000_000_000).unwrap_or(0);
    Ok(Duration::new(secs, sub))
}

/// Render a duration the way the parser accepts it back.
#[must_use]
pub fn format_duration(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else if d.subsec_millis() * 1_000_000 == d.subsec_nanos() {
        format!("{}ms", d.as_millis())
    } else {
        format!("{}ns", d.as_nanos())
    }
}

/// Parse `ip` or `ip/prefix`.
#[must_use]
pub fn parse_cidr(raw: &str) -> Option<Cidr> {
    let (addr, prefix) = match raw.split_once('/') {
        Some((a, p)) => (a.parse::<IpAddr>().ok()?, Some(p.parse::<u8>().ok()?)),
        None => (raw.parse::<IpAddr>().ok()?, None),
    };
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let prefix = prefix.unwrap_or(max);
    (prefix <= max).then_some(Cidr { addr, prefix })
}

/// Convert a dotted IPv4 netmask such as `255.255.255.0` to a prefix length.
pub fn netmask_to_prefix(raw: &str) -> Result<u8, String> {
    let mask: std::net::Ipv4Addr =
        raw.parse().map_err(|_| "expected a dotted netmask such as 255.255.255.0".to_owned())?;
    let bits = u32::from(mask);
    let ones = bits.leading_ones();
    if bits.checked_shl(ones).unwrap_or(0) != 0 {
        return Err("expected a contiguous netmask (ones followed by zeros), such as 255.255.255.0".into());
    }
    Ok(u8::try_from(ones).unwrap_or(32))
}

fn split_list(raw: &str) -> Vec<String> {
    raw.split(|c: char| c == ',' || c.is_whitespace()).filter(|s| !s.is_empty()).map(str::to_owned).collect()
}

fn is_host_name(raw: &str) -> bool {
    !raw.is_empty()
        && raw.len() <= 253
        && raw.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

fn is_email(raw: &str) -> bool {
    match raw.split_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && !domain.is_empty()
                && !domain.contains('@')
                && !raw.chars().any(|c| c.is_whitespace() || c == ',')
        }
        None => false,
    }
}

/// Host name resolution for `.nodes` entries, `bind.address` and `virtual.ip` (EFM accepts
/// names there). The agent and `efm prop-check` use [`SystemResolver`]; tests use their own
/// table so that they never ask a name server.
pub trait Resolve {
    /// Every address of `host` (a name, not a literal), in the resolver's order of preference.
    ///
    /// # Errors
    /// The resolver's reason when the name does not resolve.
    fn resolve(&self, host: &str) -> Result<Vec<IpAddr>, String>;
}

/// `getaddrinfo(3)` through std's `ToSocketAddrs`: `/etc/hosts`, DNS, ... as
/// `/etc/nsswitch.conf` says, addresses sorted by RFC 6724 (`/etc/gai.conf`).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemResolver;

impl Resolve for SystemResolver {
    fn resolve(&self, host: &str) -> Result<Vec<IpAddr>, String> {
        use std::net::ToSocketAddrs as _;
        let mut out: Vec<IpAddr> = Vec::new();
        for a in (host, 0u16).to_socket_addrs().map_err(|e| e.to_string())? {
            if !out.contains(&a.ip()) {
                out.push(a.ip());
            }
        }
        if out.is_empty() {
            return Err("no address".into());
        }
        Ok(out)
    }
}

/// The outcome of resolving one host name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved<A> {
    /// The name as written.
    pub name: String,
    /// The address used: the first of `all`.
    pub chosen: A,
    /// Every address the name resolved to, in the resolver's order.
    pub all: Vec<IpAddr>,
}

impl<A: fmt::Display> Resolved<A> {
    /// A note for the operator when the name resolved to several addresses.
    #[must_use]
    pub fn note(&self) -> Option<String> {
        (self.all.len() > 1).then(|| {
            let all: Vec<String> = self.all.iter().map(ToString::to_string).collect();
            format!(
                "host name {} resolves to {} addresses ({}); efm uses {}, the first in the \
                 resolver's order (getaddrinfo, RFC 6724 / /etc/gai.conf), resolved once at start — \
                 write the address itself to choose another",
                self.name,
                all.len(),
                all.join(", "),
                self.chosen
            )
        })
    }
}

/// Whether `raw` is shaped like a host name (letters, digits, `-`, dots; not an IP literal).
#[must_use]
pub fn looks_like_host_name(raw: &str) -> bool {
    raw.parse::<IpAddr>().is_err() && is_host_name(raw) && raw.chars().any(|c| c.is_ascii_alphabetic())
}

/// Resolve `host`; `Err` names the host and the resolver's reason.
pub fn resolve_host(host: &str, resolver: &dyn Resolve) -> Result<Resolved<IpAddr>, String> {
    let all = resolver.resolve(host).map_err(|e| {
        format!("host name \"{host}\" does not resolve ({e}); write an IP address or fix name resolution on this host")
    })?;
    let chosen = *all.first().ok_or_else(|| format!("host name \"{host}\" resolves to no address"))?;
    Ok(Resolved { name: host.to_owned(), chosen, all })
}

/// `name:port` with a host name: `None` when `raw` is not of that shape (the caller keeps its
/// own message), otherwise the resolution.
pub fn resolve_host_port(raw: &str, resolver: &dyn Resolve) -> Option<Result<Resolved<SocketAddr>, String>> {
    let (host, port) = raw.rsplit_once(':')?;
    if !looks_like_host_name(host) {
        return None;
    }
    let Some(port) = parse_port(port) else {
        return Some(Err("expected host:port with a port number 1-65535".into()));
    };
    Some(resolve_host(host, resolver).map(|r| Resolved {
        name: r.name,
        chosen: SocketAddr::new(r.chosen, port),
        all: r.all,
    }))
}

/// A fixed table, for tests: names not in it do not resolve. No name server is asked.
#[derive(Debug, Clone, Default)]
pub struct TableResolver(pub Vec<(String, Vec<IpAddr>)>);

impl Resolve for TableResolver {
    fn resolve(&self, host: &str) -> Result<Vec<IpAddr>, String> {
        self.0
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(host))
            .map(|(_, a)| a.clone())
            .ok_or_else(|| "Name or service not known".to_owned())
    }
}
