//! The DeviceSet: a dm-thin pool, its base device and one thin snapshot per
//! layer, kept in Docker's on-disk format.
//!
//! Every pool change follows Docker's transaction protocol: write
//! `transaction-metadata` with `open_transaction_id = pool id + 1`, send
//! the pool message, write or remove the device file, then
//! `set_transaction_id old new`. At start an open id above the pool's is
//! rolled back (delete the thin id, remove its file), which undoes an
//! interrupted create and completes an interrupted delete.
//!
//! Locking: `state` (devices, allocator, pool transaction id, reference
//! counts) is held only for bookkeeping and the short pool transaction;
//! mkfs, mount, filesystem growth and discards run outside it under the
//! layer's own lock.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use nix::errno::Errno;
use nix::mount::MsFlags;
use serde::Serialize;

use super::error::DevmapperError;
use super::fs as thinfs;
use super::options::{DmStoreOptions, Layout, parse_layer_size};
use super::sidecar::{LayerRecord, Sidecar, StoreRecord};
use crate::backend::shared::mounts;
use crate::dm::loopback::{self, Loop};
use crate::dm::{self, DevNo, DmControl, Pool, PoolStatus, PoolTable, ThinId, ThinUsage, devnode};
use crate::failpoint;
use crate::metadata::store::{BrokenFile, RESERVED_NAMES};
use crate::metadata::{DevInfo, DeviceSetMeta, IdAllocator, MetadataStore, Transaction};
use crate::snapshot::{CreateOpts, LayerId};
use crate::units::{Bytes, human_size};

type Res<T> = Result<T, DevmapperError>;

/// Failpoints between the steps of every multi-step operation.
pub const FAILPOINTS: &[&str] = &[
    "devmapper.pool.after_loops",
    "devmapper.pool.after_create",
    "devmapper.base.after_thin",
    "devmapper.base.after_file",
    "devmapper.base.after_mkfs",
    "devmapper.create.after_txn",
    "devmapper.create.after_snap",
    "devmapper.create.after_sidecar",
    "devmapper.create.after_file",
    "devmapper.create.after_commit",
    "devmapper.remove.after_mark",
    "devmapper.remove.after_deactivate",
    "devmapper.remove.after_txn",
    "devmapper.remove.after_delete",
    "devmapper.remove.after_file",
    "devmapper.remove.after_commit",
    "devmapper.activate.after_create",
    "devmapper.get.after_mount",
    "devmapper.put.after_umount",
];

fn fp(name: &'static str) -> Res<()> {
    failpoint::hit(name).map_err(|e| DevmapperError::Other(e.to_string()))
}

/// Where the pool's data and metadata come from.
#[derive(Debug, Clone)]
pub enum PoolSource {
    /// Sparse files on loop devices (Docker's loop-lvm).
    Loopback {
        data_file: PathBuf,
        meta_file: PathBuf,
        data_loop: Loop,
        meta_loop: Loop,
    },
    /// Block devices given with `dm.datadev` / `dm.metadatadev`.
    Devices { data: String, meta: String },
    /// An existing pool (`dm.thinpooldev`), never removed by thinsnap.
    External,
}

/// Mutable bookkeeping, under one short lock.
struct State {
    /// By hash; `""` is the base device. Deleted-marked devices included.
    devices: BTreeMap<String, DevInfo>,
    layers: BTreeMap<String, LayerRecord>,
    broken: Vec<BrokenFile>,
    alloc: IdAllocator,
    pool_tid: u64,
    meta: DeviceSetMeta,
    refs: HashMap<String, u32>,
}

pub struct DeviceSet {
    home: PathBuf,
    opts: DmStoreOptions,
    layout: Layout,
    ctl: DmControl,
    pool: Pool,
    pool_devno: DevNo,
    pool_table: PoolTable,
    prefix: String,
    source: PoolSource,
    /// thinsnap made the pool device (and may remove it on cleanup).
    owns_pool: bool,
    store: MetadataStore,
    side: Sidecar,
    fs: String,
    deferred_removal: bool,
    deferred_deletion: bool,
    state: Mutex<State>,
    locks: Mutex<HashMap<String, Arc<Mutex<()>>>>,
}

/// Docker's device-name prefix `docker-<major>:<minor>-<inode>` from the
/// home directory's stat, with Docker's (old 8/12-bit) split of st_dev.
pub fn docker_prefix(home: &Path) -> Res<String> {
    let m = fs::metadata(home)
        .map_err(|e| DevmapperError::io(format!("stat {}", home.display()), e))?;
    let dev = m.dev();
    let major = (dev >> 8) & 0xfff;
    let minor = (dev & 0xff) | ((dev >> 12) & 0xfff00);
    Ok(format!("docker-{major}:{minor}-{}", m.ino()))
}

/// Report of one thin device for listings and usage.
#[derive(Debug, Clone, Serialize)]
pub struct DeviceReport {
    pub hash: String,
    pub device_id: u32,
    pub size: u64,
    pub transaction_id: u64,
    pub deleted: bool,
    pub parent: Option<String>,
    pub incomplete: bool,
    pub mounted: bool,
}

