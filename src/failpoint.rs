//! Named crash points for crash-consistency tests.
//!
//! `THINSNAP_FAILPOINTS="devmapper.create.after_snap=kill,vfs.apply.mid=error"`
//! arms points by name: `kill` sends SIGKILL to this process at that point
//! (what a power cut or `kill -9` does), `error` makes `hit` return an error,
//! `panic` panics. Unset, a check is one relaxed atomic load.

use std::collections::HashMap;
use std::sync::OnceLock;

/// What an armed failpoint does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Kill,
    Error,
    Panic,
}

/// Returned by an armed `error` failpoint.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("injected failure at failpoint {0}")]
pub struct Injected(pub &'static str);

fn armed() -> &'static HashMap<String, Action> {
    static ARMED: OnceLock<HashMap<String, Action>> = OnceLock::new();
    ARMED.get_or_init(|| parse(&std::env::var("THINSNAP_FAILPOINTS").unwrap_or_default()))
}

fn parse(spec: &str) -> HashMap<String, Action> {
    spec.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .filter_map(|item| {
            let (name, action) = item.split_once('=').unwrap_or((item, "kill"));
            let action = match action {
                "kill" => Action::Kill,
                "error" => Action::Error,
                "panic" => Action::Panic,
                other => {
                    tracing::warn!(
                        failpoint = name,
                        action = other,
                        "unknown failpoint action ignored"
                    );
                    return None;
                }
            };
            Some((name.to_string(), action))
        })
        .collect()
}

/// Passes through unless `name` is armed.
pub fn hit(name: &'static str) -> Result<(), Injected> {
    let armed = armed();
    if armed.is_empty() {
        return Ok(());
    }
    match armed.get(name) {
        None => Ok(()),
        Some(Action::Kill) => {
            tracing::error!(failpoint = name, "failpoint: killing the process");
            let _ =
                nix::sys::signal::kill(nix::unistd::getpid(), nix::sys::signal::Signal::SIGKILL);
            // SIGKILL cannot be caught; this is never reached.
            std::process::abort()
        }
        Some(Action::Error) => Err(Injected(name)),
        Some(Action::Panic) => panic!("failpoint {name}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_specs() {
        let m = parse("a=kill, b=error,c=panic,d,e=bogus");
        assert_eq!(m.get("a"), Some(&Action::Kill));
        assert_eq!(m.get("b"), Some(&Action::Error));
        assert_eq!(m.get("c"), Some(&Action::Panic));
        assert_eq!(m.get("d"), Some(&Action::Kill));
        assert!(!m.contains_key("e"));
        assert!(parse("").is_empty());
    }

    #[test]
    fn unarmed_points_pass() {
        assert!(hit("nothing.armed.here").is_ok());
    }
}
