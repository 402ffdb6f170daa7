//! Which paths differ between a layer and its parent, in Docker's
//! `ChangesDirs` terms, computed two ways: by comparing two full trees
//! (vfs, devicemapper, btrfs) and by reading a union layer directory that
//! holds only this layer's changes (overlay upper dirs, aufs diff dirs).
//!
//! Rules shared by both (so every backend reports the same list):
//! - a path only in the layer is `Add`, only in the parent `Delete`;
//! - a path in both is `Modify` when [`Meta::differs_from`] says so
//!   (directories: only their own mode, owner or xattrs count), or, for a
//!   directory, when anything below it changed (Docker reports the parents
//!   of changes so their permissions travel with the diff);
//! - a directory replaced wholesale is reported as `Delete` *and* `Add` of
//!   the directory (then its children as `Add`); the tar writer turns that
//!   pair into an opaque marker `<dir>/.wh..wh..opq`. From full trees,
//!   "replaced wholesale" means none of the parent's entries survive in the
//!   directory and it has new content; an emptied directory is reported with
//!   explicit deletions instead (OCI: writers should prefer them);
//! - a path whose type changes (file to directory, ...) is one `Modify`; the
//!   old directory's children are not listed (replacing the path removes them);
//! - sorted by path, component-wise, a `Delete` before an `Add` of the same path.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};

use super::WhiteoutFormat;
use super::error::{IoCtx, LayerError};
use super::fsmeta::{self, FileKind, Meta};
use super::whiteout::{self, Marker, OVERLAY_OPAQUE_XATTR};
use crate::snapshot::{Change, ChangeKind};

/// Sorts changes: by path component-wise (a directory right before its
/// contents), a `Delete` before the `Add` of the same path.
pub fn sort(changes: &mut [Change]) {
    changes.sort_by(|a, b| {
        a.path
            .cmp(&b.path)
            .then_with(|| kind_rank(a.kind).cmp(&kind_rank(b.kind)))
    });
}

fn kind_rank(kind: ChangeKind) -> u8 {
    match kind {
        ChangeKind::Delete => 0,
        ChangeKind::Modify | ChangeKind::Add => 1,
    }
}

fn push(out: &mut Vec<Change>, path: &Path, kind: ChangeKind) {
    out.push(Change {
        path: path.to_path_buf(),
        kind,
    });
}

/// Sorted names in a directory.
fn names(dir: &Path) -> Result<BTreeSet<OsString>, LayerError> {
    let mut set = BTreeSet::new();
    for entry in fs::read_dir(dir).ctx(|| format!("listing {}", dir.display()))? {
        let entry = entry.ctx(|| format!("listing {}", dir.display()))?;
        set.insert(entry.file_name());
    }
    Ok(set)
}

fn meta(path: &Path) -> Result<Meta, LayerError> {
    fsmeta::read(path).ctx(|| format!("inspecting {}", path.display()))
}

/// Changes turning the full tree `parent` into the full tree `layer`.
pub fn between(layer: &Path, parent: Option<&Path>) -> Result<Vec<Change>, LayerError> {
    let mut out = Vec::new();
    compare_dirs(layer, parent, Path::new("/"), &mut out)?;
    sort(&mut out);
    Ok(out)
}