impl DeviceSet {
    /// Opens the store under `<root>/devicemapper`, creating the pool and
    /// the base device on first use, and recovering from an interrupted run.
    pub fn open(root: &Path, opts: DmStoreOptions) -> Res<DeviceSet> {
        let ctl = DmControl::open()?;
        if ctl.thin_pool_version().is_err() {
            // The target loads on demand on modular kernels.
            let _ = std::process::Command::new("modprobe")
                .arg("dm_thin_pool")
                .output();
            ctl.thin_pool_version()?;
        }
        let mut opts = opts;
        let home = root.join("devicemapper");
        for (dir, mode) in [
            (&home, 0o700),
            (&home.join("metadata"), 0o700),
            (&home.join("mnt"), 0o755),
        ] {
            crate::fsutil::ensure_dir(dir, mode)
                .map_err(|e| DevmapperError::io(format!("creating {}", dir.display()), e))?;
        }
        if let Some(lvm) = &opts.direct_lvm {
            // The pool direct-lvm builds is then adopted like dm.thinpooldev
            // (first use: empty; later: transaction ids must match). Unlike
            // Docker, its layers are not discarded before delete by default
            // (a real device, as with dm.thinpooldev).
            opts.thin_pool_device = Some(super::directlvm::ensure(&home, lvm)?);
        }
        let side = Sidecar::open(&home)?;
        let layout = match (side.load_store()?, opts.layout) {
            (Some(rec), requested) => {
                let stored = if rec.layout == "flat" {
                    Layout::Flat
                } else {
                    Layout::Docker
                };
                if let Some(r) = requested
                    && r != stored
                {
                    return Err(DevmapperError::Other(format!(
                        "this store was created with thinsnap.layout={}; it cannot be changed to {}",
                        stored.as_str(),
                        r.as_str()
                    )));
                }
                stored
            }
            (None, requested) => {
                let l = requested.unwrap_or(Layout::Docker);
                side.save_store(&StoreRecord {
                    layout: l.as_str().to_string(),
                })?;
                l
            }
        };
        let prefix = docker_prefix(&home)?;
        let (pool, mut pool_table, source, owns_pool) =
            Self::setup_pool(&ctl, &home, &prefix, &opts)?;
        if let Some(want) = opts.error_if_no_space
            && pool_table.features.iter().any(|f| f == "error_if_no_space") != want
        {
            // A table reload (the pool stays online) switches the mode.
            pool_table.features.retain(|f| f != "error_if_no_space");
            if want {
                pool_table.features.push("error_if_no_space".into());
            }
            ctl.reload(&pool.name, &[pool_table.line()])?;
            tracing::info!(pool = %pool.name, error_if_no_space = want, "pool no-space mode changed");
        }
        let pool_devno = pool.devno(&ctl)?;
        let store = MetadataStore::open(&home.join("metadata"))?;
        let legacy = home.join("devicemapper").join("json");
        if legacy.exists() {
            let n = store.migrate_legacy(&legacy)?;
            tracing::info!(devices = n, "migrated legacy devicemapper/json metadata");
        }
        let status = pool.status(&ctl)?;
        let mut loaded = store.load_devices()?;
        for b in &loaded.broken {
            tracing::error!(file = %b.path.display(), error = %b.error,
                "device metadata file is unreadable; the device is kept out of service (thinsnap fsck reports it)");
        }
        if let PoolSource::External = source
            && !loaded.devices.contains_key("")
        {
            if status.transaction_id != 0 {
                return Err(DevmapperError::PoolHasTransaction(pool.name.clone()));
            }
            if status.used_data_blocks != 0 {
                return Err(DevmapperError::PoolHasData(pool.name.clone()));
            }
        }
        let (mut layers, broken_side) = side.load_layers();
        for b in broken_side {
            tracing::error!(error = %b, "unreadable thinsnap layer record");
        }
        let pool_tid = Self::process_pending(
            &ctl,
            &pool,
            &prefix,
            &store,
            &side,
            status.transaction_id,
            &mut loaded.devices,
            &mut layers,
        )?;
        let newest_device_tid = loaded
            .devices
            .values()
            .map(|d| d.transaction_id)
            .max()
            .unwrap_or(0);
        if newest_device_tid > pool_tid
            || (pool_tid == 0
                && status.used_data_blocks == 0
                && !loaded.devices.is_empty()
                && owns_pool)
        {
            return Err(DevmapperError::TransactionMismatch {
                pool: pool.name.clone(),
                pool_tid,
                meta_tid: newest_device_tid,
                dir: store.dir().display().to_string(),
            });
        }
        // Records whose device file never made it (a create interrupted
        // between the record and the file) are dropped.
        let orphans: Vec<String> = layers
            .keys()
            .filter(|k| !loaded.devices.contains_key(*k))
            .cloned()
            .collect();
        for o in orphans {
            side.remove_layer(&o)?;
            layers.remove(&o);
        }
        side.compact()?;
        let meta = store.load_deviceset().unwrap_or_else(|e| {
            tracing::warn!(error = %e, "deviceset-metadata unreadable; rebuilding it");
            None
        });
        let meta = meta.unwrap_or_default();
        let mut alloc = IdAllocator::new(meta.next_device_id);
        for d in loaded.devices.values() {
            if let Ok(id) = ThinId::new(d.device_id as u64) {
                alloc.mark_used(id);
            }
        }
        let dr_supported = ctl.supports_deferred_remove();
        if opts.use_deferred_removal == Some(true) && !dr_supported {
            return Err(DevmapperError::Other(
                "Deferred removal can not be enabled as kernel does not support it".into(),
            ));
        }
        let deferred_removal = opts.use_deferred_removal.unwrap_or(dr_supported);
        let deferred_deletion = opts.use_deferred_deletion.unwrap_or(deferred_removal);
        let fs = if !meta.base_device_filesystem.is_empty() {
            meta.base_device_filesystem.clone()
        } else {
            opts.fs
                .clone()
                .unwrap_or_else(|| thinfs::default_fs().to_string())
        };
        let set = DeviceSet {
            home,
            layout,
            ctl,
            pool,
            pool_devno,
            pool_table,
            prefix,
            source,
            owns_pool,
            store,
            side,
            fs,
            deferred_removal,
            deferred_deletion,
            state: Mutex::new(State {
                devices: loaded.devices,
                layers,
                broken: loaded.broken,
                alloc,
                pool_tid,
                meta,
                refs: HashMap::new(),
            }),
            locks: Mutex::new(HashMap::new()),
            opts,
        };
        set.setup_base()?;
        set.adopt_mounts();
        set.retry_deferred_deletions();
        Ok(set)
    }

    /// Brings the pool up (loop devices and table) without reading or
    /// changing any metadata: what `fsck` needs to look at thin ids.
    pub(super) fn bring_up_pool(
        ctl: &DmControl,
        home: &Path,
        prefix: &str,
        opts: &DmStoreOptions,
    ) -> Res<(Pool, PoolTable, PoolSource, bool)> {
        Self::setup_pool(ctl, home, prefix, opts)
    }

    fn setup_pool(
        ctl: &DmControl,
        home: &Path,
        prefix: &str,
        opts: &DmStoreOptions,
    ) -> Res<(Pool, PoolTable, PoolSource, bool)> {
        if let Some(name) = &opts.thin_pool_device {
            let Some((pool, table)) = Pool::open(ctl, name)? else {
                return Err(DevmapperError::Other(format!(
                    "thin pool {name} (dm.thinpooldev) does not exist; create it first (e.g. lvcreate --thinpool) or activate it (lvchange -ay)"
                )));
            };
            return Ok((pool, table, PoolSource::External, false));
        }
        let name = format!("{prefix}-pool");
        let (data, meta, source) = match (&opts.data_device, &opts.metadata_device) {
            (Some(d), Some(m)) => (
                block_devno(Path::new(d))?,
                block_devno(Path::new(m))?,
                PoolSource::Devices {
                    data: d.clone(),
                    meta: m.clone(),
                },
            ),
            (None, None) => {
                let dir = home.join("devicemapper");
                crate::fsutil::ensure_dir(&dir, 0o700)
                    .map_err(|e| DevmapperError::io(format!("creating {}", dir.display()), e))?;
                let data_file = dir.join("data");
                let meta_file = dir.join("metadata");
                let existing = Pool::open(ctl, &name)?;
                if let Some((_, table)) = &existing
                    && (!data_file.exists() || !meta_file.exists())
                {
                    let (what, file, devno) = if data_file.exists() {
                        ("metadata", &meta_file, table.meta)
                    } else {
                        ("data", &data_file, table.data)
                    };
                    let whereabouts = match loopback::backing_of(devno) {
                        Some((dev, b)) if b.ends_with("(deleted)") => format!(
                            "it was deleted, but {} still holds its contents until the pool is released: copy them to safety first (e.g. `cp --sparse=always {} {}.rescued`), then restore the file",
                            dev.display(),
                            dev.display(),
                            file.display()
                        ),
                        Some((dev, b)) => format!(
                            "{} now reads it from {b} (moved): move it back",
                            dev.display()
                        ),
                        None => "committed data lives in it: restore it".to_string(),
                    };
                    return Err(DevmapperError::Other(format!(
                        "pool {name} is active but its loopback {what} file {} is missing: {whereabouts}",
                        file.display()
                    )));
                }
                if existing.is_none() {
                    loopback::ensure_sparse_file(&data_file, opts.loop_data_size)?;
                    loopback::ensure_sparse_file(&meta_file, opts.loop_meta_size)?;
                }
                let data_loop = loopback::attach_or_find(&data_file)?;
                let meta_loop = loopback::attach_or_find(&meta_file)?;
                fp("devmapper.pool.after_loops")?;
                (
                    data_loop.devno,
                    meta_loop.devno,
                    PoolSource::Loopback {
                        data_file,
                        meta_file,
                        data_loop,
                        meta_loop,
                    },
                )
            }
            _ => {
                return Err(DevmapperError::Other(
                    "dm.datadev and dm.metadatadev must be given together".into(),
                ));
            }
        };
        if let Some((pool, table)) = Pool::open(ctl, &name)? {
            if table.data != data || table.meta != meta {
                return Err(DevmapperError::Other(format!(
                    "Unable to find loopback mount for pool {name}: it uses data {} and metadata {}, but this store's devices are {data} and {meta}",
                    table.data, table.meta
                )));
            }
            return Ok((pool, table, source, true));
        }
        let data_len = match &source {
            PoolSource::Loopback { data_loop, .. } => loopback::size(data_loop)?,
            PoolSource::Devices { data, .. } => dm::block::size(Path::new(data))?,
            PoolSource::External => unreachable_source()?,
        };
        let table = PoolTable {
            data_len: data_len.sectors(),
            meta,
            data,
            block_size: opts.block_size,
            low_water_mark: super::options::DEFAULT_LOW_WATER_MARK,
            features: if opts.error_if_no_space == Some(true) {
                vec!["skip_block_zeroing".into(), "error_if_no_space".into()]
            } else {
                vec!["skip_block_zeroing".into()]
            },
        };
        let pool = Pool::create(ctl, &name, &table)?;
        fp("devmapper.pool.after_create")?;
        tracing::info!(pool = %name, "created thin pool");
        Ok((pool, table, source, true))
    }

