//! `thinsnap fsck`: compares what the thin pool holds with what the
//! metadata directory says and lists what a crash, a bug or a hand left
//! behind. Nothing changes unless repair is asked for.
//!
//! The check itself ([`analyse`]) is a pure function of [`Facts`], so every
//! rule is unit-tested without a pool; [`inspect`] gathers the facts without
//! touching the metadata (it may bring the pool up, as any start does), and
//! [`repair`] fixes each finding, then inspects again.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::deviceset::{DeviceSet, docker_prefix};
use super::error::DevmapperError;
use super::options::DmStoreOptions;
use crate::backend::shared::mounts;
use crate::dm::{self, DmControl};
use crate::fsutil;
use crate::metadata::store::{BrokenFile, MetadataStore};
use crate::metadata::types::{DevInfo, Transaction};

type Res<T> = Result<T, DevmapperError>;

/// Unreadable device files are moved here: out of service (dot-directory,
/// never loaded) but kept for whoever wants to recover them by hand.
pub const QUARANTINE_DIR: &str = ".quarantine";

/// Everything the check needs, read from the pool, the kernel and the
/// metadata directory.
#[derive(Debug, Clone, Default)]
pub struct Facts {
    pub pool: String,
    pub pool_tid: u64,
    /// Thin ids the pool holds (its own metadata, via a metadata snapshot).
    pub thin_ids: BTreeSet<u32>,
    /// Readable device files by hash (`""` = base).
    pub devices: BTreeMap<String, DevInfo>,
    pub broken: Vec<BrokenFile>,
    pub transaction: Option<Transaction>,
    pub stray_temp: Vec<PathBuf>,
    /// Active dm devices named with this store's prefix (not the pool),
    /// as (name, hash it stands for).
    pub active: Vec<(String, String)>,
    /// Mount points below `mnt/`, as (path, directory name).
    pub mounts: Vec<(PathBuf, String)>,
    /// Files already quarantined by an earlier repair.
    pub quarantined: usize,
}

/// One problem and what `--repair` does about it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Problem {
    /// transaction-metadata names a transaction the pool never closed.
    StaleTransaction {
        open: u64,
        pool: u64,
        device: String,
        thin_id: u32,
    },
    /// A thin id in the pool that no device file owns (space nobody frees).
    OrphanThinId { thin_id: u32 },
    /// A device file whose thin id the pool does not have.
    MissingThinId { device: String, thin_id: u32 },
    /// A device file that cannot be read.
    UnreadableFile { path: PathBuf, error: String },
    /// A temp file an interrupted atomic write left behind.
    StrayTempFile { path: PathBuf },
    /// A mount below mnt/ of no live device.
    LeakedMount { path: PathBuf },
    /// An active dm device of no live device.
    LeakedDevice { name: String },
    /// A device marked for deferred deletion and not yet deleted.
    PendingDeletion { device: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    #[serde(flatten)]
    pub problem: Problem,
    /// One sentence for the admin.
    pub message: String,
    /// What `--repair` does.
    pub repair: String,
    /// Why `--repair` will not touch it now (it would risk data).
    pub held_back: Option<String>,
}

fn shown(hash: &str) -> &str {
    if hash.is_empty() { "base" } else { hash }
}

