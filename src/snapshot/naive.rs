//! Diff, changes and apply for backends that can only show a layer as a
//! mounted tree (devicemapper, vfs, btrfs): mount the layer and its parent
//! read-only and compare, as Docker's `NaiveDiffDriver` does.

use std::io::{Read, Write};

use super::{Change, Driver, LayerId, Result, SnapshotError};
use crate::layer::{self, WhiteoutFormat};

/// Failpoints of the naive `apply_diff` (between marking the layer
/// incomplete, writing and syncing the data, and clearing the mark).
pub const FAILPOINTS: &[&str] = &["snapshot.apply.after_mark", "snapshot.apply.after_sync"];

fn failpoint(name: &'static str) -> Result<()> {
    crate::failpoint::hit(name)
        .map_err(|e| SnapshotError::other(super::ErrorKind::Io, "apply_diff", e))
}

/// Holds a `get` and releases it on drop, so an early return never leaks a mount.
pub struct Mounted<'a, D: Driver + ?Sized> {
    driver: &'a D,
    id: LayerId,
    pub path: std::path::PathBuf,
}

impl<'a, D: Driver + ?Sized> Mounted<'a, D> {
    pub fn new(driver: &'a D, id: &LayerId) -> Result<Self> {
        let path = driver.get(id, None)?;
        Ok(Mounted {
            driver,
            id: id.clone(),
            path,
        })
    }
}

impl<D: Driver + ?Sized> Drop for Mounted<'_, D> {
    fn drop(&mut self) {
        if let Err(e) = self.driver.put(&self.id) {
            tracing::warn!(id = %self.id, error = %e, "releasing mount failed");
        }
    }
}

/// The parent to compare against: the one given, else the recorded one.
fn effective_parent<D: Driver + ?Sized>(
    driver: &D,
    id: &LayerId,
    parent: Option<&LayerId>,
) -> Result<Option<LayerId>> {
    match parent {
        Some(p) => {
            if !driver.exists(p) {
                return Err(SnapshotError::not_found(p));
            }
            Ok(Some(p.clone()))
        }
        None => driver.parent(id),
    }
}

pub fn changes<D: Driver + ?Sized>(
    driver: &D,
    id: &LayerId,
    parent: Option<&LayerId>,
) -> Result<Vec<Change>> {
    let parent = effective_parent(driver, id, parent)?;
    let layer = Mounted::new(driver, id)?;
    let base = parent
        .as_ref()
        .map(|p| Mounted::new(driver, p))
        .transpose()?;
    layer::changes_between(&layer.path, base.as_ref().map(|b| b.path.as_path()))
}

pub fn diff<D: Driver + ?Sized>(
    driver: &D,
    id: &LayerId,
    parent: Option<&LayerId>,
    out: &mut dyn Write,
) -> Result<u64> {
    let parent = effective_parent(driver, id, parent)?;
    let layer = Mounted::new(driver, id)?;
    let base = parent
        .as_ref()
        .map(|p| Mounted::new(driver, p))
        .transpose()?;
    let changes = layer::changes_between(&layer.path, base.as_ref().map(|b| b.path.as_path()))?;
    layer::write_tar(&layer.path, &changes, out)
}

pub fn diff_size<D: Driver + ?Sized>(
    driver: &D,
    id: &LayerId,
    parent: Option<&LayerId>,
) -> Result<u64> {
    let parent = effective_parent(driver, id, parent)?;
    let layer = Mounted::new(driver, id)?;
    let base = parent
        .as_ref()
        .map(|p| Mounted::new(driver, p))
        .transpose()?;
    let changes = layer::changes_between(&layer.path, base.as_ref().map(|b| b.path.as_path()))?;
    layer::changes_size(&layer.path, &changes)
}

pub fn apply_diff<D: Driver + ?Sized>(
    driver: &D,
    id: &LayerId,
    parent: Option<&LayerId>,
    tar: &mut dyn Read,
) -> Result<u64> {
    if let Some(p) = parent {
        let recorded = driver.parent(id)?;
        if recorded.as_ref() != Some(p) {
            return Err(SnapshotError::invalid(format!(
                "layer {id} was created on {}, not on {p}",
                recorded
                    .map(|r| r.to_string())
                    .unwrap_or_else(|| "nothing".into())
            )));
        }
    }
    // Mount first: `get` refuses incomplete layers, and the mark must be on
    // disk before the first byte of the tar lands in the layer.
    let layer = Mounted::new(driver, id)?;
    driver.set_incomplete(id, true)?;
    failpoint("snapshot.apply.after_mark")?;
    let applied = layer::apply_tar(&layer.path, tar, WhiteoutFormat::Apply)?;
    layer::sync_tree(&layer.path)?;
    failpoint("snapshot.apply.after_sync")?;
    driver.set_incomplete(id, false)?;
    Ok(applied)
}