    /// Rolls back a transaction a crash left open (Docker's protocol).
    #[allow(clippy::too_many_arguments)]
    fn process_pending(
        ctl: &DmControl,
        pool: &Pool,
        prefix: &str,
        store: &MetadataStore,
        side: &Sidecar,
        pool_tid: u64,
        devices: &mut BTreeMap<String, DevInfo>,
        layers: &mut BTreeMap<String, LayerRecord>,
    ) -> Res<u64> {
        let txn = match store.load_transaction() {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(error = %e, "transaction-metadata unreadable; assuming no open transaction");
                None
            }
        };
        let Some(txn) = txn else {
            return Ok(pool_tid);
        };
        // The pool's id only moves after transaction-metadata names the
        // next one, so a pool ahead of it was changed by someone else (or
        // is another pool): Docker only logged this; using the pool would
        // hand out thin ids it may already hold.
        if txn.open_transaction_id < pool_tid {
            return Err(DevmapperError::TransactionMismatch {
                pool: pool.name.clone(),
                pool_tid,
                meta_tid: txn.open_transaction_id,
                dir: store.dir().display().to_string(),
            });
        }
        if txn.open_transaction_id == pool_tid {
            return Ok(pool_tid);
        }
        tracing::warn!(hash = %txn.device_hash, device_id = txn.device_id,
            open = txn.open_transaction_id, pool = pool_tid, "rolling back an interrupted pool transaction");
        let id = ThinId::new(txn.device_id as u64).map_err(|e| {
            DevmapperError::Other(format!("Rolling back open transaction failed: {e}"))
        })?;
        let name = dev_name(prefix, &txn.device_hash);
        if ctl.info(&name)?.is_some() {
            dm::thin::deactivate(ctl, &name, false)?;
        }
        pool.delete(ctl, id).map_err(|e| {
            DevmapperError::Other(format!("Rolling back open transaction failed: {e}"))
        })?;
        store.remove_device(&txn.device_hash)?;
        if !txn.device_hash.is_empty() {
            side.remove_layer(&txn.device_hash)?;
        }
        devices.remove(&txn.device_hash);
        layers.remove(&txn.device_hash);
        store.remove_transaction()?;
        Ok(pool_tid)
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The per-layer lock (slow work on one layer never blocks others).
    fn layer_lock(&self, hash: &str) -> Arc<Mutex<()>> {
        let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        locks.entry(hash.to_string()).or_default().clone()
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    pub fn control(&self) -> &DmControl {
        &self.ctl
    }

    pub fn home(&self) -> &Path {
        &self.home
    }

    pub fn layout(&self) -> Layout {
        self.layout
    }

    pub fn filesystem(&self) -> &str {
        &self.fs
    }

    pub fn source(&self) -> &PoolSource {
        &self.source
    }

    pub fn options(&self) -> &DmStoreOptions {
        &self.opts
    }

    pub fn block_size(&self) -> Bytes {
        self.pool_table.block_size.bytes()
    }

    pub fn deferred(&self) -> (bool, bool) {
        (self.deferred_removal, self.deferred_deletion)
    }

    /// The dm name of a device (`<prefix>-<hash>`, `<prefix>-base`).
    pub fn device_name(&self, hash: &str) -> String {
        dev_name(&self.prefix, hash)
    }

    pub fn pool_status(&self) -> Res<PoolStatus> {
        Ok(self.pool.status(&self.ctl)?)
    }

    /// Per-device usage from the pool's metadata (thin_ls on a metadata snapshot).
    pub fn thin_usage(&self) -> Res<Vec<ThinUsage>> {
        Ok(self.pool.thin_usage(&self.ctl)?)
    }

    pub fn broken_files(&self) -> Vec<BrokenFile> {
        self.state().broken.clone()
    }

    pub fn pool_transaction_id(&self) -> u64 {
        self.state().pool_tid
    }

    /// Devices marked for deferred deletion.
    pub fn deleted_count(&self) -> usize {
        self.state().devices.values().filter(|d| d.deleted).count()
    }

    /// Layers in service (not the base, not marked deleted), without
    /// building a report per device: status stays flat as the pool grows.
    pub fn live_layer_count(&self) -> usize {
        self.state()
            .devices
            .iter()
            .filter(|(h, d)| !h.is_empty() && !d.deleted)
            .count()
    }

    pub fn base_size(&self) -> u64 {
        self.state().devices.get("").map(|d| d.size).unwrap_or(0)
    }

    /// Every device (base included as `""`), for reports and fsck.
    pub fn devices(&self) -> Vec<DeviceReport> {
        let st = self.state();
        st.devices
            .iter()
            .map(|(hash, d)| {
                let rec = st.layers.get(hash);
                DeviceReport {
                    hash: hash.clone(),
                    device_id: d.device_id,
                    size: d.size,
                    transaction_id: d.transaction_id,
                    deleted: d.deleted,
                    parent: rec.and_then(|r| r.parent.as_ref().map(|p| p.to_string())),
                    incomplete: rec.is_some_and(|r| r.incomplete),
                    mounted: st.refs.get(hash).copied().unwrap_or(0) > 0,
                }
            })
            .collect()
    }

    pub fn device_info(&self, hash: &str) -> Option<DevInfo> {
        self.state().devices.get(hash).copied()
    }

    pub fn layer_record(&self, hash: &str) -> Option<LayerRecord> {
        self.state().layers.get(hash).cloned()
    }

    pub fn refs(&self, hash: &str) -> u32 {
        self.state().refs.get(hash).copied().unwrap_or(0)
    }

    /// Is the layer known (deleted-marked devices excluded)?
    pub fn has_device(&self, hash: &str) -> bool {
        self.state().devices.get(hash).is_some_and(|d| !d.deleted)
    }

    pub fn children_of(&self, hash: &str) -> Vec<String> {
        children_in(&self.state(), hash)
    }

    // ---- transactions ------------------------------------------------

    fn open_transaction(&self, st: &mut State, hash: &str, id: ThinId) -> Res<u64> {
        let _span = tracing::debug_span!("open_transaction", id = hash).entered();
        let open = st.pool_tid + 1;
        self.store.save_transaction(&Transaction {
            open_transaction_id: open,
            device_hash: hash.to_string(),
            device_id: id.get(),
        })?;
        Ok(open)
    }

    fn close_transaction(&self, st: &mut State, open: u64) -> Res<()> {
        let _span = tracing::debug_span!("close_transaction", open).entered();
        self.pool
            .set_transaction_id(&self.ctl, st.pool_tid, open)
            .map_err(|e| {
                DevmapperError::Other(format!("Error setting devmapper transaction ID: {e}"))
            })?;
        st.pool_tid = open;
        Ok(())
    }

    /// Sends `create` (create_thin or create_snap) for a new device `hash`,
    /// retrying with the next id when the pool already has one (EEXIST).
    fn create_in_pool(
        &self,
        st: &mut State,
        hash: &str,
        mut create: impl FnMut(ThinId) -> Result<(), dm::DmError>,
        after_txn: &'static str,
    ) -> Res<(ThinId, u64)> {
        loop {
            let id = st.alloc.allocate().ok_or(DevmapperError::NoFreeId)?;
            let open = match self.open_transaction(st, hash, id) {
                Ok(o) => o,
                Err(e) => {
                    st.alloc.free(id);
                    return Err(e);
                }
            };
            fp(after_txn)?;
            match create(id) {
                Ok(()) => return Ok((id, open)),
                Err(e) if e.errno() == Some(Errno::EEXIST) => {
                    // The id stays marked used: something in the pool has it.
                    tracing::warn!(
                        device_id = id.get(),
                        "Device ID exists in pool but it is supposed to be unused; trying the next one"
                    );
                    continue;
                }
                Err(e) => {
                    st.alloc.free(id);
                    return Err(e.into());
                }
            }
        }
    }

    /// Undo for a device created in the pool whose registration failed.
    fn undo_create(&self, st: &mut State, hash: &str, id: ThinId) {
        if let Err(e) = self.pool.delete(&self.ctl, id) {
            tracing::error!(device_id = id.get(), error = %e, "could not delete half-created thin device; it is rolled back at next start");
            return;
        }
        let _ = self.store.remove_device(hash);
        if !hash.is_empty() {
            let _ = self.side.remove_layer(hash);
        }
        st.alloc.free(id);
    }

    // ---- base device ----------------------------------------------------

    fn setup_base(&self) -> Res<()> {
        let base = self.state().devices.get("").copied();
        match base {
            Some(b) if b.initialized && !b.deleted => self.verify_base(b),
            Some(_) => {
                tracing::warn!("base device is uninitialized or marked deleted; recreating it");
                self.delete_device("", true)?;
                self.create_base()
            }
            None => self.create_base(),
        }
    }

    fn create_base(&self) -> Res<()> {
        let _span = tracing::info_span!("create_base", pool = %self.pool.name).entered();
        let size = self.opts.base_size;
        let (id, info) = {
            let mut st = self.state();
            let (id, open) = self.create_in_pool(
                &mut st,
                "",
                |id| self.pool.create_thin(&self.ctl, id),
                "devmapper.create.after_txn",
            )?;
            fp("devmapper.base.after_thin")?;
            let info = DevInfo {
                device_id: id.get(),
                size: size.0,
                transaction_id: open,
                initialized: false,
                deleted: false,
            };
            if let Err(e) = self.store.save_device("", &info) {
                self.undo_create(&mut st, "", id);
                return Err(e.into());
            }
            fp("devmapper.base.after_file")?;
            if let Err(e) = self.close_transaction(&mut st, open) {
                self.undo_create(&mut st, "", id);
                return Err(e);
            }
            st.devices.insert(String::new(), info);
            (id, info)
        };
        let _ = id;
        let dev = self.activate("", &info)?;
        let made = (|| {
            let task = crate::progress::task(
                &format!(
                    "making the {} filesystem of the base device ({})",
                    self.fs,
                    human_size(size.0)
                ),
                None,
            );
            thinfs::mkfs(&self.fs, &dev, &self.opts.mkfs_args)?;
            task.finish("base device filesystem made");
            fp("devmapper.base.after_mkfs")?;
            if self.layout == Layout::Flat {
                self.with_temp_mount("", &dev, |mp| {
                    let lf = mp.join("lost+found");
                    if lf.exists() {
                        fs::remove_dir(&lf).map_err(|e| {
                            DevmapperError::io(format!("removing {}", lf.display()), e)
                        })?;
                    }
                    Ok(())
                })?;
            }
            thinfs::uuid(&dev)
        })();
        let uuid = match made {
            Ok(u) => u,
            Err(e) => {
                let _ = self.deactivate("");
                return Err(e);
            }
        };
        {
            let mut st = self.state();
            let done = DevInfo {
                initialized: true,
                ..info
            };
            self.store.save_device("", &done)?;
            st.devices.insert(String::new(), done);
            st.meta.base_device_uuid = uuid;
            st.meta.base_device_filesystem = self.fs.clone();
            st.meta.next_device_id = st.alloc.next_device_id();
            self.store.save_deviceset(&st.meta)?;
        }
        self.deactivate("")
    }

    fn verify_base(&self, base: DevInfo) -> Res<()> {
        let dev = self.activate("", &base)?;
        let checked = (|| {
            let current = thinfs::uuid(&dev)?;
            let mut st = self.state();
            if st.meta.base_device_uuid.is_empty() {
                st.meta.base_device_uuid = current;
                st.meta.next_device_id = st.alloc.next_device_id();
                self.store.save_deviceset(&st.meta)?;
            } else if st.meta.base_device_uuid != current {
                return Err(DevmapperError::UuidMismatch {
                    current,
                    stored: st.meta.base_device_uuid.clone(),
                });
            }
            if st.meta.base_device_filesystem.is_empty() {
                st.meta.base_device_filesystem =
                    thinfs::probe(&dev)?.unwrap_or("unknown").to_string();
                self.store.save_deviceset(&st.meta)?;
            }
            if let Some(fs) = &self.opts.fs
                && *fs != st.meta.base_device_filesystem
            {
                tracing::warn!(requested = %fs, existing = %st.meta.base_device_filesystem,
                    "dm.fs differs from the existing base device's filesystem; the base's wins");
            }
            Ok(())
        })();
        let grown = checked.and_then(|_| {
            if !self.opts.user_base_size || self.opts.base_size.0 == base.size {
                return Ok(());
            }
            if self.opts.base_size.0 < base.size {
                return Err(DevmapperError::BaseShrink(human_size(base.size)));
            }
            self.grow_device("", base, self.opts.base_size)
        });
        let deactivated = self.deactivate("");
        grown?;
        deactivated
    }

    /// Grows device `hash` and its filesystem to `size`: the filesystem
    /// first (on the device activated at the new length), the recorded size
    /// last, so a crash in between only repeats the (idempotent) growth.
    fn grow_device(&self, hash: &str, info: DevInfo, size: Bytes) -> Res<()> {
        let name = self.device_name(hash);
        if self.ctl.info(&name)?.is_some() {
            dm::thin::deactivate(&self.ctl, &name, false)?;
        }
        let bigger = DevInfo {
            size: size.0,
            ..info
        };
        let dev = self.activate(hash, &bigger)?;
        self.with_temp_mount(hash, &dev, |mp| thinfs::grow(&self.fs, &dev, mp))?;
        let mut st = self.state();
        self.store.save_device(hash, &bigger)?;
        st.devices.insert(hash.to_string(), bigger);
        Ok(())
    }

    /// Mounts `dev` on a private temp mountpoint for `f`, then unmounts.
    fn with_temp_mount<T>(
        &self,
        hash: &str,
        dev: &Path,
        f: impl FnOnce(&Path) -> Res<T>,
    ) -> Res<T> {
        let mp = self.home.join("thinsnap").join(format!(
            "tmpmnt-{}",
            if hash.is_empty() { "base" } else { hash }
        ));
        let _ = fs::create_dir_all(&mp);
        let opts = thinfs::mount_options(&self.fs, &self.opts.mount_opts, None);
        nix::mount::mount(
            Some(dev),
            &mp,
            Some(self.fs.as_str()),
            MsFlags::empty(),
            Some(opts.as_str()),
        )
        .map_err(|e| {
            DevmapperError::io(
                format!("mounting {} on {}", dev.display(), mp.display()),
                e.into(),
            )
        })?;
        let result = f(&mp);
        let _ =
            nix::unistd::syncfs(fs::File::open(&mp).map_err(|e| DevmapperError::io("open", e))?);
        mounts::unmount(&mp, false)
            .map_err(|e| DevmapperError::io(format!("unmounting {}", mp.display()), e))?;
        let _ = fs::remove_dir(&mp);
        result
    }

    // ---- activation -------------------------------------------------------

    /// Activates `hash` (if not active) and returns its `/dev/mapper` node.
    fn activate(&self, hash: &str, info: &DevInfo) -> Res<PathBuf> {
        if info.deleted {
            return Err(DevmapperError::Other(format!(
                "Can't activate device {} as it is marked for deletion",
                display_hash(hash)
            )));
        }
        let name = self.device_name(hash);
        if let Some(st) = self.ctl.info(&name)? {
            if st.deferred_remove {
                self.ctl.cancel_deferred_remove(&name)?;
            }
            return Ok(devnode::ensure(&name, st.devno)?);
        }
        let id =
            ThinId::new(info.device_id as u64).map_err(|e| DevmapperError::Other(e.to_string()))?;
        let _span = tracing::debug_span!("activate", id = hash).entered();
        let devno = dm::thin::activate(
            &self.ctl,
            &name,
            self.pool_devno,
            id,
            Bytes(info.size).sectors(),
        )
        .map_err(|e| {
            DevmapperError::Other(format!(
                "Error activating devmapper device for '{}': {e}",
                display_hash(hash)
            ))
        })?;
        fp("devmapper.activate.after_create")?;
        Ok(devnode::ensure(&name, devno)?)
    }

    fn deactivate(&self, hash: &str) -> Res<()> {
        let name = self.device_name(hash);
        dm::thin::deactivate(&self.ctl, &name, self.deferred_removal).map_err(|e| {
            if e.errno() == Some(Errno::EBUSY) {
                DevmapperError::Busy {
                    id: display_hash(hash).to_string(),
                    detail: format!("Device is Busy: {name}{}", self.holders_suffix(hash)),
                }
            } else {
                e.into()
            }
        })
    }

    /// Busy for a remove, naming who holds the device where it can be found.
    fn remove_busy(&self, hash: &str) -> DevmapperError {
        DevmapperError::Busy {
            id: hash.to_string(),
            detail: format!(
                "failed to remove device {hash}: Device is Busy{}",
                self.holders_suffix(hash)
            ),
        }
    }

    fn holders_suffix(&self, hash: &str) -> String {
        let name = self.device_name(hash);
        let Ok(Some(st)) = self.ctl.info(&name) else {
            return String::new();
        };
        let mapper = devnode::path(&name);
        let dmp = devnode::dm_path(st.devno);
        let mp = self.mount_path(hash);
        let holders = dm::holders::find(st.devno, &[mapper.as_path(), dmp.as_path()], Some(&mp));
        if holders.is_empty() {
            String::new()
        } else {
            format!(" ({})", holders.join("; "))
        }
    }

    // ---- layers -----------------------------------------------------------

    fn mount_path(&self, hash: &str) -> PathBuf {
        self.home.join("mnt").join(hash)
    }

    /// The path `get` returns for a mounted layer.
    pub fn layer_root(&self, hash: &str) -> PathBuf {
        match self.layout {
            Layout::Docker => self.mount_path(hash).join("rootfs"),
            Layout::Flat => self.mount_path(hash),
        }
    }

    /// Checks an id can name a device here (reserved file names, dm name length).
    pub fn check_new_id(&self, id: &LayerId) -> Res<()> {
        let s = id.as_str();
        if RESERVED_NAMES.contains(&s) || s.ends_with(".migrated") {
            return Err(DevmapperError::Other(format!(
                "layer id {s:?} is reserved by the devicemapper store"
            )));
        }
        dm::control::dm_name(&self.device_name(s))?;
        Ok(())
    }

    /// Creates layer `id` as a thin snapshot of `parent` (the base device
    /// when `None`).
    pub fn create(&self, id: &LayerId, parent: Option<&LayerId>, opts: &CreateOpts) -> Res<()> {
        self.check_new_id(id)?;
        let requested = parse_layer_size(&opts.storage_opt)?;
        let hash = id.as_str();
        let parent_hash = parent.map(|p| p.as_str()).unwrap_or("");
        let _span = tracing::info_span!("create", id = hash, parent = parent_hash).entered();
        let parent_lock = self.layer_lock(parent_hash);
        let _pg = parent_lock.lock().unwrap_or_else(|p| p.into_inner());
        let own_lock = self.layer_lock(hash);
        let _og = own_lock.lock().unwrap_or_else(|p| p.into_inner());

        let (info, grow_to) = {
            let mut st = self.state();
            if let Some(d) = st.devices.get(hash) {
                return Err(DevmapperError::AlreadyExists {
                    id: hash.to_string(),
                    deleted: d.deleted,
                });
            }
            let Some(origin) = st.devices.get(parent_hash).copied() else {
                return Err(DevmapperError::UnknownDevice(parent_hash.to_string()));
            };
            if origin.deleted {
                return Err(DevmapperError::Other(format!(
                    "Base device {} has been marked for deferred deletion",
                    display_hash(parent_hash)
                )));
            }
            if st.layers.get(parent_hash).is_some_and(|r| r.incomplete) {
                return Err(DevmapperError::Incomplete(parent_hash.to_string()));
            }
            let size = match requested {
                Some(s) if s.0 < origin.size => {
                    return Err(DevmapperError::LayerShrink(human_size(origin.size)));
                }
                Some(s) => s.0,
                None => origin.size,
            };
            self.check_free_space()?;
            let origin_id = ThinId::new(origin.device_id as u64)
                .map_err(|e| DevmapperError::Other(e.to_string()))?;
            let origin_name = self.device_name(parent_hash);
            let origin_active = match self.ctl.info(&origin_name)? {
                Some(s) if s.deferred_remove => {
                    self.ctl.cancel_deferred_remove(&origin_name)?;
                    true
                }
                Some(_) => true,
                None => false,
            };
            let (new_id, open) = self.create_in_pool(
                &mut st,
                hash,
                |new_id| {
                    if origin_active {
                        // The kernel needs a stable origin while it snapshots it.
                        self.ctl.suspend(&origin_name)?;
                        let r = self.pool.create_snap(&self.ctl, new_id, origin_id);
                        let resumed = self.ctl.resume(&origin_name);
                        r.and(resumed)
                    } else {
                        self.pool.create_snap(&self.ctl, new_id, origin_id)
                    }
                },
                "devmapper.create.after_txn",
            )?;
            fp("devmapper.create.after_snap")?;
            let grow = size > origin.size;
            let record = LayerRecord {
                parent: parent.cloned(),
                incomplete: grow,
            };
            let info = DevInfo {
                device_id: new_id.get(),
                size,
                transaction_id: open,
                initialized: false,
                deleted: false,
            };
            let registered = self
                .side
                .save_layer(hash, &record)
                .and_then(|_| fp("devmapper.create.after_sidecar"))
                .and_then(|_| self.store.save_device(hash, &info).map_err(Into::into))
                .and_then(|_| fp("devmapper.create.after_file"))
                .and_then(|_| self.close_transaction(&mut st, open));
            if let Err(e) = registered {
                self.undo_create(&mut st, hash, new_id);
                return Err(e);
            }
            fp("devmapper.create.after_commit")?;
            st.devices.insert(hash.to_string(), info);
            st.layers.insert(hash.to_string(), record);
            (info, grow.then_some(Bytes(size)))
        };
        if let Some(size) = grow_to {
            self.grow_device(hash, info, size)?;
            self.deactivate(hash)?;
            self.set_incomplete(hash, false)?;
        }
        Ok(())
    }

    fn check_free_space(&self) -> Res<()> {
        let pct = self.opts.min_free_space_percent as u64;
        if pct == 0 {
            return Ok(());
        }
        let s = self.pool.status(&self.ctl)?;
        let min_data = (s.total_data_blocks * pct / 100).max(1);
        let free_data = s.total_data_blocks.saturating_sub(s.used_data_blocks);
        if free_data < min_data {
            let bs = self.block_size().0;
            return Err(DevmapperError::LowDataSpace {
                free: free_data,
                min: min_data,
                free_bytes: human_size(free_data * bs),
                total_bytes: human_size(s.total_data_blocks * bs),
            });
        }
        let min_meta = (s.total_meta_blocks * pct / 100).max(1);
        let free_meta = s.total_meta_blocks.saturating_sub(s.used_meta_blocks);
        if free_meta < min_meta {
            return Err(DevmapperError::LowMetaSpace {
                free: free_meta,
                min: min_meta,
            });
        }
        Ok(())
    }

    /// Removes layer `hash`: deactivate, delete the thin id, remove the file.
    /// A device the kernel still holds is marked deleted for a later retry
    /// when deferred deletion is on; otherwise the error names the holder.
    pub fn remove(&self, id: &LayerId) -> Res<()> {
        let hash = id.as_str();
        let _span = tracing::info_span!("remove", id = hash).entered();
        let lock = self.layer_lock(hash);
        let _g = lock.lock().unwrap_or_else(|p| p.into_inner());
        {
            let st = self.state();
            match st.devices.get(hash) {
                None => return Err(DevmapperError::UnknownDevice(hash.to_string())),
                Some(d) if d.deleted => return Ok(()),
                Some(_) => {}
            }
            let refs = st.refs.get(hash).copied().unwrap_or(0);
            if refs > 0 || self.remove_mount_dir(hash) {
                return Err(DevmapperError::Busy {
                    id: hash.to_string(),
                    detail: format!(
                        "layer {hash} is mounted ({} reference(s)); unmount it first",
                        refs.max(1)
                    ),
                });
            }
            let children = children_in(&st, hash);
            if !children.is_empty() {
                return Err(DevmapperError::HasChildren {
                    id: hash.to_string(),
                    children,
                });
            }
        }
        self.delete_device(hash, false)?;
        Ok(())
    }

    /// Removes the layer's unused mount point; true when something is
    /// mounted on it. One rmdir answers both (EBUSY on a mount point),
    /// where a mount check and an rmdir took two system calls per remove.
    fn remove_mount_dir(&self, hash: &str) -> bool {
        let mp = self.mount_path(hash);
        match fs::remove_dir(&mp) {
            Ok(()) => false,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
            Err(e) if e.raw_os_error() == Some(Errno::EBUSY as i32) => true,
            // Not empty (or not removable): only a mount makes it busy.
            Err(_) => mounts::is_mount_point(&mp),
        }
    }

    /// The delete half of remove; `sync` ignores deferred deletion.
    fn delete_device(&self, hash: &str, sync: bool) -> Res<()> {
        let Some(info) = self.device_info(hash) else {
            return Ok(());
        };
        let id =
            ThinId::new(info.device_id as u64).map_err(|e| DevmapperError::Other(e.to_string()))?;
        let name = self.device_name(hash);
        let deferred = self.deferred_deletion && !sync;
        let mut active = self.ctl.info(&name)?.is_some();
        if active && !deferred {
            // Refuse a busy device before anything is marked: the layer
            // stays whole and the error names who holds it.
            self.wait_until_closed(hash, &name)?;
        }
        if self.opts.do_blkdiscard() && !info.deleted {
            // Discarding destroys the data, so from here on the removal must
            // finish: the device is durably marked deleted first, and a crash
            // is completed at the next start by the deferred-deletion retry.
            self.mark_deleted(hash, info)?;
            fp("devmapper.remove.after_mark")?;
            if let Ok(dev) = self.activate(hash, &info) {
                active = true;
                if self.ctl.info(&name)?.is_some_and(|s| s.open_count == 0)
                    && let Err(e) = dm::block::discard_all(&dev)
                {
                    tracing::debug!(error = %e, "discard before delete failed (ignored)");
                }
            }
        }
        let deactivated = if active {
            let _span = tracing::debug_span!("deactivate", id = hash).entered();
            dm::thin::deactivate(&self.ctl, &name, deferred)
        } else {
            Ok(())
        };
        if let Err(e) = deactivated {
            if e.errno() == Some(Errno::EBUSY) {
                return Err(self.remove_busy(hash));
            }
            return Err(e.into());
        }
        fp("devmapper.remove.after_deactivate")?;
        let mut st = self.state();
        let open = self.open_transaction(&mut st, hash, id)?;
        fp("devmapper.remove.after_txn")?;
        let deleted = {
            let _span = tracing::debug_span!("pool_delete", id = hash).entered();
            self.pool.delete(&self.ctl, id)
        };
        match deleted {
            Ok(_) => {}
            Err(e) if e.errno() == Some(Errno::EBUSY) && deferred => {
                let marked = DevInfo {
                    deleted: true,
                    ..info
                };
                self.store.save_device(hash, &marked)?;
                st.devices.insert(hash.to_string(), marked);
                self.close_transaction(&mut st, open)?;
                tracing::info!(id = hash, "device busy; marked for deferred deletion");
                return Ok(());
            }
            Err(e) => {
                let busy = e.errno() == Some(Errno::EBUSY);
                self.close_transaction(&mut st, open)?;
                drop(st);
                if busy {
                    return Err(self.remove_busy(hash));
                }
                return Err(e.into());
            }
        }
        fp("devmapper.remove.after_delete")?;
        self.store.remove_device(hash)?;
        fp("devmapper.remove.after_file")?;
        self.close_transaction(&mut st, open)?;
        if !hash.is_empty() {
            // Outside the transaction: a record without a device file is
            // dropped at start.
            self.side.forget_layer(hash);
        }
        fp("devmapper.remove.after_commit")?;
        st.devices.remove(hash);
        st.layers.remove(hash);
        st.refs.remove(hash);
        st.alloc.free(id);
        Ok(())
    }

    /// Deletes a thin id no device file owns (fsck's repair), inside a
    /// pool transaction named after no device, so a crash here is rolled
    /// back like any other.
    pub fn delete_orphan_thin(&self, id: u32) -> Res<()> {
        let thin = ThinId::new(id as u64).map_err(|e| DevmapperError::Other(e.to_string()))?;
        let mut st = self.state();
        if st.devices.values().any(|d| d.device_id == id) {
            return Err(DevmapperError::Other(format!(
                "thin id {id} belongs to a device of this store; not deleting it"
            )));
        }
        // A dot-name: the rollback's removal of "its file" touches nothing.
        let pseudo = format!(".fsck-orphan-{id}");
        let open = self.open_transaction(&mut st, &pseudo, thin)?;
        if let Err(e) = self.pool.delete(&self.ctl, thin) {
            let _ = self.close_transaction(&mut st, open);
            return Err(e.into());
        }
        self.close_transaction(&mut st, open)?;
        st.alloc.free(thin);
        Ok(())
    }

    /// Forgets a device whose thin id the pool does not have (fsck's
    /// repair): its file and layer record go; there is no data to lose.
    pub fn forget_missing(&self, hash: &str) -> Res<()> {
        if hash.is_empty() {
            return Err(DevmapperError::Other(
                "the base device cannot be forgotten; recreate the store".into(),
            ));
        }
        let lock = self.layer_lock(hash);
        let _g = lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut st = self.state();
        let Some(info) = st.devices.get(hash).copied() else {
            return Ok(());
        };
        if self
            .pool
            .thin_usage(&self.ctl)?
            .iter()
            .any(|u| u.id == info.device_id)
        {
            return Err(DevmapperError::Other(format!(
                "device {hash}'s thin id {} is in the pool; not forgetting it",
                info.device_id
            )));
        }
        let name = self.device_name(hash);
        if self.ctl.info(&name)?.is_some() {
            dm::thin::deactivate(&self.ctl, &name, false)?;
        }
        self.store.remove_device(hash)?;
        self.side.remove_layer(hash)?;
        st.devices.remove(hash);
        st.layers.remove(hash);
        st.refs.remove(hash);
        Ok(())
    }

    /// Waits up to [`dm::thin::BUSY_WAIT`] for `name` to have no opener
    /// (udev, blkid and the like let go quickly); Busy naming the holders
    /// otherwise.
    fn wait_until_closed(&self, hash: &str, name: &str) -> Res<()> {
        let deadline = std::time::Instant::now() + dm::thin::BUSY_WAIT;
        loop {
            match self.ctl.info(name)? {
                Some(s) if s.open_count > 0 => {}
                _ => return Ok(()),
            }
            if std::time::Instant::now() >= deadline {
                return Err(self.remove_busy(hash));
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }

    /// Durably marks a device deleted: invisible to users from now on, and
    /// deleted from the pool by the next retry if this removal stops.
    fn mark_deleted(&self, hash: &str, info: DevInfo) -> Res<()> {
        let mut st = self.state();
        let marked = DevInfo {
            deleted: true,
            ..info
        };
        self.store.save_device(hash, &marked)?;
        st.devices.insert(hash.to_string(), marked);
        Ok(())
    }

    /// Retries devices marked for deferred deletion; returns how many went.
    pub fn retry_deferred_deletions(&self) -> usize {
        let pending: Vec<String> = self
            .state()
            .devices
            .iter()
            .filter(|(_, d)| d.deleted)
            .map(|(h, _)| h.clone())
            .collect();
        let mut done = 0;
        for hash in pending {
            let lock = self.layer_lock(&hash);
            let _g = lock.lock().unwrap_or_else(|p| p.into_inner());
            match self.delete_marked(&hash) {
                Ok(true) => done += 1,
                Ok(false) => {}
                Err(e) => tracing::warn!(id = %hash, error = %e, "deferred deletion retry failed"),
            }
        }
        done
    }

    fn delete_marked(&self, hash: &str) -> Res<bool> {
        let Some(info) = self.device_info(hash).filter(|d| d.deleted) else {
            return Ok(false);
        };
        let name = self.device_name(hash);
        match self.ctl.info(&name)? {
            // Still held: the deferred remove has not completed.
            Some(s) if s.open_count > 0 => return Ok(false),
            // Left active by a crash between the mark and the delete.
            Some(_) => dm::thin::deactivate(&self.ctl, &name, false)?,
            None => {}
        }
        let id =
            ThinId::new(info.device_id as u64).map_err(|e| DevmapperError::Other(e.to_string()))?;
        let mut st = self.state();
        let open = self.open_transaction(&mut st, hash, id)?;
        let deleted = {
            let _span = tracing::debug_span!("pool_delete", id = hash).entered();
            self.pool.delete(&self.ctl, id)
        };
        match deleted {
            Ok(_) => {}
            Err(e) if e.errno() == Some(Errno::EBUSY) => {
                self.close_transaction(&mut st, open)?;
                return Ok(false);
            }
            Err(e) => {
                self.close_transaction(&mut st, open)?;
                return Err(e.into());
            }
        }
        self.store.remove_device(hash)?;
        if !hash.is_empty() {
            self.side.remove_layer(hash)?;
        }
        self.close_transaction(&mut st, open)?;
        st.devices.remove(hash);
        st.layers.remove(hash);
        st.alloc.free(id);
        Ok(true)
    }

    /// Durably marks a layer incomplete (or clears the mark).
    pub fn set_incomplete(&self, hash: &str, incomplete: bool) -> Res<()> {
        let mut st = self.state();
        if !st.devices.contains_key(hash) {
            return Err(DevmapperError::UnknownDevice(hash.to_string()));
        }
        let mut rec = st.layers.get(hash).cloned().unwrap_or_default();
        if rec.incomplete == incomplete && st.layers.contains_key(hash) {
            return Ok(());
        }
        rec.incomplete = incomplete;
        self.side.save_layer(hash, &rec)?;
        st.layers.insert(hash.to_string(), rec);
        Ok(())
    }

    /// Mounts layer `hash` (reference-counted) and returns its root.
    pub fn get(&self, hash: &str, label: Option<&str>) -> Res<PathBuf> {
        let lock = self.layer_lock(hash);
        let _g = lock.lock().unwrap_or_else(|p| p.into_inner());
        let info = {
            let mut st = self.state();
            let Some(info) = st.devices.get(hash).copied() else {
                return Err(DevmapperError::UnknownDevice(hash.to_string()));
            };
            if info.deleted {
                return Err(DevmapperError::Other(format!(
                    "Can't mount device {hash} as it has been marked for deferred deletion"
                )));
            }
            if st.layers.get(hash).is_some_and(|r| r.incomplete) {
                return Err(DevmapperError::Incomplete(hash.to_string()));
            }
            if let Some(n) = st.refs.get_mut(hash)
                && *n > 0
            {
                *n += 1;
                return Ok(self.layer_root(hash));
            }
            info
        };
        let mp = self.mount_path(hash);
        if !mounts::is_mount_point(&mp) {
            let dev = self.activate(hash, &info)?;
            let fstype = thinfs::probe(&dev)?.map(str::to_string).ok_or_else(|| {
                DevmapperError::Other(format!("Unknown filesystem type on {}", dev.display()))
            })?;
            match fs::DirBuilder::new().mode(0o755).create(&mp) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(DevmapperError::io(format!("creating {}", mp.display()), e)),
            }
            let opts = thinfs::mount_options(&fstype, &self.opts.mount_opts, label);
            if let Err(e) = nix::mount::mount(
                Some(&dev),
                &mp,
                Some(fstype.as_str()),
                MsFlags::empty(),
                Some(opts.as_str()),
            ) {
                let _ = self.deactivate(hash);
                return Err(DevmapperError::io(
                    format!(
                        "mounting {} on {} ({fstype}, {opts})",
                        dev.display(),
                        mp.display()
                    ),
                    e.into(),
                ));
            }
            fp("devmapper.get.after_mount")?;
            if let Err(e) = self.after_mount(hash, &mp, &fstype) {
                let _ = mounts::unmount(&mp, true);
                let _ = self.deactivate(hash);
                return Err(e);
            }
        }
        *self.state().refs.entry(hash.to_string()).or_insert(0) += 1;
        Ok(self.layer_root(hash))
    }

    fn after_mount(&self, hash: &str, mp: &Path, fstype: &str) -> Res<()> {
        if self.layout == Layout::Docker {
            let rootfs = mp.join("rootfs");
            match fs::DirBuilder::new().mode(0o755).create(&rootfs) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => {
                    return Err(DevmapperError::io(
                        format!("creating {}", rootfs.display()),
                        e,
                    ));
                }
            }
            let idfile = mp.join("id");
            if !idfile.exists() {
                let mut f = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&idfile)
                    .map_err(|e| DevmapperError::io(format!("creating {}", idfile.display()), e))?;
                std::io::Write::write_all(&mut f, hash.as_bytes())
                    .map_err(|e| DevmapperError::io(format!("writing {}", idfile.display()), e))?;
            }
        }
        if fstype == "xfs"
            && let Some(retries) = &self.opts.xfs_nospace_max_retries
        {
            let name = self.device_name(hash);
            let devno = self.ctl.info(&name)?.map(|s| s.devno);
            let path = devno.map(|d| {
                PathBuf::from(format!(
                    "/sys/fs/xfs/dm-{}/error/metadata/ENOSPC/max_retries",
                    d.minor
                ))
            });
            let written = path.as_ref().map(|p| fs::write(p, retries));
            if !matches!(written, Some(Ok(()))) {
                return Err(DevmapperError::Other(format!(
                    "user specified daemon option dm.xfs_nospace_max_retries but it does not seem to be supported on this system :{:?}",
                    written.and_then(|r| r.err())
                )));
            }
        }
        Ok(())
    }

