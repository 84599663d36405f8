//! Line-level parsing of `<cluster>.properties` and `<cluster>.nodes`.

use std::net::SocketAddr;
use std::path::Path;

use super::value::parse_socket_addr;
use super::Diagnostic;

/// One `key=value` line of a properties file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub key: String,
    pub value: String,
    /// 1-based line number.
    pub line: usize,
}

/// Split a properties file into entries.
///
/// `#` lines and blank lines are skipped; keys are case-sensitive; the
/// value is everything after the first `=`, with surrounding whitespace
/// removed and no quote handling. A line without `=`, an empty key and a
/// key given twice are errors; all of them are reported.
pub fn parse_properties(text: &str, file: &Path) -> Result<Vec<Entry>, Vec<Diagnostic>> {
    let mut entries: Vec<Entry> = Vec::new();
    let mut errors = Vec::new();
    for (idx, raw) in text.lines().enumerate() {
        let line = idx + 1;
        let trimmed = raw.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let Some((key, value)) = trimmed.split_once('=') else {
            errors.push(Diagnostic::error(file, Some(line), None, format!("expected key=value, found \"{trimmed}\"")));
            continue;
        };
        let key = key.trim();
        let value = value.trim();
        if key.is_empty() {
            errors.push(Diagnostic::error(file, Some(line), None, "missing property name before '='".into()));
            continue;
        }
        if let Some(first) = entries.iter().find(|e| e.key == key) {
            errors.push(Diagnostic::error(
                file,
                Some(line),
                Some(key),
                format!("set twice, on lines {} and {line}", first.line),
            ));
            continue;
        }
        entries.push(Entry { key: key.to_owned(), value: value.to_owned(), line });
    }
    if errors.is_empty() {
        Ok(entries)
    } else {
        Err(errors)
    }
}

/// Parse a `.nodes` file: whitespace-separated `address:port` entries,
/// IPv6 as `[addr]:port`, `#` starts a comment. Repeated entries are kept once.
pub fn parse_nodes(text: &str, file: &Path) -> Result<Vec<SocketAddr>, Vec<Diagnostic>> {
    let mut nodes = Vec::new();
    let mut errors = Vec::new();
    for (idx, raw) in text.lines().enumerate() {
        let content = raw.split_once('#').map_or(raw, |(before, _)| before);
        for token in content.split_whitespace() {
            match parse_socket_addr(token) {
                Ok(addr) => {
                    if !nodes.contains(&addr) {
                        nodes.push(addr);
                    }
                }
                Err(expected) => errors.push(Diagnostic::error(
                    file,
                    Some(idx + 1),
                    None,
                    format!("bad node entry \"{token}\": {expected}"),
                )),
            }
        }
    }
    if errors.is_empty() {
        Ok(nodes)
    } else {
        Err(errors)
    }
}
