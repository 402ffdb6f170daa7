//! `thinsnap import NAME LAYER.tar…`: one layer per tar, bottom first.
//!
//! Layer ids are Docker's chain ids: the diff id of a tar is the sha256 of
//! its uncompressed bytes; the chain id of the first layer is its diff id,
//! and of layer n `sha256("sha256:<chain n-1> sha256:<diff n>")`. The layer
//! id is the chain id's 64 hex digits, so importing the same tars again
//! finds the same layers (they are reused, not re-applied), and two images
//! sharing a base share its layers.

use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;
use sha2::{Digest, Sha256};

use super::GlobalArgs;
use super::store::{self, ImageRecord, ImportedLayer};
use crate::fsutil;
use crate::layer::compress;
use crate::snapshot::{CreateOpts, Driver, LayerId, SnapshotError};

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// Name to record the image under (same rules as a layer id).
    pub name: LayerId,
    /// Layer tars (plain, gzip or zstd), bottom layer first.
    #[arg(required = true)]
    pub tars: Vec<PathBuf>,
}

/// Lowercase hex of a digest.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// sha256 of the uncompressed contents of `path` (the OCI diff id, hex).
pub fn diff_id(path: &PathBuf) -> Result<String, SnapshotError> {
    let file = File::open(path).map_err(|e| SnapshotError::io_path("opening", path, e))?;
    let mut reader = BufReader::new(file);
    let (_, mut plain) = compress::decompress(&mut reader)
        .map_err(|e| e.into_snapshot(format!("reading {}", path.display())))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = match plain.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(SnapshotError::io_path("reading", path, e)),
        };
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

/// Chain id (hex) of a layer with diff id `diff` on a parent with chain id `parent`.
pub fn chain_id(parent: Option<&str>, diff: &str) -> String {
    match parent {
        None => diff.to_string(),
        Some(p) => hex(&Sha256::digest(
            format!("sha256:{p} sha256:{diff}").as_bytes(),
        )),
    }
}

pub fn run(global: &GlobalArgs, args: &ImportArgs) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let driver = store::open(global)?;
    let mut parent: Option<LayerId> = None;
    let mut layers = Vec::new();
    for tar in &args.tars {
        let diff = diff_id(tar)?;
        let chain = chain_id(parent.as_ref().map(|p| p.as_str()), &diff);
        let id = LayerId::new(&chain)?;
        let size = import_one(&global.root, driver.as_ref(), &id, parent.as_ref(), tar)?;
        println!("{id}");
        layers.push(ImportedLayer {
            diff_id: format!("sha256:{diff}"),
            chain_id: format!("sha256:{chain}"),
            layer: id.clone(),
            size,
        });
        parent = Some(id);
    }
    ImageRecord {
        name: args.name.clone(),
        driver: driver.name().to_string(),
        layers,
    }
    .store(&global.root)?;
    Ok(ExitCode::SUCCESS)
}

/// Marks a layer as being imported: `<root>/thinsnap-images/.pending/<id>`
/// exists from before `create` until the tar is applied, closing the window
/// between `create` and `apply_diff`'s own incomplete mark in which a crash
/// would leave an empty layer that looks complete.
struct Pending {
    path: PathBuf,
}

impl Pending {
    fn path(root: &Path, id: &LayerId) -> PathBuf {
        root.join("thinsnap-images")
            .join(".pending")
            .join(id.as_str())
    }

    fn begin(root: &Path, id: &LayerId) -> Result<Pending, SnapshotError> {
        let path = Self::path(root, id);
        let dir = root.join("thinsnap-images").join(".pending");
        fsutil::ensure_dir(&dir, 0o700).map_err(|e| SnapshotError::io_path("creating", &dir, e))?;
        fsutil::atomic_write(&path, b"", 0o600)
            .map_err(|e| SnapshotError::io_path("writing", &path, e))?;
        Ok(Pending { path })
    }

    fn done(self) -> Result<(), SnapshotError> {
        fsutil::remove_durable(&self.path)
            .map_err(|e| SnapshotError::io_path("removing", &self.path, e))
    }
}

/// Creates and fills one layer; an existing complete layer is reused, an
/// incomplete one (an earlier import failed or was killed) is removed and
/// redone.
fn import_one(
    root: &Path,
    driver: &dyn Driver,
    id: &LayerId,
    parent: Option<&LayerId>,
    tar: &PathBuf,
) -> Result<u64, SnapshotError> {
    let _span = tracing::info_span!("import", id = %id, tar = %tar.display()).entered();
    let interrupted = Pending::path(root, id).exists();
    if driver.exists(id) {
        let info = driver.list()?.into_iter().find(|l| &l.id == id);
        match info {
            Some(l) if !l.incomplete && !interrupted => {
                tracing::info!("layer already present; reusing it");
                return Ok(0);
            }
            _ => {
                tracing::warn!("removing the incomplete layer left by an earlier import");
                driver.remove(id)?;
            }
        }
    }
    let pending = Pending::begin(root, id)?;
    driver.create(id, parent, &CreateOpts::default())?;
    let file = File::open(tar).map_err(|e| SnapshotError::io_path("opening", tar, e))?;
    let len = file
        .metadata()
        .map_err(|e| SnapshotError::io_path("inspecting", tar, e))?
        .len();
    let task = crate::progress::task_bytes(&format!("importing {}", tar.display()), len);
    let mut reader = crate::progress::Reader::new(BufReader::new(file), task);
    let size = driver.apply_diff(id, parent, &mut reader)?;
    reader.finish(&format!("imported {}", tar.display()));
    pending.done()?;
    Ok(size)
}
