//! Line-level parsing of `<cluster>.properties` and `<cluster>.nodes`.
//!
//! EFM is a Java program and reads its properties file with `java.util.Properties.load`, so
//! this module reads it the same way:
//!
//! - a line whose first non-blank character is `#` or `!` is a comment, a blank line is skipped;
//! - a line ending in an odd number of `\` continues on the next line, whose leading blanks are
//!   dropped (a comment line never continues);
//! - the key runs to the first unescaped `=`, `:` or blank; the separator is `=`, `:` or blanks
//!   alone (`key=value`, `key: value`, `key value`), blanks around it are skipped;
//! - `\uXXXX`, `\t`, `\n`, `\r`, `\f` are escapes, and `\` before any other character stands for
//!   that character (`\=`, `\:`, `\ `, `\#` in keys; `\\` for a backslash).
//!
//! Where efm departs from Java it says so, never silently: a malformed `\u` escape, an empty key
//! and a key given twice are errors (Java keeps the last of repeated keys); a line with a key
//! and no value gets a warning; a backslash before an ordinary character (which Java drops, so
//! `C:\temp` reads `C:temp`) gets a note. Trailing unescaped blanks of a value are removed
//! (Java keeps them, and `true ` then reads as false in EFM).

use std::net::SocketAddr;
use std::path::Path;

use super::value::{parse_socket_addr, Resolve};
use super::{Diagnostic, Severity};

/// One `key=value` line (possibly continued) of a properties file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub key: String,
    pub value: String,
    /// 1-based line number (the first line, when continued).
    pub line: usize,
}

/// How a property line separates its key from its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Separator {
    Equals,
    Colon,
    Blank,
    /// No separator and no value: a bare key.
    None,
}

/// One logical line of a properties file.
#[derive(Debug, Clone)]
pub(crate) enum Logical {
    /// A blank line (1-based physical line).
    Blank(usize),
    /// A `#` or `!` comment line.
    Comment(usize),
    /// A property spanning physical lines `first..=last`.
    Property {
        first: usize,
        last: usize,
        key: String,
        value: String,
        separator: Separator,
        /// Errors (a malformed escape) and notes (a dropped backslash), with their severity.
        problems: Vec<(Severity, String)>,
    },
}

fn is_blank(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\u{c}')
}

/// Split `text` into logical lines the way `java.util.Properties.load` does.
pub(crate) fn logical_lines(text: &str) -> Vec<Logical> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    let mut idx = 0;
    while idx < lines.len() {
        let first = idx + 1;
        let start = lines[idx].trim_start_matches(is_blank);
        if start.is_empty() {
            out.push(Logical::Blank(first));
            idx += 1;
            continue;
        }
        if start.starts_with('#') || start.starts_with('!') {
            out.push(Logical::Comment(first));
            idx += 1;
            continue;
        }
        let mut buf = String::from(start);
        while ends_with_odd_backslashes(&buf) {
            buf.pop();
            idx += 1;
            match lines.get(idx) {
                Some(next) => buf.push_str(next.trim_start_matches(is_blank)),
                None => break,
            }
        }
        let last = idx.min(lines.len() - 1) + 1;
        idx += 1;
        out.push(split_property(&buf, first, last));
    }
    out
}

fn ends_with_odd_backslashes(s: &str) -> bool {
    s.chars().rev().take_while(|c| *c == '\\').count() % 2 == 1
}

fn split_property(buf: &str, first: usize, last: usize) -> Logical {
    let chars: Vec<char> = buf.chars().collect();
    let mut key_end = chars.len();
    let mut value_start = chars.len();
    let mut separator = Separator::None;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '\\' {
            i += 2;
            continue;
        }
        if c == '=' || c == ':' {
            key_end = i;
            value_start = i + 1;
            separator = if c == '=' { Separator::Equals } else { Separator::Colon };
            break;
        }
        if is_blank(c) {
            key_end = i;
            value_start = i + 1;
            separator = Separator::Blank;
            break;
        }
        i += 1;
    }
    let mut j = value_start;
    while j < chars.len() {
        let c = chars[j];
        if is_blank(c) {
            j += 1;
        } else if separator == Separator::Blank && (c == '=' || c == ':') {
            separator = if c == '=' { Separator::Equals } else { Separator::Colon };
            j += 1;
        } else {
            break;
        }
    }
    let mut problems = Vec::new();
    let key: String = chars[..key_end.min(chars.len())].iter().collect();
    let value: String = chars[j.min(chars.len())..].iter().collect();
    let key = unescape(&key, false, &mut problems);
    let value = unescape(&value, true, &mut problems);
    if separator == Separator::Blank && value.is_empty() {
        separator = Separator::None;
    }
    Logical::Property { first, last, key, value, separator, problems }
}