/// The check: every finding in a stable order.
pub fn analyse(f: &Facts) -> Vec<Finding> {
    let mut out = Vec::new();
    let stale = f
        .transaction
        .as_ref()
        .filter(|t| t.open_transaction_id > f.pool_tid);
    if let Some(t) = stale {
        out.push(Finding {
            problem: Problem::StaleTransaction {
                open: t.open_transaction_id,
                pool: f.pool_tid,
                device: t.device_hash.clone(),
                thin_id: t.device_id,
            },
            message: format!(
                "transaction {} was opened for device {} (thin id {}) but the pool is still at {}: an operation stopped half-way",
                t.open_transaction_id,
                shown(&t.device_hash),
                t.device_id,
                f.pool_tid
            ),
            repair: format!(
                "roll back as Docker does: delete thin id {} from the pool and the device's file",
                t.device_id
            ),
            held_back: None,
        });
    }
    for b in &f.broken {
        out.push(Finding {
            problem: Problem::UnreadableFile {
                path: b.path.clone(),
                error: b.error.clone(),
            },
            message: format!(
                "device file {} is unreadable ({}); the device is out of service",
                b.path.display(),
                b.error
            ),
            repair: format!(
                "move it to {}/ (kept for recovery by hand); its thin id then shows as an orphan",
                QUARANTINE_DIR
            ),
            held_back: None,
        });
    }
    let owned: BTreeSet<u32> = f.devices.values().map(|d| d.device_id).collect();
    let rolled_back = stale.map(|t| t.device_id);
    let stale_hash = stale.map(|t| t.device_hash.as_str());
    for &id in &f.thin_ids {
        if owned.contains(&id) || rolled_back == Some(id) {
            continue;
        }
        out.push(Finding {
            problem: Problem::OrphanThinId { thin_id: id },
            message: format!(
                "thin id {id} is in pool {} but no device file owns it: its blocks are never freed",
                f.pool
            ),
            repair: format!("delete thin id {id} from the pool (in a transaction)"),
            held_back: (!f.broken.is_empty()).then(|| {
                format!(
                    "{} unreadable device file(s) may own it; repair moves them aside first, then run fsck --repair again to delete it",
                    f.broken.len()
                )
            }),
        });
    }
    for (hash, d) in &f.devices {
        if f.thin_ids.contains(&d.device_id) || stale_hash == Some(hash.as_str()) {
            continue;
        }
        out.push(Finding {
            problem: Problem::MissingThinId {
                device: hash.clone(),
                thin_id: d.device_id,
            },
            message: format!(
                "device {} names thin id {} which pool {} does not have: its data is gone",
                shown(hash),
                d.device_id,
                f.pool
            ),
            repair: "remove the device's file and layer record".to_string(),
            held_back: hash.is_empty().then(|| {
                "it is the base device every layer descends from: recreate the store".to_string()
            }),
        });
    }
    for p in &f.stray_temp {
        out.push(Finding {
            problem: Problem::StrayTempFile { path: p.clone() },
            message: format!("{} is a temp file an interrupted write left", p.display()),
            repair: "delete it".to_string(),
            held_back: None,
        });
    }
    let live = |hash: &str| f.devices.get(hash).is_some_and(|d| !d.deleted);
    for (path, name) in &f.mounts {
        if live(name) {
            continue;
        }
        out.push(Finding {
            problem: Problem::LeakedMount { path: path.clone() },
            message: format!(
                "{} is mounted but {name} is no live device of this store",
                path.display()
            ),
            repair: "unmount it and remove the directory".to_string(),
            held_back: None,
        });
    }
    for (name, hash) in &f.active {
        if live(hash) || f.devices.get(hash).is_some_and(|d| d.deleted) {
            continue;
        }
        out.push(Finding {
            problem: Problem::LeakedDevice { name: name.clone() },
            message: format!("dm device {name} is active but belongs to no device of this store"),
            repair: "deactivate it".to_string(),
            held_back: None,
        });
    }
    for (hash, d) in &f.devices {
        if d.deleted {
            out.push(Finding {
                problem: Problem::PendingDeletion {
                    device: hash.clone(),
                },
                message: format!(
                    "device {} is marked for deferred deletion and still in the pool",
                    shown(hash)
                ),
                repair: "retry the deletion (it stays pending while the device is busy)"
                    .to_string(),
                held_back: None,
            });
        }
    }
    out
}

/// True when `dir` holds a devicemapper store (never creates one).
fn store_exists(root: &Path) -> bool {
    root.join("devicemapper/metadata/base").exists()
}

