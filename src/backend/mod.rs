//! The snapshot API's implementations and the choice between them.
//!
//! `open` is the one entry point the CLI and the service use: it picks the
//! backend ([`choose`]: `auto` follows Docker's order, see
//! `crate::probe::recommend`), parses its options and opens (or creates)
//! its store under the root. `status` and `doctor` print the same choice.

use std::path::PathBuf;

use crate::probe::{self, HostReport};
use crate::snapshot::{Driver, Result, SnapshotError};

pub mod aufs;
pub mod btrfs;
pub mod devmapper;
pub mod overlay;
pub mod overlay2;
pub mod shared;
pub mod vfs;

/// Which store to open and how.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Store root; a backend keeps its data in `<root>/<driver name>`.
    pub root: PathBuf,
    /// `auto` or a backend name.
    pub driver: String,
    /// Backend options as given (`dm.basesize=20G`, ...).
    pub storage_opts: Vec<String>,
}

/// Backend names thinsnap knows, in Docker's spelling.
pub const DRIVERS: &[&str] = &[
    "devicemapper",
    "overlay2",
    "overlay",
    "aufs",
    "vfs",
    "btrfs",
];

/// The driver a store is opened with, and why.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Choice {
    pub driver: String,
    pub reason: String,
    /// Other drivers with layers under the same root, whose layers the
    /// chosen driver does not see.
    pub hidden: Vec<String>,
}

impl Choice {
    /// One warning per other driver's store: "layers stored by X are not
    /// visible to Y".
    pub fn warnings(&self) -> Vec<String> {
        self.hidden
            .iter()
            .map(|other| {
                format!(
                    "layers stored by {other} are not visible to {}; use --driver {other} to work with them",
                    self.driver
                )
            })
            .collect()
    }
}

/// Decides which driver `config` opens: a named one as given (other
/// drivers' stores are reported in `hidden`), `auto` as
/// `probe::recommend` says. `auto` fails when no driver fits or when the
/// root holds layers of several drivers.
pub fn choose(config: &StoreConfig) -> Result<Choice> {
    if config.driver == "auto" {
        choose_from("auto", &HostReport::probe(&config.root))
    } else {
        let existing = probe::existing_stores(&config.root);
        choose_among(&config.driver, &existing)
    }
}

/// [`choose`] from a host report (the one `doctor` prints).
pub fn choose_from(driver: &str, report: &HostReport) -> Result<Choice> {
    if driver != "auto" {
        return choose_among(driver, &report.existing_stores);
    }
    let rec = &report.recommendation;
    match &rec.driver {
        Some(d) => Ok(Choice {
            driver: d.clone(),
            reason: format!("auto: {}", rec.reason),
            hidden: Vec::new(),
        }),
        None if report.existing_stores.len() > 1 => Err(SnapshotError::invalid(rec.reason.clone())),
        None => Err(SnapshotError::unsupported(
            "choosing a driver automatically",
            rec.reason.clone(),
        )),
    }
}

fn choose_among(driver: &str, existing: &[String]) -> Result<Choice> {
    if !DRIVERS.contains(&driver) {
        return Err(unknown(driver));
    }
    Ok(Choice {
        driver: driver.to_string(),
        reason: "chosen with --driver".into(),
        hidden: existing.iter().filter(|e| *e != driver).cloned().collect(),
    })
}

fn unknown(driver: &str) -> SnapshotError {
    SnapshotError::invalid(format!(
        "unknown driver {driver:?}; choose one of auto, {}",
        DRIVERS.join(", ")
    ))
}

/// Opens the store described by `config` (see [`choose`]); warns about
/// other drivers' layers under the same root.
pub fn open(config: &StoreConfig) -> Result<Box<dyn Driver>> {
    open_with_choice(config).map(|(d, _)| d)
}

/// [`open`], also returning the choice (for `status`).
pub fn open_with_choice(config: &StoreConfig) -> Result<(Box<dyn Driver>, Choice)> {
    let choice = choose(config)?;
    for w in choice.warnings() {
        tracing::warn!("{w}");
    }
    let driver = open_named(&choice.driver, config)?;
    Ok((driver, choice))
}

/// Opens the named driver's store under `config.root`.
pub fn open_named(name: &str, config: &StoreConfig) -> Result<Box<dyn Driver>> {
    match name {
        "aufs" => Ok(Box::new(aufs::AufsDriver::open(
            &config.root,
            &config.storage_opts,
        )?)),
        "btrfs" => Ok(Box::new(btrfs::BtrfsDriver::open(
            &config.root,
            &config.storage_opts,
        )?)),
        "overlay" => Ok(Box::new(overlay::OverlayDriver::open(
            &config.root,
            &config.storage_opts,
        )?)),
        "overlay2" => Ok(Box::new(overlay2::Overlay2Driver::open(
            &config.root,
            &config.storage_opts,
        )?)),
        "vfs" => Ok(Box::new(vfs::VfsDriver::open(
            &config.root,
            &config.storage_opts,
        )?)),
        "devicemapper" => Ok(Box::new(devmapper::DevmapperDriver::open(
            &config.root,
            &config.storage_opts,
        )?)),
        other => Err(unknown(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_drivers_report_other_stores() {
        let c = choose_among("vfs", &["overlay2".into(), "vfs".into()]).unwrap();
        assert_eq!(c.driver, "vfs");
        assert_eq!(c.hidden, ["overlay2"]);
        assert_eq!(
            c.warnings(),
            [
                "layers stored by overlay2 are not visible to vfs; use --driver overlay2 to work with them"
            ]
        );
        let e = choose_among("zfs", &[]).unwrap_err();
        assert!(e.to_string().contains("unknown driver \"zfs\""), "{e}");
    }

    #[test]
    fn auto_follows_the_probe_and_refuses_mixed_roots() {
        let root = tempfile::tempdir().unwrap();
        let mut report = HostReport::probe(root.path());
        report.existing_stores = vec!["vfs".into()];
        report.recommendation = probe::recommend(&report);
        let c = choose_from("auto", &report).unwrap();
        assert_eq!(c.driver, "vfs");
        assert!(c.reason.starts_with("auto: a vfs store"), "{}", c.reason);
        report.existing_stores = vec!["overlay2".into(), "vfs".into()];
        report.recommendation = probe::recommend(&report);
        let e = choose_from("auto", &report).unwrap_err();
        assert_eq!(e.kind(), crate::snapshot::ErrorKind::InvalidInput);
        assert!(e.to_string().contains("not visible"), "{e}");
    }

    #[test]
    fn auto_opens_an_existing_store_of_another_driver() {
        let root = tempfile::tempdir().unwrap();
        let named = |d: &str| StoreConfig {
            root: root.path().to_path_buf(),
            driver: d.into(),
            storage_opts: vec![],
        };
        let vfs = open(&named("vfs")).unwrap();
        vfs.create(
            &crate::snapshot::LayerId::new("a").unwrap(),
            None,
            &Default::default(),
        )
        .unwrap();
        let (d, choice) = open_with_choice(&named("auto")).unwrap();
        assert_eq!(d.name(), "vfs", "{choice:?}");
        assert!(d.exists(&crate::snapshot::LayerId::new("a").unwrap()));
    }
}
