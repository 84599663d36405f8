//! `synchronous_standby_names`: parsing, rendering, and the count efm lowers while synchronous
//! standbys are gone (`reconfigure.num.sync`, `reconfigure.sync.primary`).
//!
//! The grammar is `PostgreSQL`'s (`syncrep_gram.y`):
//!
//! ```text
//! [FIRST] num_sync ( standby_name [, ...] )
//! ANY num_sync ( standby_name [, ...] )
//! standby_name [, ...]                        -- FIRST 1, the pre-9.6 form
//! ```
//!
//! A `standby_name` is an identifier or a double-quoted name (`""` inside stands for `"`); `*`
//! matches every standby. Keywords are case-insensitive, names compare case-insensitively unless
//! quoted (as `PostgreSQL` matches `application_name`).

use std::fmt;

/// How the names are used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// `FIRST n (...)`: the first `n` connected names in list order are synchronous.
    First,
    /// `ANY n (...)`: any `n` of them acknowledge (quorum commit).
    Any,
    /// `name, name`: the pre-9.6 list (FIRST 1), kept as written when rendered.
    List,
}

/// A parsed, non-empty `synchronous_standby_names`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyncNames {
    pub method: Method,
    pub num: u32,
    /// As written (quoted names keep their quotes off; see [`Name`]).
    pub names: Vec<Name>,
}

/// One standby name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Name {
    pub text: String,
    /// Written in double quotes: matched case-sensitively.
    pub quoted: bool,
}

impl Name {
    /// Whether a standby with this `application_name` is one this entry names.
    #[must_use]
    pub fn matches(&self, application_name: &str) -> bool {
        if !self.quoted && self.text == "*" {
            return true;
        }
        if self.quoted {
            self.text == application_name
        } else {
            self.text.eq_ignore_ascii_case(application_name)
        }
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.quoted {
            write!(f, "\"{}\"", self.text.replace('"', "\"\""))
        } else {
            f.write_str(&self.text)
        }
    }
}

impl fmt::Display for SyncNames {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list = self.names.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ");
        match self.method {
            Method::Any => write!(f, "ANY {} ({list})", self.num),
            Method::List if self.num == 1 => f.write_str(&list),
            // A pre-9.6 list with another count can only come from efm lowering/raising it.
            Method::First | Method::List => write!(f, "FIRST {} ({list})", self.num),
        }
    }
}

impl SyncNames {
    /// Parses a setting; `Ok(None)` for the empty setting (asynchronous replication).
    ///
    /// # Errors
    /// A message naming what is malformed.
    pub fn parse(s: &str) -> Result<Option<Self>, String> {
        let toks = tokens(s)?;
        if toks.is_empty() {
            return Ok(None);
        }
        let mut i = 0;
        let kw = |t: &Tok, k: &str| matches!(t, Tok::Word(w) if w.eq_ignore_ascii_case(k));
        let method = if kw(&toks[0], "FIRST")
            && toks.len() > 1
            && matches!(toks[1], Tok::Word(ref w) if w.parse::<u32>().is_ok())
        {
            i = 1;
            Method::First
        } else if kw(&toks[0], "ANY")
            && toks.len() > 1
            && matches!(toks[1], Tok::Word(ref w) if w.parse::<u32>().is_ok())
        {
            i = 1;
            Method::Any
        } else {
            Method::List
        };
        let counted =
            matches!(&toks[i], Tok::Word(w) if w.parse::<u32>().is_ok()) && matches!(toks.get(i + 1), Some(Tok::Open));
        let (method, num, list) = if counted {
            let Tok::Word(w) = &toks[i] else { unreachable!("checked above") };
            let num: u32 = w.parse().map_err(|_| format!("{w:?} is not a count"))?;
            if num == 0 {
                return Err(format!("the count must be at least 1 in {s:?}"));
            }
            if !matches!(toks.last(), Some(Tok::Close)) {
                return Err(format!("missing ')' in {s:?}"));
            }
            let m = if method == Method::List { Method::First } else { method };
            (m, num, &toks[i + 2..toks.len() - 1])
        } else if method == Method::List {
            (Method::List, 1, &toks[..])
        } else {
            return Err(format!("expected a count and a parenthesized list after {:?} in {s:?}", toks[0]));
        };
        let mut names = Vec::new();
        let mut want_name = true;
        for t in list {
            match (t, want_name) {
                (Tok::Word(w), true) => names.push(Name { text: w.clone(), quoted: false }),
                (Tok::Quoted(w), true) => names.push(Name { text: w.clone(), quoted: true }),
                (Tok::Comma, false) => {}
                _ => return Err(format!("unexpected {t:?} in {s:?}")),
            }
            want_name = !want_name;
        }
        if names.is_empty() || want_name {
            return Err(format!("a standby name is missing in {s:?}"));
        }
        Ok(Some(Self { method, num, names }))
    }

    /// The same list with another count.
    #[must_use]
    pub fn with_num(&self, num: u32) -> Self {
        Self { num, ..self.clone() }
    }