/// Java's escape rules; for a value, trailing unescaped blanks are removed.
fn unescape(raw: &str, trim_end: bool, problems: &mut Vec<(Severity, String)>) -> String {
    let mut out = String::new();
    // Length of `out` up to the last character that is not an unescaped blank.
    let mut keep = 0;
    let mut chars = raw.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            if !is_blank(c) {
                keep = out.len();
            }
            continue;
        }
        let Some(e) = chars.next() else {
            // A lone trailing backslash (the last line of the file continued): dropped.
            break;
        };
        match e {
            't' => out.push('\t'),
            'n' => out.push('\n'),
            'r' => out.push('\r'),
            'f' => out.push('\u{c}'),
            'u' => {
                let hex: String = (0..4).filter_map(|_| chars.next_if(char::is_ascii_hexdigit)).collect();
                match u32::from_str_radix(&hex, 16).ok().filter(|_| hex.len() == 4).and_then(char::from_u32) {
                    Some(ch) => out.push(ch),
                    None => problems.push((
                        Severity::Error,
                        format!("malformed \\uXXXX escape \"\\u{hex}\": expected four hexadecimal digits"),
                    )),
                }
            }
            '=' | ':' | ' ' | '#' | '!' | '\\' | '"' | '\'' => out.push(e),
            other => {
                problems.push((
                    Severity::Notice,
                    format!(
                        "\"\\{other}\" reads as \"{other}\" (Java properties escapes drop the backslash; write \\\\ for a backslash)"
                    ),
                ));
                out.push(other);
            }
        }
        keep = out.len();
    }
    if trim_end {
        out.truncate(keep);
    }
    out
}

/// Split a properties file into entries; see the module documentation for the syntax.
///
/// Keys are case-sensitive. A malformed escape, an empty key and a key given twice are
/// errors; all of them are reported.
pub fn parse_properties(text: &str, file: &Path) -> Result<Vec<Entry>, Vec<Diagnostic>> {
    parse_properties_noted(text, file).map(|(entries, _)| entries)
}

/// [`parse_properties`] plus its warnings and notes (a bare key, a dropped backslash).
pub(crate) fn parse_properties_noted(
    text: &str,
    file: &Path,
) -> Result<(Vec<Entry>, Vec<Diagnostic>), Vec<Diagnostic>> {
    let mut entries: Vec<Entry> = Vec::new();
    let mut errors = Vec::new();
    let mut notes = Vec::new();
    for logical in logical_lines(text) {
        let Logical::Property { first: line, key, value, separator, problems, .. } = logical else {
            continue;
        };
        let prop = (!key.is_empty()).then_some(key.as_str());
        let mut bad = false;
        for (severity, message) in problems {
            let d = Diagnostic::new(severity, file, Some(line), prop, message);
            if severity == Severity::Error {
                bad = true;
                errors.push(d);
            } else {
                notes.push(d);
            }
        }
        if key.is_empty() {
            errors.push(Diagnostic::error(
                file,
                Some(line),
                None,
                "missing property name before the separator ('=' or ':')".into(),
            ));
            continue;
        }
        if bad {
            continue;
        }
        if separator == Separator::None {
            notes.push(Diagnostic::warning(
                file,
                Some(line),
                Some(&key),
                "no '=' and no value: read as an empty value (as Java does); write key=value".into(),
            ));
        }
        if let Some(first) = entries.iter().find(|e| e.key == key) {
            errors.push(Diagnostic::error(
                file,
                Some(line),
                Some(&key),
                format!(
                    "set twice, on lines {} and {line} (EFM would use the last; efm asks you to keep one)",
                    first.line
                ),
            ));
            continue;
        }
        entries.push(Entry { key, value, line });
    }
    if errors.is_empty() {
        Ok((entries, notes))
    } else {
        Err(errors)
    }
}

/// Parse a `.nodes` file: whitespace-separated `address:port` entries, the address an IP
/// (IPv6 as `[addr]:port`) or a host name resolved with `resolver`; `#` starts a comment.
/// Repeated entries are kept once. A host name that resolves to several addresses uses the
/// first (the resolver's preferred order) and adds a note to `notes`.
pub fn parse_nodes_with(
    text: &str,
    file: &Path,
    resolver: &dyn Resolve,
    notes: &mut Vec<Diagnostic>,
) -> Result<Vec<SocketAddr>, Vec<Diagnostic>> {
    let mut members = Vec::new();
    let mut errors = Vec::new();
    for (idx, raw) in text.lines().enumerate() {
        let content = raw.split_once('#').map_or(raw, |(before, _)| before);
        for token in content.split_whitespace() {
            let parsed = match parse_socket_addr(token) {
                Ok(addr) => Ok(addr),
                Err(expected) => match super::value::resolve_host_port(token, resolver) {
                    Some(Ok(r)) => {
                        if let Some(note) = r.note() {
                            notes.push(Diagnostic::new(
                                Severity::Notice,
                                file,
                                Some(idx + 1),
                                None,
                                format!("\"{token}\": {note}"),
                            ));
                        }
                        Ok(r.chosen)
                    }
                    Some(Err(e)) => Err(e),
                    None => Err(expected),
                },
            };
            match parsed {
                Ok(addr) => {
                    if !members.contains(&addr) {
                        members.push(addr);
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
        Ok(members)
    } else {
        Err(errors)
    }
}

/// [`parse_nodes_with`] with the system resolver, notes dropped (literal addresses need none).
pub fn parse_nodes(text: &str, file: &Path) -> Result<Vec<SocketAddr>, Vec<Diagnostic>> {
    parse_nodes_with(text, file, &super::value::SystemResolver, &mut Vec::new())
}