/// Gathers the facts. Changes no metadata; brings the pool up if it is
/// down (as a start would), so thin ids can be read from it.
pub fn inspect(root: &Path, opts: &DmStoreOptions) -> Res<Facts> {
    if !store_exists(root) {
        return Err(DevmapperError::Other(format!(
            "no devicemapper store under {} (devicemapper/metadata/base is missing)",
            root.display()
        )));
    }
    let ctl = DmControl::open()?;
    let home = root.join("devicemapper");
    let prefix = docker_prefix(&home)?;
    let loopback =
        opts.thin_pool_device.is_none() && opts.data_device.is_none() && opts.direct_lvm.is_none();
    // An active pool with a missing file gets the detailed message (where
    // the loop device reads it from now) from bring_up_pool.
    if loopback && ctl.info(&format!("{prefix}-pool"))?.is_none() {
        for f in ["data", "metadata"] {
            let p = home.join("devicemapper").join(f);
            if !p.exists() {
                return Err(DevmapperError::Other(format!(
                    "the pool's loopback {f} file {} is missing: committed data lives in it; restore it before anything else",
                    p.display()
                )));
            }
        }
    }
    let mut opts = opts.clone();
    if let Some(lvm) = &opts.direct_lvm {
        // Set up already (a no-op then): it names the pool to look at.
        opts.thin_pool_device = Some(super::directlvm::ensure(&home, lvm)?);
    }
    let (pool, _, _, _) = DeviceSet::bring_up_pool(&ctl, &home, &prefix, &opts)?;
    // One metadata snapshot: the ids and the transaction id of one moment.
    let (usage, status) = pool.thin_usage_with_status(&ctl)?;
    let thin_ids = usage.into_iter().map(|u| u.id).collect();
    let store = MetadataStore::open(&home.join("metadata"))?;
    let loaded = store.load_devices()?;
    let transaction = store.load_transaction().unwrap_or(None);
    let ours = format!("{prefix}-");
    let mut active = Vec::new();
    for name in ctl.list()? {
        if name == pool.name {
            continue;
        }
        if let Some(rest) = name.strip_prefix(&ours) {
            let hash = if rest == "base" { "" } else { rest };
            active.push((name.clone(), hash.to_string()));
        }
    }
    let mnt = home.join("mnt");
    let mounts = mounts::mount_points_below(&mnt)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|p| {
            let rel = p.strip_prefix(&mnt).ok()?;
            let first = rel.components().next()?;
            let name = first.as_os_str().to_string_lossy().into_owned();
            Some((p, name))
        })
        .collect();
    let quarantined = fs::read_dir(store.dir().join(QUARANTINE_DIR))
        .map(|d| d.count())
        .unwrap_or(0);
    Ok(Facts {
        pool: pool.name.clone(),
        pool_tid: status.transaction_id,
        thin_ids,
        devices: loaded.devices,
        broken: loaded.broken,
        transaction,
        stray_temp: store.stray_temp_files(),
        active,
        mounts,
        quarantined,
    })
}

/// What `repair` did with one finding.
#[derive(Debug, Clone, Serialize)]
pub struct Action {
    pub finding: Finding,
    pub done: bool,
    pub detail: String,
}

