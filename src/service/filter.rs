//! containerd's filter syntax, the subset snapshot listings use.
//!
//! ```text
//! filter    := selector ( "," selector )*        comma = AND
//! selector  := fieldpath [ operator value ]      no operator = field present
//! fieldpath := field ( "." field )*              field = identifier | quoted
//! operator  := "==" | "!=" | "~="                "~=" is a regular expression
//! value     := quoted | run of characters up to "," or whitespace
//! quoted    := "..." (backslash escapes) | /.../ (for regular expressions)
//! ```
//!
//! Several filter strings are ORed. Fields: `name`, `parent`, `kind`
//! (`active`, `view`, `committed`) and `labels.<key>` (quote keys with dots
//! or slashes: `labels."containerd.io/gc.root"`).

use regex::Regex;

use super::model::SnapshotInfo;

/// A parsed list of filter strings; matches if any one of them matches.
#[derive(Debug, Clone)]
pub struct Filters {
    any: Vec<Vec<Selector>>,
}

#[derive(Debug, Clone)]
struct Selector {
    path: Vec<String>,
    op: Op,
}

#[derive(Debug, Clone)]
enum Op {
    Present,
    Equal(String),
    NotEqual(String),
    Matches(Regex),
}

/// Why a filter string was refused: position and reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("filter {filter:?}: {reason} at byte {pos}")]
pub struct FilterError {
    pub filter: String,
    pub pos: usize,
    pub reason: String,
}

impl Filters {
    /// Parses every string; empty strings are ignored, no strings match all.
    pub fn parse<S: AsRef<str>>(filters: &[S]) -> Result<Filters, FilterError> {
        let mut any = Vec::new();
        for f in filters {
            let f = f.as_ref();
            if f.trim().is_empty() {
                continue;
            }
            any.push(Parser::new(f).parse()?);
        }
        Ok(Filters { any })
    }

    pub fn matches(&self, info: &SnapshotInfo) -> bool {
        self.any.is_empty()
            || self
                .any
                .iter()
                .any(|all| all.iter().all(|s| s.matches(info)))
    }
}

impl Selector {
    fn matches(&self, info: &SnapshotInfo) -> bool {
        let value = field(info, &self.path);
        match &self.op {
            Op::Present => value.is_some(),
            Op::Equal(v) => value.as_deref() == Some(v.as_str()),
            Op::NotEqual(v) => value.as_deref().unwrap_or("") != v,
            Op::Matches(re) => value.is_some_and(|x| re.is_match(&x)),
        }
    }
}

/// The value of a field path, `None` when the snapshot has no such field.
fn field(info: &SnapshotInfo, path: &[String]) -> Option<String> {
    match path {
        [f] if f == "name" => Some(info.name.clone()),
        [f] if f == "parent" => Some(info.parent.clone().unwrap_or_default()),
        [f] if f == "kind" => Some(info.kind.as_str().to_string()),
        [f, rest @ ..] if f == "labels" && !rest.is_empty() => {
            info.labels.get(&rest.join(".")).cloned()
        }
        _ => None,
    }
}

struct Parser<'a> {
    src: &'a str,
    pos: usize,
}

impl<'a> Parser<'a> {
    fn new(src: &'a str) -> Self {
        Parser { src, pos: 0 }
    }

    fn fail<T>(&self, reason: impl Into<String>) -> Result<T, FilterError> {
        Err(FilterError {
            filter: self.src.to_string(),
            pos: self.pos,
            reason: reason.into(),
        })
    }

