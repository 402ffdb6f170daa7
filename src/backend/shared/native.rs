//! Native diff, changes, diff size and apply for backends that keep each
//! layer's own changes in a directory of its own (overlay2's `diff/`,
//! aufs's `diff/<id>`): the layer tar comes from that directory alone and
//! goes back into it, translating the backend's whiteouts. Against any
//! parent other than the recorded one, the naive diff (mount both and
//! compare) is used, as Docker does.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use super::gate::Gate;
use super::sidecar::Sidecar;
use super::{failpoint, require_complete, wrong_parent};
use crate::layer::{self, WhiteoutFormat};
use crate::snapshot::{Change, Driver, LayerId, Result, SnapshotError, naive};

/// A backend whose layers are union layer directories.
pub trait UnionStore: Driver {
    /// The directory holding the layer's own changes.
    fn changes_dir(&self, id: &LayerId) -> PathBuf;
    /// How that directory stores deletions.
    fn format(&self) -> WhiteoutFormat;
    /// The ancestors' directories, nearest first.
    fn lower_dirs(&self, id: &LayerId) -> Result<Vec<PathBuf>>;
    fn sidecar(&self) -> &Sidecar;
    fn gate(&self) -> &Gate;
    /// Failpoints after the incomplete mark and after the sync of an apply.
    fn apply_failpoints(&self) -> [&'static str; 2];
}

/// Whether `parent` (None: the recorded one) allows the native path.
fn native_parent<S: UnionStore + ?Sized>(
    s: &S,
    id: &LayerId,
    parent: Option<&LayerId>,
) -> Result<bool> {
    match parent {
        None => Ok(true),
        Some(p) => Ok(s.parent(id)?.as_ref() == Some(p)),
    }
}

pub fn diff<S: UnionStore + ?Sized>(
    s: &S,
    id: &LayerId,
    parent: Option<&LayerId>,
    out: &mut dyn Write,
) -> Result<u64> {
    if !native_parent(s, id, parent)? {
        return naive::diff(s, id, parent, out);
    }
    require_complete(s.exists(id), s.sidecar(), id)?;
    layer::write_layer_dir_tar(&s.changes_dir(id), s.format(), out)
}

pub fn changes<S: UnionStore + ?Sized>(
    s: &S,
    id: &LayerId,
    parent: Option<&LayerId>,
) -> Result<Vec<Change>> {
    if !native_parent(s, id, parent)? {
        return naive::changes(s, id, parent);
    }
    require_complete(s.exists(id), s.sidecar(), id)?;
    let lowers = s.lower_dirs(id)?;
    let lowers: Vec<&Path> = lowers.iter().map(PathBuf::as_path).collect();
    layer::changes_in_layer_dir(&s.changes_dir(id), s.format(), &lowers)
}

pub fn diff_size<S: UnionStore + ?Sized>(
    s: &S,
    id: &LayerId,
    parent: Option<&LayerId>,
) -> Result<u64> {
    if !native_parent(s, id, parent)? {
        return naive::diff_size(s, id, parent);
    }
    let changes = changes(s, id, None)?;
    layer::changes_size(&s.changes_dir(id), &changes)
}

/// Applies a tar into the layer's directory: refused while the union is
/// mounted, marked incomplete from before the first byte until the data is
/// synced.
pub fn apply_diff<S: UnionStore + ?Sized>(
    s: &S,
    id: &LayerId,
    parent: Option<&LayerId>,
    tar: &mut dyn Read,
) -> Result<u64> {
    let _span = tracing::info_span!("apply", driver = s.name(), id = %id).entered();
    if let Some(p) = parent
        && !native_parent(s, id, Some(p))?
    {
        return Err(wrong_parent(id, s.parent(id)?, p));
    }
    let hold = s.gate().hold(id);
    require_complete(s.exists(id), s.sidecar(), id)?;
    let mounted = !s.lower_dirs(id)?.is_empty();
    if mounted && hold.refs() > 0 {
        return Err(SnapshotError::Busy {
            id: id.to_string(),
            detail: "a tar cannot be applied below a mounted union; put the layer first".into(),
        });
    }
    let [after_mark, after_sync] = s.apply_failpoints();
    s.sidecar().mark_incomplete(id, true)?;
    failpoint(s.name(), after_mark)?;
    let dir = s.changes_dir(id);
    let applied = layer::apply_tar(&dir, tar, s.format())?;
    layer::sync_tree(&dir)?;
    failpoint(s.name(), after_sync)?;
    s.sidecar().mark_incomplete(id, false)?;
    Ok(applied)
}