/// Repairs every finding that is not held back, then inspects again.
/// Returns what was done and what the second look still finds.
pub fn repair(root: &Path, opts: &DmStoreOptions) -> Res<(Vec<Action>, Vec<Finding>)> {
    let facts = inspect(root, opts)?;
    let findings = analyse(&facts);
    let home = root.join("devicemapper");
    let store = MetadataStore::open(&home.join("metadata"))?;
    let mut actions = Vec::new();
    let mut record = |finding: &Finding, r: Res<String>| {
        let (done, detail) = match r {
            Ok(d) => (true, d),
            Err(e) => (false, e.to_string()),
        };
        actions.push(Action {
            finding: finding.clone(),
            done,
            detail,
        });
    };
    // Files first, before the store opens: a temp file or an unreadable
    // device file must not take part in the start-up.
    for f in &findings {
        match &f.problem {
            Problem::StrayTempFile { path } => record(
                f,
                fsutil::remove_durable(path)
                    .map(|_| "deleted".to_string())
                    .map_err(|e| DevmapperError::io(format!("removing {}", path.display()), e)),
            ),
            Problem::UnreadableFile { path, .. } => record(f, quarantine(&store, path)),
            _ => {}
        }
    }
    // Opening the store rolls back a stale transaction and retries
    // deferred deletions, exactly as any start does.
    let set = DeviceSet::open(root, opts.clone())?;
    // Mounts before devices before thin ids: each holds the next busy.
    let phase = |p: &Problem| match p {
        Problem::LeakedMount { .. } => 0,
        Problem::LeakedDevice { .. } => 1,
        _ => 2,
    };
    let mut ordered: Vec<&Finding> = findings.iter().collect();
    ordered.sort_by_key(|f| phase(&f.problem));
    for f in ordered {
        if let Some(why) = &f.held_back {
            record(f, Err(DevmapperError::Other(format!("held back: {why}"))));
            continue;
        }
        match &f.problem {
            Problem::StaleTransaction { open, .. } => {
                record(f, Ok(format!("rolled back transaction {open} at start")))
            }
            Problem::PendingDeletion { device } => record(
                f,
                if set.device_info(device).is_some() {
                    Err(DevmapperError::Other(format!(
                        "device {} is still busy; deletion stays pending",
                        shown(device)
                    )))
                } else {
                    Ok("deleted".to_string())
                },
            ),
            Problem::OrphanThinId { thin_id } => record(
                f,
                set.delete_orphan_thin(*thin_id).map(|_| "deleted".into()),
            ),
            Problem::MissingThinId { device, .. } => {
                record(f, set.forget_missing(device).map(|_| "removed".into()))
            }
            Problem::LeakedMount { path } => record(
                f,
                mounts::unmount(path, false)
                    .map_err(|e| {
                        DevmapperError::Other(format!(
                            "unmounting {}: {e}{}",
                            path.display(),
                            holders_of(path)
                        ))
                    })
                    .map(|_| {
                        let _ = fs::remove_dir(path);
                        "unmounted".to_string()
                    }),
            ),
            Problem::LeakedDevice { name } => record(
                f,
                dm::thin::deactivate(set.control(), name, false)
                    .map(|_| "deactivated".to_string())
                    .map_err(Into::into),
            ),
            Problem::StrayTempFile { .. } | Problem::UnreadableFile { .. } => {}
        }
    }
    drop(set);
    let after = analyse(&inspect(root, opts)?);
    Ok((actions, after))
}

fn holders_of(path: &Path) -> String {
    let held = dm::holders::find(dm::DevNo { major: 0, minor: 0 }, &[], Some(path));
    if held.is_empty() {
        String::new()
    } else {
        format!(" (held by {})", held.join("; "))
    }
}