    /// Releases one `get`; the last unmounts and deactivates.
    pub fn put(&self, hash: &str) -> Res<()> {
        let lock = self.layer_lock(hash);
        let _g = lock.lock().unwrap_or_else(|p| p.into_inner());
        let mp = self.mount_path(hash);
        {
            let mut st = self.state();
            match st.refs.get_mut(hash) {
                Some(n) if *n > 1 => {
                    *n -= 1;
                    return Ok(());
                }
                Some(_) => {
                    st.refs.remove(hash);
                }
                None if mounts::is_mount_point(&mp) => {}
                None => {
                    return Err(DevmapperError::Other(format!(
                        "layer {hash} is not mounted"
                    )));
                }
            }
        }
        let released = self.unmount_and_deactivate(hash);
        if released.is_err() && mounts::is_mount_point(&mp) {
            // Still mounted: the reference stays, so a later put retries.
            self.state().refs.insert(hash.to_string(), 1);
        }
        released
    }

    fn unmount_and_deactivate(&self, hash: &str) -> Res<()> {
        let mp = self.mount_path(hash);
        if mounts::is_mount_point(&mp) {
            // Not lazy: a detached mount would keep the device busy with
            // nobody left to name. EBUSY names who holds the mount instead.
            let mut tries = 0;
            loop {
                match mounts::unmount(&mp, false) {
                    Ok(()) => break,
                    Err(e) if e.raw_os_error() == Some(Errno::EBUSY as i32) && tries < 10 => {
                        tries += 1;
                        std::thread::sleep(std::time::Duration::from_millis(50));
                    }
                    Err(e) if e.raw_os_error() == Some(Errno::EBUSY as i32) => {
                        return Err(DevmapperError::Busy {
                            id: display_hash(hash).to_string(),
                            detail: format!(
                                "unmounting {}: target is busy{}",
                                mp.display(),
                                self.holders_suffix(hash)
                            ),
                        });
                    }
                    Err(e) => {
                        return Err(DevmapperError::io(
                            format!("unmounting {}", mp.display()),
                            e,
                        ));
                    }
                }
            }
        }
        fp("devmapper.put.after_umount")?;
        // rmdir also drops copies of the mount leaked into other mount
        // namespaces (kernels >= 3.18).
        let _ = fs::remove_dir(&mp);
        self.deactivate(hash)
    }

