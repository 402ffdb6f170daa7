//! Service configuration: `/etc/thinsnap/config.toml` (or `.json`) with
//! `root`, `driver`, `storage_opts`, `socket`, `remove_workers`; command-line flags override
//! the file, the file overrides the defaults.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::backend::StoreConfig;

/// Looked for, in order, when `--config` is not given.
pub const DEFAULT_CONFIG_FILES: &[&str] =
    &["/etc/thinsnap/config.toml", "/etc/thinsnap/config.json"];
pub const DEFAULT_SOCKET: &str = "/run/thinsnap/thinsnap.sock";
pub const DEFAULT_ROOT: &str = "/var/lib/thinsnap";
pub const DEFAULT_DRIVER: &str = "auto";
/// Threads deleting removed snapshots' layers (see `service::remover`):
/// on devicemapper four overlap the kernel's waits about threefold.
pub const DEFAULT_REMOVE_WORKERS: usize = 4;

/// The file's contents; every field optional, unknown fields refused.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub root: Option<PathBuf>,
    pub driver: Option<String>,
    pub storage_opts: Option<Vec<String>>,
    pub socket: Option<PathBuf>,
    /// 0: `Remove` deletes the layer before it returns.
    pub remove_workers: Option<usize>,
}

/// What the command line said explicitly (defaults are not overrides).
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub root: Option<PathBuf>,
    pub driver: Option<String>,
    /// Replaces the file's list when non-empty.
    pub storage_opts: Vec<String>,
    pub socket: Option<PathBuf>,
    pub remove_workers: Option<usize>,
}

/// The effective configuration.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub store: StoreConfig,
    pub socket: PathBuf,
    /// Background removal threads; 0 = remove before `Remove` returns.
    pub remove_workers: usize,
    /// The file it came from, if any (for the start-up log line).
    pub file: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading config file {}: {source}", .path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {}: {detail}", .path.display())]
    Parse { path: PathBuf, detail: String },
}

/// Reads `explicit`, or the first default file that exists (none: `Ok(None)`).
pub fn load(explicit: Option<&Path>) -> Result<Option<(PathBuf, FileConfig)>, ConfigError> {
    let path = match explicit {
        Some(p) => p.to_path_buf(),
        None => match DEFAULT_CONFIG_FILES
            .iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
        {
            Some(p) => p,
            None => return Ok(None),
        },
    };
    let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
        path: path.clone(),
        source,
    })?;
    let parsed = parse(&path, &text)?;
    Ok(Some((path, parsed)))
}

/// Parses by extension: `.json` is JSON, anything else TOML.
pub fn parse(path: &Path, text: &str) -> Result<FileConfig, ConfigError> {
    let fail = |detail: String| ConfigError::Parse {
        path: path.to_path_buf(),
        detail,
    };
    if path.extension().is_some_and(|e| e == "json") {
        serde_json::from_str(text).map_err(|e| fail(e.to_string()))
    } else {
        toml::from_str(text).map_err(|e| fail(e.to_string()))
    }
}

/// Flags over file over defaults.
pub fn resolve(file: Option<(PathBuf, FileConfig)>, flags: Overrides) -> ServeConfig {
    let (source, file) = match file {
        Some((p, f)) => (Some(p), f),
        None => (None, FileConfig::default()),
    };
    let storage_opts = if flags.storage_opts.is_empty() {
        file.storage_opts.unwrap_or_default()
    } else {
        flags.storage_opts
    };
    ServeConfig {
        store: StoreConfig {
            root: flags
                .root
                .or(file.root)
                .unwrap_or_else(|| DEFAULT_ROOT.into()),
            driver: flags
                .driver
                .or(file.driver)
                .unwrap_or_else(|| DEFAULT_DRIVER.into()),
            storage_opts,
        },
        socket: flags
            .socket
            .or(file.socket)
            .unwrap_or_else(|| DEFAULT_SOCKET.into()),
        remove_workers: flags
            .remove_workers
            .or(file.remove_workers)
            .unwrap_or(DEFAULT_REMOVE_WORKERS),
        file: source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_and_json_with_flag_overrides() {
        let toml_text = r#"
root = "/srv/thinsnap"
driver = "devicemapper"
storage_opts = ["dm.basesize=20G", "dm.fs=xfs"]
socket = "/run/ts.sock"
"#;
        let f = parse(Path::new("/etc/thinsnap/config.toml"), toml_text).unwrap();
        assert_eq!(f.driver.as_deref(), Some("devicemapper"));
        let json = r#"{"root": "/srv/thinsnap", "driver": "devicemapper",
            "storage_opts": ["dm.basesize=20G", "dm.fs=xfs"], "socket": "/run/ts.sock"}"#;
        assert_eq!(parse(Path::new("c.json"), json).unwrap(), f);

        let c = resolve(
            Some(("/etc/thinsnap/config.toml".into(), f.clone())),
            Overrides {
                driver: Some("overlay2".into()),
                ..Default::default()
            },
        );
        assert_eq!(c.store.driver, "overlay2");
        assert_eq!(c.store.root, Path::new("/srv/thinsnap"));
        assert_eq!(c.store.storage_opts, ["dm.basesize=20G", "dm.fs=xfs"]);
        assert_eq!(c.socket, Path::new("/run/ts.sock"));
        let c = resolve(
            Some(("x".into(), f)),
            Overrides {
                storage_opts: vec!["dm.fs=ext4".into()],
                socket: Some("/tmp/s".into()),
                ..Default::default()
            },
        );
        assert_eq!(c.store.storage_opts, ["dm.fs=ext4"]);
        assert_eq!(c.socket, Path::new("/tmp/s"));

        let d = resolve(None, Overrides::default());
        assert_eq!(d.socket, Path::new(DEFAULT_SOCKET));
        assert_eq!(d.store.root, Path::new(DEFAULT_ROOT));
        assert_eq!(d.store.driver, "auto");
        assert_eq!(d.remove_workers, DEFAULT_REMOVE_WORKERS);
        let w = parse(Path::new("c.toml"), "remove_workers = 0").unwrap();
        assert_eq!(
            resolve(Some(("c.toml".into(), w)), Overrides::default()).remove_workers,
            0
        );
    }

    #[test]
    fn packaged_example_config_parses() {
        let text = include_str!("../../packaging/config.toml");
        let f = parse(Path::new("/etc/thinsnap/config.toml"), text).unwrap();
        assert_eq!(f.driver.as_deref(), Some("devicemapper"));
        assert_eq!(f.socket.as_deref(), Some(Path::new(DEFAULT_SOCKET)));
        let opts = f.storage_opts.unwrap();
        assert!(opts.iter().all(|o| o.starts_with("dm.")), "{opts:?}");
        crate::backend::devmapper::options::DmStoreOptions::parse(&opts).unwrap();
    }

    #[test]
    fn unknown_fields_and_bad_syntax_are_refused() {
        let e = parse(Path::new("c.toml"), "rot = \"/x\"").unwrap_err();
        assert!(e.to_string().contains("rot"), "{e}");
        assert!(parse(Path::new("c.json"), "{").is_err());
        let missing = load(Some(Path::new("/nonexistent/thinsnap.toml"))).unwrap_err();
        assert!(missing.to_string().contains("/nonexistent/thinsnap.toml"));
    }
}