    /// Whether `application_name` is one of the names.
    #[must_use]
    pub fn names(&self, application_name: &str) -> bool {
        self.names.iter().any(|n| n.matches(application_name))
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Tok {
    Word(String),
    Quoted(String),
    Open,
    Close,
    Comma,
}

fn tokens(s: &str) -> Result<Vec<Tok>, String> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    while let Some(&c) = chars.peek() {
        match c {
            c if c.is_whitespace() => {
                chars.next();
            }
            '(' => {
                chars.next();
                out.push(Tok::Open);
            }
            ')' => {
                chars.next();
                out.push(Tok::Close);
            }
            ',' => {
                chars.next();
                out.push(Tok::Comma);
            }
            '"' => {
                chars.next();
                let mut w = String::new();
                loop {
                    match chars.next() {
                        Some('"') if chars.peek() == Some(&'"') => {
                            chars.next();
                            w.push('"');
                        }
                        Some('"') => break,
                        Some(c) => w.push(c),
                        None => return Err(format!("unterminated quoted name in {s:?}")),
                    }
                }
                out.push(Tok::Quoted(w));
            }
            _ => {
                let mut w = String::new();
                while let Some(&c) = chars.peek() {
                    if c.is_whitespace() || matches!(c, '(' | ')' | ',' | '"') {
                        break;
                    }
                    w.push(c);
                    chars.next();
                }
                out.push(Tok::Word(w));
            }
        }
    }
    Ok(out)
}

/// What efm sets while some synchronous standbys are gone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Desired {
    /// The operator's setting, unchanged.
    Original,
    /// The operator's list with a lower count.
    Lowered(SyncNames),
    /// Asynchronous replication (the empty setting), `reconfigure.sync.primary`.
    Async,
}

/// The setting to have when `available` named standbys stream (and are not known dead):
/// the original while enough do; with `reconfigure.num.sync` the count lowered to what is
/// available (at least 1); with none available and `reconfigure.sync.primary`, asynchronous.
#[must_use]
pub fn desired(original: &SyncNames, available: u32, reconfigure_num_sync: bool, sync_primary: bool) -> Desired {
    if available >= original.num {
        Desired::Original
    } else if available == 0 && sync_primary {
        Desired::Async
    } else if reconfigure_num_sync && available.max(1) < original.num {
        Desired::Lowered(original.with_num(available.max(1)))
    } else {
        Desired::Original
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> SyncNames {
        SyncNames::parse(s).unwrap().unwrap()
    }

    #[test]
    fn parses_every_form_and_renders_it_back() {
        assert_eq!(SyncNames::parse("").unwrap(), None);
        assert_eq!(SyncNames::parse("   ").unwrap(), None);
        let f = p("FIRST 2 (n2, n3, \"N 4\")");
        assert_eq!((f.method, f.num, f.names.len()), (Method::First, 2, 3));
        assert_eq!(f.to_string(), "FIRST 2 (n2, n3, \"N 4\")");
        let a = p("any 1 (*)");
        assert_eq!((a.method, a.num), (Method::Any, 1));
        assert_eq!(a.to_string(), "ANY 1 (*)");
        let bare = p("2 (s1,s2)");
        assert_eq!((bare.method, bare.num), (Method::First, 2));
        let list = p("s1, s2");
        assert_eq!((list.method, list.num), (Method::List, 1));
        assert_eq!(list.to_string(), "s1, s2");
        assert_eq!(list.with_num(2).to_string(), "FIRST 2 (s1, s2)");
        // A standby may be called "first" or "any".
        let named = p("first, any");
        assert_eq!((named.method, named.names.len()), (Method::List, 2));
        let q = p("FIRST 1 (\"a\"\"b\")");
        assert_eq!(q.names[0].text, "a\"b");
        assert_eq!(p(&q.to_string()), q);
    }

    #[test]
    fn malformed_settings_say_what_is_wrong() {
        for bad in ["FIRST 2 (n2, n3", "ANY (n2)", "FIRST 0 (n2)", "n2,", "FIRST 1 ()", "\"n2"] {
            let e = SyncNames::parse(bad).unwrap_err();
            assert!(e.contains(bad), "{bad}: {e}");
        }
    }

    #[test]
    fn names_match_like_postgres() {
        let s = p("FIRST 1 (N2, \"N3\", n4)");
        assert!(s.names("n2") && s.names("N2"));
        assert!(s.names("N3") && !s.names("n3"));
        assert!(!s.names("n5"));
        assert!(p("ANY 1 (*)").names("anything"));
    }

    #[test]
    fn the_count_follows_the_available_standbys() {
        let s = p("FIRST 2 (n2, n3)");
        assert_eq!(desired(&s, 2, true, true), Desired::Original);
        assert_eq!(desired(&s, 1, true, false), Desired::Lowered(s.with_num(1)));
        assert_eq!(desired(&s, 1, false, true), Desired::Original, "sync.primary alone acts only with none left");
        assert_eq!(desired(&s, 0, true, false), Desired::Lowered(s.with_num(1)), "never below 1 without sync.primary");
        assert_eq!(desired(&s, 0, false, true), Desired::Async);
        assert_eq!(desired(&s, 0, true, true), Desired::Async);
        assert_eq!(desired(&s, 0, false, false), Desired::Original);
        let one = p("n2");
        assert_eq!(desired(&one, 0, true, false), Desired::Original, "already 1");
        assert_eq!(desired(&one, 0, false, true), Desired::Async);
    }
}