    /// Mounts another process made (`thinsnap mount`) count as one reference.
    /// A mount of a layer marked incomplete is an interrupted
    /// `apply_diff`'s own: the layer is never served, so it is released.
    fn adopt_mounts(&self) {
        let mnt = self.home.join("mnt");
        let mut release = Vec::new();
        {
            let mut st = self.state();
            let hashes: Vec<String> = st.devices.keys().cloned().collect();
            for h in hashes {
                if !mounts::is_mount_point(&mnt.join(&h)) {
                    continue;
                }
                if st.layers.get(&h).is_some_and(|r| r.incomplete) {
                    release.push(h);
                } else {
                    st.refs.entry(h).or_insert(1);
                }
            }
        }
        for h in release {
            if let Err(e) = self.unmount_and_deactivate(&h) {
                tracing::warn!(id = %h, error = %e, "could not release an interrupted apply's mount");
            }
        }
    }

    /// Inodes in use in `hash`'s filesystem (the base device for `""`),
    /// read from the mount if it is mounted, else from a short private mount.
    pub fn used_inodes(&self, hash: &str) -> Res<u64> {
        let count = |p: &Path| -> Res<u64> {
            let s = nix::sys::statvfs::statvfs(p)
                .map_err(|e| DevmapperError::io(format!("statvfs {}", p.display()), e.into()))?;
            Ok(s.files().saturating_sub(s.files_free()))
        };
        let lock = self.layer_lock(hash);
        let _g = lock.lock().unwrap_or_else(|p| p.into_inner());
        let mp = self.mount_path(hash);
        if !hash.is_empty() && mounts::is_mount_point(&mp) {
            return count(&mp);
        }
        let Some(info) = self.device_info(hash) else {
            return Err(DevmapperError::UnknownDevice(hash.to_string()));
        };
        let name = self.device_name(hash);
        let was_active = self.ctl.info(&name)?.is_some();
        let dev = self.activate(hash, &info)?;
        let n = self.with_temp_mount(hash, &dev, count);
        if !was_active {
            self.deactivate(hash)?;
        }
        n
    }