/// Compares directory `new` with `old` (absent: everything is new); returns
/// whether anything below changed.
fn compare_dirs(
    new: &Path,
    old: Option<&Path>,
    rel: &Path,
    out: &mut Vec<Change>,
) -> Result<bool, LayerError> {
    let start = out.len();
    let new_names = names(new)?;
    let old_names = match old {
        Some(o) => names(o)?,
        None => BTreeSet::new(),
    };
    for name in &new_names {
        let new_path = new.join(name);
        let child = rel.join(name);
        let nm = meta(&new_path)?;
        let old_path = old
            .filter(|_| old_names.contains(name))
            .map(|o| o.join(name));
        let Some(old_path) = old_path else {
            push(out, &child, ChangeKind::Add);
            if nm.kind == FileKind::Dir {
                compare_dirs(&new_path, None, &child, out)?;
            }
            continue;
        };
        let om = meta(&old_path)?;
        match (om.kind == FileKind::Dir, nm.kind == FileKind::Dir) {
            (true, true) => {
                let old_children = names(&old_path)?;
                let new_children = names(&new_path)?;
                let replaced = !old_children.is_empty()
                    && !new_children.is_empty()
                    && old_children.is_disjoint(&new_children);
                if replaced {
                    push(out, &child, ChangeKind::Delete);
                    push(out, &child, ChangeKind::Add);
                    compare_dirs(&new_path, None, &child, out)?;
                } else {
                    let inner = compare_dirs(&new_path, Some(&old_path), &child, out)?;
                    if inner || nm.differs_from(&om) {
                        push(out, &child, ChangeKind::Modify);
                    }
                }
            }
            (_, new_is_dir) => {
                if nm.differs_from(&om) {
                    push(out, &child, ChangeKind::Modify);
                }
                if new_is_dir {
                    compare_dirs(&new_path, None, &child, out)?;
                }
            }
        }
    }
    if old.is_some() {
        for name in old_names.difference(&new_names) {
            push(out, &rel.join(name), ChangeKind::Delete);
        }
    }
    Ok(out.len() > start)
}

/// Changes recorded in a union layer directory `dir` (an overlay upper dir
/// or an aufs diff dir) whose lower layers are `lowers`, nearest first.
/// Whiteouts become `Delete` (only for paths the lowers actually show), an
/// opaque directory that hides a lower directory becomes `Delete` + `Add`.
pub fn in_layer_dir(
    dir: &Path,
    format: WhiteoutFormat,
    lowers: &[&Path],
) -> Result<Vec<Change>, LayerError> {
    let union = Union { format, lowers };
    let mut out = Vec::new();
    union.walk(dir, Path::new("/"), false, &mut out)?;
    sort(&mut out);
    Ok(out)
}

struct Union<'a> {
    format: WhiteoutFormat,
    lowers: &'a [&'a Path],
}

