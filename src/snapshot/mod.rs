//! The snapshot API every backend implements: the contract Docker's graph
//! drivers fulfil, expressed as one Rust trait so the CLI, the containerd
//! service and the conformance suite work with any backend.
//!
//! A *layer* is a filesystem tree identified by a [`LayerId`] with at most
//! one parent. Image layers are created with [`Driver::create`], container
//! layers with [`Driver::create_read_write`]; [`container`] builds Docker's
//! `<id>-init` + `<id>` pair on top of an image.

pub mod container;
pub mod error;
pub mod id;
pub mod mountspec;
pub mod naive;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::PathBuf;

pub use error::{ErrorKind, IoContext, Result, SnapshotError};
pub use id::{INIT_SUFFIX, LayerId};
pub use mountspec::MountSpec;

use crate::units::Bytes;

/// Per-layer creation options (`--storage-opt` of `docker create`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CreateOpts {
    /// SELinux mount label applied when the layer is mounted.
    pub mount_label: Option<String>,
    /// Backend options; devicemapper accepts `size=<bytes|10G>`. Unknown keys
    /// are an `InvalidInput` error naming the key.
    pub storage_opt: BTreeMap<String, String>,
}

impl CreateOpts {
    /// Options with only a size request (`size=...`).
    pub fn with_size(size: Bytes) -> Self {
        let mut storage_opt = BTreeMap::new();
        storage_opt.insert("size".to_string(), size.0.to_string());
        CreateOpts {
            mount_label: None,
            storage_opt,
        }
    }
}

/// One difference between a layer and its parent, as `docker diff` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ChangeKind {
    Modify,
    Add,
    Delete,
}

impl ChangeKind {
    /// Docker's one-letter code (`C`, `A`, `D`).
    pub fn letter(self) -> char {
        match self {
            ChangeKind::Modify => 'C',
            ChangeKind::Add => 'A',
            ChangeKind::Delete => 'D',
        }
    }
}

/// A changed path, absolute within the layer (`/etc/hosts`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Change {
    pub path: PathBuf,
    pub kind: ChangeKind,
}

/// What a layer is, for listings and `inspect`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerInfo {
    pub id: LayerId,
    pub parent: Option<LayerId>,
    /// Active mounts held through `get` (0 when unmounted).
    pub mount_count: u32,
    /// Set while an `apply_diff` is in progress or was interrupted; such a
    /// layer is never served as a parent.
    pub incomplete: bool,
}

/// Space a layer uses on its own (excluding what its parents hold).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub bytes: Bytes,
    pub inodes: u64,
}

/// The snapshot API. Implementations are internally synchronised: every
/// method takes `&self` and may be called from many threads; operations on
/// different ids must not wait for each other's slow work.
pub trait Driver: Send + Sync {
    /// The backend's name as Docker spells it (`devicemapper`, `overlay2`, ...).
    fn name(&self) -> &'static str;

    /// Creates an (image) layer `id` on top of `parent` (`None`: empty).
    fn create(&self, id: &LayerId, parent: Option<&LayerId>, opts: &CreateOpts) -> Result<()>;

    /// Creates a writable (container) layer. Backends that do not
    /// distinguish the two treat it as `create`.
    fn create_read_write(
        &self,
        id: &LayerId,
        parent: Option<&LayerId>,
        opts: &CreateOpts,
    ) -> Result<()> {
        self.create(id, parent, opts)
    }

    /// Removes a layer. `Busy` while it is mounted, `HasChildren` while a
    /// layer is built on it, `NotFound` for an unknown id.
    fn remove(&self, id: &LayerId) -> Result<()>;

    /// Mounts the layer (reference-counted) and returns the path of its root.
    /// An incomplete layer is refused (`Incomplete`).
    fn get(&self, id: &LayerId, mount_label: Option<&str>) -> Result<PathBuf>;

    /// Releases one `get`; the last release unmounts.
    fn put(&self, id: &LayerId) -> Result<()>;

    /// True if the layer exists (incomplete layers included).
    fn exists(&self, id: &LayerId) -> bool;

    /// Diagnostic key/value pairs in display order (`docker info`).
    fn status(&self) -> Result<Vec<(String, String)>>;

    /// `status` as JSON. Backends whose lines come from numbers
    /// (devicemapper) return the raw numbers instead of formatted text.
    fn status_json(&self) -> Result<serde_json::Value> {
        Ok(serde_json::Value::Object(
            self.status()?
                .into_iter()
                .map(|(k, v)| (k, serde_json::Value::String(v)))
                .collect(),
        ))
    }

    /// Low-level facts about one layer (devicemapper: `DeviceId`,
    /// `DeviceSize`, `DeviceName`; union backends: directories).
    fn metadata(&self, id: &LayerId) -> Result<BTreeMap<String, String>>;

    /// Unmounts everything and releases kernel resources (the store stays).
    fn cleanup(&self) -> Result<()>;

    /// The layer's parent.
    fn parent(&self, id: &LayerId) -> Result<Option<LayerId>>;

    /// Every layer, sorted by id.
    fn list(&self) -> Result<Vec<LayerInfo>>;

    /// Writes an OCI layer tar of `id` relative to `parent` (`None`: its
    /// recorded parent; to get the whole tree of a layer without parent use
    /// a layer that has none). Returns the bytes written.
    fn diff(&self, id: &LayerId, parent: Option<&LayerId>, out: &mut dyn Write) -> Result<u64> {
        naive::diff(self, id, parent, out)
    }

    /// Paths that differ between `id` and `parent`.
    fn changes(&self, id: &LayerId, parent: Option<&LayerId>) -> Result<Vec<Change>> {
        naive::changes(self, id, parent)
    }

    /// Applies an OCI layer tar (plain, gzip or zstd) to layer `id`, which
    /// must have been created on `parent`. Returns the bytes applied. An
    /// interrupted or failed apply leaves the layer `Incomplete`.
    fn apply_diff(
        &self,
        id: &LayerId,
        parent: Option<&LayerId>,
        tar: &mut dyn Read,
    ) -> Result<u64> {
        naive::apply_diff(self, id, parent, tar)
    }

    /// Size of the changed files between `id` and `parent`.
    fn diff_size(&self, id: &LayerId, parent: Option<&LayerId>) -> Result<u64> {
        naive::diff_size(self, id, parent)
    }

    /// Space used by this layer alone.
    fn usage(&self, id: &LayerId) -> Result<Usage>;

    /// Durably marks (or clears) a layer as incomplete. `apply_diff` sets it
    /// before writing and clears it after the data is synced, so a crash or
    /// a bad tar leaves a layer that is refused as a parent and by `get`
    /// until it is removed.
    fn set_incomplete(&self, id: &LayerId, incomplete: bool) -> Result<()>;

    /// Describes how someone else (containerd) mounts the layer, instead of
    /// mounting it: overlay2 an overlay of its diff chain, vfs a bind mount,
    /// devicemapper the thin device (activated here, so its node exists)
    /// with its filesystem type. `readonly` (a containerd View) must make
    /// the mount refuse writes (EROFS), not merely discourage them. The
    /// layer stays prepared until `remove` or `cleanup`. An incomplete
    /// layer is refused.
    fn mounts(&self, id: &LayerId, readonly: bool) -> Result<Vec<MountSpec>> {
        let _ = (id, readonly);
        Err(SnapshotError::unsupported(
            format!("describing mounts with the {} backend", self.name()),
            "it can only mount layers itself",
        ))
    }
}