    /// Makes sure the device is active for someone else to mount; returns
    /// its node and filesystem type.
    pub fn prepare_device(&self, hash: &str) -> Res<(PathBuf, String)> {
        let lock = self.layer_lock(hash);
        let _g = lock.lock().unwrap_or_else(|p| p.into_inner());
        let Some(info) = self.device_info(hash) else {
            return Err(DevmapperError::UnknownDevice(hash.to_string()));
        };
        if self.layer_record(hash).is_some_and(|r| r.incomplete) {
            return Err(DevmapperError::Incomplete(hash.to_string()));
        }
        let dev = self.activate(hash, &info)?;
        // Every device is a snapshot of the base, so it carries the base's
        // filesystem; reading the superblock (a first read through the
        // pool) is only needed when the store never recorded it.
        let fstype = if self.fs.is_empty() {
            thinfs::probe(&dev)?.unwrap_or("unknown").to_string()
        } else {
            self.fs.clone()
        };
        Ok((dev, fstype))
    }

    /// Unmounts and deactivates everything, saves deviceset-metadata and,
    /// for a pool thinsnap created, removes the pool (its loop devices
    /// detach by themselves). The store stays on disk.
    pub fn cleanup(&self) -> Res<()> {
        {
            let mut st = self.state();
            st.meta.next_device_id = st.alloc.next_device_id();
            self.store.save_deviceset(&st.meta)?;
            st.refs.clear();
        }
        let mnt = self.home.join("mnt");
        for mp in mounts::mount_points_below(&mnt).unwrap_or_default() {
            if let Err(e) = mounts::unmount(&mp, true) {
                tracing::warn!(path = %mp.display(), error = %e, "unmount failed");
            }
            let _ = fs::remove_dir(&mp);
        }
        let mut errors = Vec::new();
        let ours = format!("{}-", self.prefix);
        for name in self.ctl.list()? {
            if name.starts_with(&ours)
                && name != self.pool.name
                && let Err(e) = dm::thin::deactivate(&self.ctl, &name, false)
            {
                errors.push(e.to_string());
            }
        }
        if self.owns_pool && errors.is_empty() {
            self.pool.remove(&self.ctl)?;
        }
        if !errors.is_empty() {
            return Err(DevmapperError::Other(format!(
                "cleanup left devices behind: {}",
                errors.join("; ")
            )));
        }
        Ok(())
    }