/// Moves an unreadable device file to `metadata/.quarantine/`, durably.
fn quarantine(store: &MetadataStore, path: &Path) -> Res<String> {
    let dir = store.dir().join(QUARANTINE_DIR);
    fsutil::ensure_dir(&dir, 0o700)
        .map_err(|e| DevmapperError::io(format!("creating {}", dir.display()), e))?;
    let Some(name) = path.file_name() else {
        return Err(DevmapperError::Other(format!(
            "{} has no file name",
            path.display()
        )));
    };
    let to = dir.join(name);
    fs::rename(path, &to).map_err(|e| {
        DevmapperError::io(format!("moving {} to {}", path.display(), to.display()), e)
    })?;
    for d in [store.dir(), dir.as_path()] {
        fsutil::fsync_dir(d)
            .map_err(|e| DevmapperError::io(format!("fsync {}", d.display()), e))?;
    }
    Ok(format!("moved to {}", to.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(id: u32) -> DevInfo {
        DevInfo {
            device_id: id,
            size: 1 << 30,
            transaction_id: 1,
            initialized: false,
            deleted: false,
        }
    }

    fn healthy() -> Facts {
        Facts {
            pool: "docker-0:1-2-pool".into(),
            pool_tid: 5,
            thin_ids: [1, 2, 3].into(),
            devices: [
                ("".into(), dev(1)),
                ("a".into(), dev(2)),
                ("b".into(), dev(3)),
            ]
            .into(),
            transaction: Some(Transaction {
                open_transaction_id: 5,
                device_hash: "b".into(),
                device_id: 3,
            }),
            active: vec![("docker-0:1-2-a".into(), "a".into())],
            mounts: vec![(PathBuf::from("/r/devicemapper/mnt/a"), "a".into())],
            ..Facts::default()
        }
    }

    fn kinds(f: &[Finding]) -> Vec<&Problem> {
        f.iter().map(|x| &x.problem).collect()
    }

    #[test]
    fn a_consistent_store_has_no_findings() {
        assert!(analyse(&healthy()).is_empty());
    }

    #[test]
    fn orphan_and_missing_thin_ids_are_found() {
        let mut f = healthy();
        f.thin_ids.insert(9);
        f.thin_ids.remove(&3);
        let found = analyse(&f);
        assert_eq!(
            kinds(&found),
            vec![
                &Problem::OrphanThinId { thin_id: 9 },
                &Problem::MissingThinId {
                    device: "b".into(),
                    thin_id: 3
                }
            ]
        );
        assert!(found.iter().all(|x| x.held_back.is_none()));
    }

    #[test]
    fn a_stale_transaction_covers_its_own_half_made_device() {
        let mut f = healthy();
        f.thin_ids.insert(4);
        f.transaction = Some(Transaction {
            open_transaction_id: 6,
            device_hash: "c".into(),
            device_id: 4,
        });
        // Interrupted create: the thin id exists, the file may or may not.
        let found = analyse(&f);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(matches!(
            found[0].problem,
            Problem::StaleTransaction {
                open: 6,
                pool: 5,
                thin_id: 4,
                ..
            }
        ));
        f.devices.insert("c".into(), dev(4));
        f.thin_ids.remove(&4);
        assert_eq!(analyse(&f).len(), 1);
    }

    #[test]
    fn orphans_are_held_back_while_an_unreadable_file_may_own_them() {
        let mut f = healthy();
        f.thin_ids.insert(7);
        f.broken.push(BrokenFile {
            hash: "x".into(),
            path: "/r/devicemapper/metadata/x".into(),
            error: "EOF while parsing".into(),
        });
        let found = analyse(&f);
        assert!(matches!(found[0].problem, Problem::UnreadableFile { .. }));
        assert!(found[0].held_back.is_none());
        assert!(matches!(
            found[1].problem,
            Problem::OrphanThinId { thin_id: 7 }
        ));
        assert!(
            found[1]
                .held_back
                .as_deref()
                .unwrap()
                .contains("unreadable")
        );
    }

    #[test]
    fn a_missing_base_is_never_repaired_by_forgetting_it() {
        let mut f = healthy();
        f.thin_ids.remove(&1);
        let found = analyse(&f);
        assert!(found[0].held_back.as_deref().unwrap().contains("base"));
    }

    #[test]
    fn leaked_mounts_devices_temp_files_and_pending_deletions() {
        let mut f = healthy();
        f.mounts
            .push((PathBuf::from("/r/devicemapper/mnt/gone"), "gone".into()));
        f.active.push(("docker-0:1-2-gone".into(), "gone".into()));
        f.stray_temp
            .push(PathBuf::from("/r/devicemapper/metadata/.tmp-a-1"));
        f.devices.get_mut("b").unwrap().deleted = true;
        f.mounts
            .push((PathBuf::from("/r/devicemapper/mnt/b"), "b".into()));
        f.active.push(("docker-0:1-2-b".into(), "b".into()));
        let found = analyse(&f);
        let k = kinds(&found);
        assert!(k.contains(&&Problem::LeakedMount {
            path: "/r/devicemapper/mnt/gone".into()
        }));
        assert!(k.contains(&&Problem::LeakedMount {
            path: "/r/devicemapper/mnt/b".into()
        }));
        assert!(k.contains(&&Problem::LeakedDevice {
            name: "docker-0:1-2-gone".into()
        }));
        // An active device marked deleted is a pending deletion, not a leak.
        assert!(!k.contains(&&Problem::LeakedDevice {
            name: "docker-0:1-2-b".into()
        }));
        assert!(k.contains(&&Problem::PendingDeletion { device: "b".into() }));
        assert!(k.contains(&&Problem::StrayTempFile {
            path: "/r/devicemapper/metadata/.tmp-a-1".into()
        }));
        assert_eq!(found.len(), 5, "{found:#?}");
    }

    #[test]
    fn findings_serialise_with_their_kind() {
        let mut f = healthy();
        f.thin_ids.insert(9);
        let j = serde_json::to_value(analyse(&f)).unwrap();
        assert_eq!(j[0]["kind"], "orphan_thin_id");
        assert_eq!(j[0]["thin_id"], 9);
        assert!(j[0]["repair"].as_str().unwrap().contains("delete"));
    }
}