impl Union<'_> {
    /// Walks upper directory `dir` at layer path `rel`; `hidden` is set below
    /// an opaque or new directory (the lowers show nothing there).
    fn walk(
        &self,
        dir: &Path,
        rel: &Path,
        hidden: bool,
        out: &mut Vec<Change>,
    ) -> Result<bool, LayerError> {
        let start = out.len();
        for name in names(dir)? {
            let path = dir.join(&name);
            let child = rel.join(&name);
            if self.format == WhiteoutFormat::Aufs {
                match whiteout::classify(&name) {
                    Marker::Whiteout(target) => {
                        let target = rel.join(target);
                        if whiteout::valid_target(target.file_name().unwrap_or_default())
                            && !hidden
                            && self.lookup(&target)?.is_some()
                        {
                            push(out, &target, ChangeKind::Delete);
                        }
                        continue;
                    }
                    Marker::Opaque | Marker::Meta => continue,
                    Marker::None => {}
                }
            }
            let m = meta(&path)?;
            if self.format == WhiteoutFormat::Overlay && m.kind == FileKind::Char && m.rdev == 0 {
                if !hidden && self.lookup(&child)?.is_some() {
                    push(out, &child, ChangeKind::Delete);
                }
                continue;
            }
            let lower = if hidden { None } else { self.lookup(&child)? };
            let Some(lm) = lower else {
                push(out, &child, ChangeKind::Add);
                if m.kind == FileKind::Dir {
                    self.walk(&path, &child, true, out)?;
                }
                continue;
            };
            match (lm.kind == FileKind::Dir, m.kind == FileKind::Dir) {
                (true, true) => {
                    if self.is_opaque(&path)? {
                        push(out, &child, ChangeKind::Delete);
                        push(out, &child, ChangeKind::Add);
                        self.walk(&path, &child, true, out)?;
                    } else {
                        let inner = self.walk(&path, &child, false, out)?;
                        if inner || m.differs_from(&lm) {
                            push(out, &child, ChangeKind::Modify);
                        }
                    }
                }
                (_, is_dir) => {
                    if m.differs_from(&lm) {
                        push(out, &child, ChangeKind::Modify);
                    }
                    if is_dir {
                        self.walk(&path, &child, true, out)?;
                    }
                }
            }
        }
        Ok(out.len() > start)
    }

    /// Whether upper or lower directory `dir` is opaque in this format.
    fn is_opaque(&self, dir: &Path) -> Result<bool, LayerError> {
        match self.format {
            WhiteoutFormat::Overlay => match xattr::get(dir, OVERLAY_OPAQUE_XATTR) {
                Ok(v) => Ok(v.as_deref() == Some(b"y")),
                Err(e) if fsmeta::is_unsupported(&e) => Ok(false),
                Err(e) => Err(LayerError::io(
                    format!("reading xattrs of {}", dir.display()),
                    e,
                )),
            },
            WhiteoutFormat::Aufs => {
                Ok(fs::symlink_metadata(dir.join(whiteout::OPAQUE_MARKER)).is_ok())
            }
            WhiteoutFormat::Apply => Ok(false),
        }
    }

    /// Whether lower layer dir `lower` whites out `name` inside `dir`.
    fn whited_out(&self, dir: &Path, name: &std::ffi::OsStr) -> bool {
        match self.format {
            WhiteoutFormat::Aufs => {
                fs::symlink_metadata(dir.join(whiteout::whiteout_name(name))).is_ok()
            }
            WhiteoutFormat::Overlay => fs::symlink_metadata(dir.join(name))
                .map(|m| whiteout::is_overlay_whiteout(&m))
                .unwrap_or(false),
            WhiteoutFormat::Apply => false,
        }
    }

    /// What the union of the lowers shows at layer path `rel`.
    fn lookup(&self, rel: &Path) -> Result<Option<Meta>, LayerError> {
        let comps: Vec<_> = rel
            .components()
            .skip(1)
            .map(|c| c.as_os_str().to_os_string())
            .collect();
        if comps.is_empty() {
            return Ok(None);
        }
        for lower in self.lowers {
            let mut here = PathBuf::from(lower);
            let mut stop_below = false;
            for (i, comp) in comps.iter().enumerate() {
                if self.whited_out(&here, comp) {
                    return Ok(None);
                }
                let next = here.join(comp);
                let Ok(md) = fs::symlink_metadata(&next) else {
                    break;
                };
                if i + 1 == comps.len() {
                    return Ok(Some(meta(&next)?));
                }
                if !md.is_dir() {
                    // A non-directory here hides any deeper path.
                    return Ok(None);
                }
                if self.is_opaque(&next)? {
                    stop_below = true;
                }
                here = next;
            }
            if stop_below {
                return Ok(None);
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn list(changes: &[Change]) -> Vec<String> {
        changes
            .iter()
            .map(|c| format!("{} {}", c.kind.letter(), c.path.display()))
            .collect()
    }

    fn copy_tree(src: &Path, dst: &Path) {
        crate::layer::copy::copy_tree(src, dst).unwrap();
    }

    #[test]
    fn full_tree_changes_follow_changes_dirs() {
        let parent = tempfile::tempdir().unwrap();
        let p = parent.path();
        fs::create_dir_all(p.join("etc/sub")).unwrap();
        fs::write(p.join("etc/keep"), b"same").unwrap();
        fs::write(p.join("etc/edit"), b"old").unwrap();
        fs::write(p.join("etc/gone"), b"x").unwrap();
        fs::create_dir_all(p.join("var/cache")).unwrap();
        fs::write(p.join("var/cache/a"), b"a").unwrap();
        fs::write(p.join("var/cache/b"), b"b").unwrap();
        fs::create_dir_all(p.join("untouched")).unwrap();
        fs::create_dir_all(p.join("emptied")).unwrap();
        fs::write(p.join("emptied/only"), b"").unwrap();
        symlink("target-a", p.join("link")).unwrap();
        fs::write(p.join("becomes-dir"), b"").unwrap();

        let layer = tempfile::tempdir().unwrap();
        let l = layer.path();
        copy_tree(p, l);
        std::thread::sleep(std::time::Duration::from_millis(5));
        fs::write(l.join("etc/edit"), b"new").unwrap();
        fs::remove_file(l.join("etc/gone")).unwrap();
        fs::write(l.join("etc/sub/added"), b"+").unwrap();
        fs::remove_dir_all(l.join("var/cache")).unwrap();
        fs::create_dir(l.join("var/cache")).unwrap();
        fs::write(l.join("var/cache/c"), b"c").unwrap();
        fs::remove_file(l.join("emptied/only")).unwrap();
        fs::remove_file(l.join("link")).unwrap();
        symlink("target-b", l.join("link")).unwrap();
        fs::remove_file(l.join("becomes-dir")).unwrap();
        fs::create_dir(l.join("becomes-dir")).unwrap();
        fs::write(l.join("becomes-dir/inner"), b"").unwrap();

        let changes = between(l, Some(p)).unwrap();
        assert_eq!(
            list(&changes),
            [
                "C /becomes-dir",
                "A /becomes-dir/inner",
                "C /emptied",
                "D /emptied/only",
                "C /etc",
                "C /etc/edit",
                "D /etc/gone",
                "C /etc/sub",
                "A /etc/sub/added",
                "C /link",
                "C /var",
                "D /var/cache",
                "A /var/cache",
                "A /var/cache/c",
            ]
        );
    }

    #[test]
    fn no_parent_means_everything_added() {
        let layer = tempfile::tempdir().unwrap();
        fs::create_dir(layer.path().join("d")).unwrap();
        fs::write(layer.path().join("d/f"), b"").unwrap();
        assert_eq!(
            list(&between(layer.path(), None).unwrap()),
            ["A /d", "A /d/f"]
        );
    }

    #[test]
    fn identical_trees_have_no_changes() {
        let a = tempfile::tempdir().unwrap();
        fs::create_dir(a.path().join("d")).unwrap();
        fs::write(a.path().join("d/f"), b"data").unwrap();
        let b = tempfile::tempdir().unwrap();
        copy_tree(a.path(), b.path());
        assert!(between(b.path(), Some(a.path())).unwrap().is_empty());
    }

    #[test]
    fn aufs_layer_dir_changes() {
        let lower = tempfile::tempdir().unwrap();
        let lo = lower.path();
        fs::create_dir_all(lo.join("etc")).unwrap();
        fs::write(lo.join("etc/passwd"), b"root").unwrap();
        fs::write(lo.join("etc/motd"), b"hi").unwrap();
        fs::create_dir_all(lo.join("opt/app")).unwrap();
        fs::write(lo.join("opt/app/old"), b"").unwrap();
        let upper = tempfile::tempdir().unwrap();
        let up = upper.path();
        fs::create_dir_all(up.join("etc")).unwrap();
        fs::write(up.join("etc/.wh.motd"), b"").unwrap();
        fs::write(up.join("etc/.wh.never-existed"), b"").unwrap();
        fs::write(up.join("etc/new"), b"n").unwrap();
        fs::create_dir_all(up.join("opt/app")).unwrap();
        fs::write(up.join("opt/app/.wh..wh..opq"), b"").unwrap();
        fs::write(up.join("opt/app/fresh"), b"").unwrap();
        fs::create_dir_all(up.join(".wh..wh.plnk")).unwrap();
        let changes = in_layer_dir(up, WhiteoutFormat::Aufs, &[lo]).unwrap();
        assert_eq!(
            list(&changes),
            [
                "C /etc",
                "D /etc/motd",
                "A /etc/new",
                "C /opt",
                "D /opt/app",
                "A /opt/app",
                "A /opt/app/fresh",
            ]
        );
    }

    #[test]
    fn lower_whiteouts_hide_paths() {
        // Lower 1 (nearest) deletes /a/f that lower 2 has: an upper /a/f is
        // an addition, not a modification.
        let l2 = tempfile::tempdir().unwrap();
        fs::create_dir(l2.path().join("a")).unwrap();
        fs::write(l2.path().join("a/f"), b"old").unwrap();
        let l1 = tempfile::tempdir().unwrap();
        fs::create_dir(l1.path().join("a")).unwrap();
        fs::write(l1.path().join("a/.wh.f"), b"").unwrap();
        let up = tempfile::tempdir().unwrap();
        fs::create_dir(up.path().join("a")).unwrap();
        fs::write(up.path().join("a/f"), b"new").unwrap();
        let changes =
            in_layer_dir(up.path(), WhiteoutFormat::Aufs, &[l1.path(), l2.path()]).unwrap();
        assert_eq!(list(&changes), ["C /a", "A /a/f"]);
    }
}