    /// Loop devices of a loopback pool, for status.
    pub fn loops(&self) -> Option<(&Loop, &Loop, &Path, &Path)> {
        match &self.source {
            PoolSource::Loopback {
                data_file,
                meta_file,
                data_loop,
                meta_loop,
            } => Some((data_loop, meta_loop, data_file, meta_file)),
            _ => None,
        }
    }
}

fn unreachable_source<T>() -> Res<T> {
    Err(DevmapperError::Other(
        "internal: an external pool has no devices to size".into(),
    ))
}

fn display_hash(hash: &str) -> &str {
    if hash.is_empty() { "base" } else { hash }
}

/// Layers whose parent is `hash`. A child marked for deferred deletion is
/// gone for users and its thin device does not depend on its origin's.
fn children_in(st: &State, hash: &str) -> Vec<String> {
    st.layers
        .iter()
        .filter(|(k, r)| {
            r.parent.as_ref().is_some_and(|p| p.as_str() == hash)
                && !st.devices.get(k.as_str()).is_some_and(|d| d.deleted)
        })
        .map(|(k, _)| k.clone())
        .collect()
}

fn dev_name(prefix: &str, hash: &str) -> String {
    format!("{prefix}-{}", display_hash(hash))
}

fn block_devno(path: &Path) -> Res<DevNo> {
    let m = fs::metadata(path)
        .map_err(|e| DevmapperError::io(format!("stat {}", path.display()), e))?;
    use std::os::unix::fs::FileTypeExt;
    if !m.file_type().is_block_device() {
        return Err(DevmapperError::Other(format!(
            "{} is not a block device",
            path.display()
        )));
    }
    let rdev = m.rdev();
    Ok(DevNo {
        major: nix::sys::stat::major(rdev) as u32,
        minor: nix::sys::stat::minor(rdev) as u32,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_docker() {
        assert_eq!(dev_name("docker-8:1-42", ""), "docker-8:1-42-base");
        assert_eq!(dev_name("docker-8:1-42", "abc"), "docker-8:1-42-abc");
    }

    #[test]
    fn prefix_uses_the_old_devno_split() {
        let dir = tempfile::tempdir().unwrap();
        let p = docker_prefix(dir.path()).unwrap();
        let m = fs::metadata(dir.path()).unwrap();
        assert!(p.starts_with("docker-"));
        assert!(p.ends_with(&format!("-{}", m.ino())));
    }
}