    fn rest(&self) -> &'a str {
        &self.src[self.pos..]
    }

    fn skip_space(&mut self) {
        let trimmed = self.rest().trim_start();
        self.pos = self.src.len() - trimmed.len();
    }

    fn peek(&self) -> Option<char> {
        self.rest().chars().next()
    }

    fn parse(mut self) -> Result<Vec<Selector>, FilterError> {
        let mut selectors = Vec::new();
        loop {
            selectors.push(self.selector()?);
            self.skip_space();
            match self.peek() {
                None => return Ok(selectors),
                Some(',') => self.pos += 1,
                Some(c) => return self.fail(format!("expected \",\" or the end, found {c:?}")),
            }
        }
    }

    fn selector(&mut self) -> Result<Selector, FilterError> {
        let mut path = vec![self.field()?];
        loop {
            self.skip_space();
            if self.peek() == Some('.') {
                self.pos += 1;
                path.push(self.field()?);
            } else {
                break;
            }
        }
        self.skip_space();
        let op = if self.rest().starts_with("==") {
            "=="
        } else if self.rest().starts_with("!=") {
            "!="
        } else if self.rest().starts_with("~=") {
            "~="
        } else {
            return Ok(Selector {
                path,
                op: Op::Present,
            });
        };
        self.pos += 2;
        let value_pos = self.pos;
        let value = self.value()?;
        let op = match op {
            "==" => Op::Equal(value),
            "!=" => Op::NotEqual(value),
            _ => match Regex::new(&value) {
                Ok(re) => Op::Matches(re),
                Err(e) => {
                    self.pos = value_pos;
                    return self.fail(format!("bad regular expression: {e}"));
                }
            },
        };
        Ok(Selector { path, op })
    }

    fn field(&mut self) -> Result<String, FilterError> {
        self.skip_space();
        match self.peek() {
            Some('"') => self.quoted('"'),
            Some(c) if c.is_ascii_alphabetic() => {
                let len = self
                    .rest()
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(self.rest().len());
                let f = self.rest()[..len].to_string();
                self.pos += len;
                Ok(f)
            }
            Some(c) => self.fail(format!("expected a field name, found {c:?}")),
            None => self.fail("expected a field name, found the end"),
        }
    }

    fn value(&mut self) -> Result<String, FilterError> {
        self.skip_space();
        match self.peek() {
            Some('"') => self.quoted('"'),
            Some('/') => self.quoted('/'),
            Some(_) => {
                let len = self
                    .rest()
                    .find(|c: char| c == ',' || c.is_whitespace())
                    .unwrap_or(self.rest().len());
                let v = self.rest()[..len].to_string();
                self.pos += len;
                Ok(v)
            }
            None => self.fail("expected a value, found the end"),
        }
    }

    /// Reads a string delimited by `quote`; `\` escapes the next character
    /// (`\n`, `\t` and `\\` as usual; inside `/.../` a `\` is kept so regex
    /// escapes survive, except before `/`).
    fn quoted(&mut self, quote: char) -> Result<String, FilterError> {
        let start = self.pos;
        self.pos += quote.len_utf8();
        let mut out = String::new();
        let mut chars = self.rest().char_indices();
        while let Some((i, c)) = chars.next() {
            if c == quote {
                self.pos += i + c.len_utf8();
                return Ok(out);
            }
            if c == '\\' {
                let Some((_, next)) = chars.next() else { break };
                match (quote, next) {
                    ('/', '/') => out.push('/'),
                    ('/', other) => {
                        out.push('\\');
                        out.push(other);
                    }
                    (_, 'n') => out.push('\n'),
                    (_, 't') => out.push('\t'),
                    (_, other) => out.push(other),
                }
                continue;
            }
            out.push(c);
        }
        self.pos = start;
        self.fail(format!("unterminated {quote}-quoted string"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::model::Kind;
    use std::collections::BTreeMap;
    use std::time::SystemTime;

    fn info(name: &str, parent: Option<&str>, kind: Kind, labels: &[(&str, &str)]) -> SnapshotInfo {
        SnapshotInfo {
            name: name.into(),
            parent: parent.map(Into::into),
            kind,
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
            created: SystemTime::UNIX_EPOCH,
            updated: SystemTime::UNIX_EPOCH,
        }
    }

    fn world() -> Vec<SnapshotInfo> {
        vec![
            info(
                "default/1/base",
                None,
                Kind::Committed,
                &[("containerd.io/gc.root", "yes"), ("tier", "base")],
            ),
            info(
                "default/2/app",
                Some("default/1/base"),
                Kind::Committed,
                &[("tier", "app")],
            ),
            info("default/3/run", Some("default/2/app"), Kind::Active, &[]),
            info(
                "default/4/look",
                Some("default/2/app"),
                Kind::View,
                &[("tier", "app")],
            ),
        ]
    }

    fn names(filters: &[&str]) -> Vec<String> {
        let f = Filters::parse(filters).unwrap();
        world()
            .into_iter()
            .filter(|i| f.matches(i))
            .map(|i| i.name)
            .collect()
    }

    #[test]
    fn walk_filter_cases() {
        assert_eq!(names(&[]).len(), 4);
        assert_eq!(
            names(&["kind==committed"]),
            ["default/1/base", "default/2/app"]
        );
        assert_eq!(names(&["kind==active"]), ["default/3/run"]);
        assert_eq!(
            names(&["kind!=committed"]),
            ["default/3/run", "default/4/look"]
        );
        assert_eq!(names(&["name==default/3/run"]), ["default/3/run"]);
        assert_eq!(
            names(&["parent==default/2/app"]),
            ["default/3/run", "default/4/look"]
        );
        assert_eq!(names(&["parent==\"\""]), ["default/1/base"]);
        assert_eq!(
            names(&["labels.\"containerd.io/gc.root\""]),
            ["default/1/base"]
        );
        assert_eq!(
            names(&["labels.tier==app"]),
            ["default/2/app", "default/4/look"]
        );
        assert_eq!(names(&["labels.tier==app,kind==view"]), ["default/4/look"]);
        assert_eq!(
            names(&["kind==active", "labels.tier==base"]),
            ["default/1/base", "default/3/run"],
            "several strings are ORed"
        );
        assert_eq!(
            names(&["name~=^default/[12]/"]),
            ["default/1/base", "default/2/app"]
        );
        assert_eq!(names(&["name~=/r.n$/"]), ["default/3/run"]);
        assert_eq!(
            names(&[" labels.tier != app , kind == committed "]),
            ["default/1/base"]
        );
        assert!(names(&["labels.missing==x"]).is_empty());
        assert!(names(&["unknownfield"]).is_empty());
    }

    #[test]
    fn quoting_and_escapes() {
        let w = [info("a", None, Kind::Active, &[("k.with.dots", "v \"q\"")])];
        let f = Filters::parse(&[r#"labels."k.with.dots"=="v \"q\"""#]).unwrap();
        assert!(f.matches(&w[0]));
        let f = Filters::parse(&["labels.k.with.dots"]).unwrap();
        assert!(
            f.matches(&w[0]),
            "unquoted dotted label keys join with dots"
        );
    }

    #[test]
    fn syntax_errors_name_the_position() {
        for bad in [
            "==x",
            "name==",
            "name==\"open",
            "name~=(",
            "name==a b",
            "name=x",
            "labels.",
            ",",
        ] {
            let e = Filters::parse(&[bad]).unwrap_err();
            assert_eq!(e.filter, bad);
            assert!(e.pos <= bad.len(), "{e}");
        }
        let e = Filters::parse(&["name~=("]).unwrap_err();
        assert!(e.reason.contains("regular expression"), "{e}");
    }
}
