//! Layer ids that are safe to use as file names and device-mapper names.
//!
//! Every id arrives from outside (CLI, service, a Docker store on disk) and
//! becomes a path component (`metadata/<id>`, `mnt/<id>`, `overlay2/<id>`),
//! so it is validated once, here, and only a `LayerId` is passed inward.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Longest id accepted: a file name on every Linux filesystem.
pub const MAX_ID_LEN: usize = 255;

/// Suffix of a container's init layer, as Docker names it.
pub const INIT_SUFFIX: &str = "-init";

/// A validated layer id: 1..=255 bytes of `[A-Za-z0-9_.:@+-]`, not starting
/// with `.` or `-`, never containing `..`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct LayerId(String);

/// Why an id was refused; the message names the id (escaped) and the rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("layer id is empty")]
    Empty,
    #[error("layer id {id:?} is {len} bytes long; the limit is {MAX_ID_LEN}")]
    TooLong { id: String, len: usize },
    #[error("layer id {id:?} contains {what}, which is not allowed in a layer id")]
    BadChar { id: String, what: String },
    #[error("layer id {id:?} contains \"..\"")]
    DotDot { id: String },
    #[error("layer id {id:?} must not start with {first:?}")]
    BadStart { id: String, first: char },
}

impl LayerId {
    /// Validates `id`.
    pub fn new(id: &str) -> Result<Self, IdError> {
        validate(id)?;
        Ok(LayerId(id.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The id of this container layer's init layer (`<id>-init`).
    pub fn init_layer(&self) -> Result<LayerId, IdError> {
        LayerId::new(&format!("{}{INIT_SUFFIX}", self.0))
    }

    /// True for Docker's `<id>-init` layers.
    pub fn is_init_layer(&self) -> bool {
        self.0.ends_with(INIT_SUFFIX)
    }
}

fn validate(id: &str) -> Result<(), IdError> {
    if id.is_empty() {
        return Err(IdError::Empty);
    }
    if id.len() > MAX_ID_LEN {
        return Err(IdError::TooLong {
            id: truncate_for_message(id),
            len: id.len(),
        });
    }
    if let Some(c) = id.chars().find(|c| !is_allowed(*c)) {
        let what = match c {
            '/' => "'/'".to_string(),
            '\0' => "a NUL byte".to_string(),
            '\n' => "a newline".to_string(),
            c if c.is_whitespace() => "whitespace".to_string(),
            c if c.is_control() => format!("the control character {:?}", c),
            c => format!("{c:?}"),
        };
        return Err(IdError::BadChar {
            id: id.to_string(),
            what,
        });
    }
    if id.contains("..") {
        return Err(IdError::DotDot { id: id.to_string() });
    }
    let first = id.chars().next().unwrap_or('.');
    if first == '.' || first == '-' {
        return Err(IdError::BadStart {
            id: id.to_string(),
            first,
        });
    }
    Ok(())
}

fn is_allowed(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '@' | '+' | '-')
}

fn truncate_for_message(id: &str) -> String {
    let mut end = 40.min(id.len());
    while !id.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &id[..end])
}

impl fmt::Display for LayerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for LayerId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        LayerId::new(s)
    }
}

impl TryFrom<String> for LayerId {
    type Error = IdError;
    fn try_from(s: String) -> Result<Self, IdError> {
        validate(&s)?;
        Ok(LayerId(s))
    }
}

impl From<LayerId> for String {
    fn from(id: LayerId) -> String {
        id.0
    }
}

impl AsRef<str> for LayerId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_docker_ids() {
        let hex = "56c35ef742145bc66c1f0ee2babeecb39ba3b2c1168c3b9eda577b29656a0b01";
        assert!(LayerId::new(hex).is_ok());
        let init = LayerId::new(hex).unwrap().init_layer().unwrap();
        assert_eq!(init.as_str(), format!("{hex}-init"));
        assert!(init.is_init_layer());
        assert!(LayerId::new("layer-1").is_ok());
        assert!(LayerId::new("sha256:abc").is_ok());
    }

    #[test]
    fn rejects_hostile_ids() {
        let long = "a".repeat(256);
        for bad in [
            "",
            "a/b",
            "/etc",
            "..",
            "a..b",
            ".hidden",
            "-x",
            "a\0b",
            "a\nb",
            "a b",
            "a\tb",
            "é",
            long.as_str(),
        ] {
            assert!(LayerId::new(bad).is_err(), "{bad:?} must be rejected");
        }
        assert!(LayerId::new(&"a".repeat(255)).is_ok());
    }

    #[test]
    fn error_names_the_problem() {
        let e = LayerId::new("a/b").unwrap_err().to_string();
        assert!(e.contains("'/'"), "{e}");
        let e = LayerId::new("a\0b").unwrap_err().to_string();
        assert!(e.contains("NUL"), "{e}");
    }

    #[test]
    fn serde_validates() {
        let ok: LayerId = serde_json::from_str("\"abc\"").unwrap();
        assert_eq!(ok.as_str(), "abc");
        assert!(serde_json::from_str::<LayerId>("\"../x\"").is_err());
    }
}
