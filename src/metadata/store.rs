//! The `metadata/` directory: load every device file, write each one
//! atomically, and keep the transaction and device-set records.
//!
//! Unlike Docker (moby #9644), one unreadable device file does not stop
//! the store: it is reported by name in `LoadedDevices::broken` and the
//! other devices load as usual.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

use super::error::MetadataError;
use super::types::{DevInfo, DeviceSetMeta, Transaction, encode};
use crate::fsutil;

pub const BASE_FILE: &str = "base";
pub const DEVICESET_FILE: &str = "deviceset-metadata";
pub const TRANSACTION_FILE: &str = "transaction-metadata";

/// File names a layer id can never take in this directory.
pub const RESERVED_NAMES: &[&str] = &[BASE_FILE, DEVICESET_FILE, TRANSACTION_FILE];

/// A device file that could not be read, kept out of service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokenFile {
    pub hash: String,
    pub path: PathBuf,
    pub error: String,
}

/// Everything `load_devices` found.
#[derive(Debug, Default)]
pub struct LoadedDevices {
    /// By hash (`""` is the base device).
    pub devices: BTreeMap<String, DevInfo>,
    pub broken: Vec<BrokenFile>,
}

#[derive(Debug, Clone)]
pub struct MetadataStore {
    dir: PathBuf,
    /// Held open: every create and delete writes through it.
    durable: fsutil::DurableDir,
}

impl MetadataStore {
    /// Opens (creating with mode 0700) the metadata directory.
    pub fn open(dir: &Path) -> Result<Self, MetadataError> {
        fsutil::ensure_dir(dir, 0o700).map_err(|e| MetadataError::io("creating", dir, e))?;
        let durable =
            fsutil::DurableDir::open(dir).map_err(|e| MetadataError::io("opening", dir, e))?;
        Ok(MetadataStore {
            dir: dir.to_path_buf(),
            durable,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `metadata/<hash>`, `metadata/base` for the base device.
    pub fn device_path(&self, hash: &str) -> PathBuf {
        self.dir.join(device_file(hash))
    }

    /// Loads every device file. Skips dot-files (temp files), `*.migrated`,
    /// the two meta files and directories, as Docker does.
    pub fn load_devices(&self) -> Result<LoadedDevices, MetadataError> {
        let mut loaded = LoadedDevices::default();
        let entries =
            fs::read_dir(&self.dir).map_err(|e| MetadataError::io("listing", &self.dir, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| MetadataError::io("listing", &self.dir, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.')
                || name.ends_with(".migrated")
                || name == DEVICESET_FILE
                || name == TRANSACTION_FILE
                || entry.file_type().map(|t| t.is_dir()).unwrap_or(false)
            {
                continue;
            }
            let hash = if name == BASE_FILE {
                String::new()
            } else {
                name
            };
            match read_json::<DevInfo>(&entry.path()) {
                Ok(Some(info)) if info.device_id <= crate::dm::thin_id::MAX_THIN_ID => {
                    loaded.devices.insert(hash, info);
                }
                Ok(Some(info)) => loaded.broken.push(BrokenFile {
                    hash,
                    path: entry.path(),
                    error: format!(
                        "device_id {} is out of the pool's 24-bit range",
                        info.device_id
                    ),
                }),
                Ok(None) => {}
                Err(e) => loaded.broken.push(BrokenFile {
                    hash,
                    path: entry.path(),
                    error: e.to_string(),
                }),
            }
        }
        loaded.broken.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(loaded)
    }

    /// One device file (None when absent).
    pub fn load_device(&self, hash: &str) -> Result<Option<DevInfo>, MetadataError> {
        read_json(&self.device_path(hash))
    }

    pub fn save_device(&self, hash: &str, info: &DevInfo) -> Result<(), MetadataError> {
        self.write(device_file(hash), &encode(info))
    }

    pub fn remove_device(&self, hash: &str) -> Result<(), MetadataError> {
        self.durable
            .remove(device_file(hash))
            .map_err(|e| MetadataError::io("removing", self.device_path(hash), e))
    }

    pub fn load_transaction(&self) -> Result<Option<Transaction>, MetadataError> {
        read_json(&self.dir.join(TRANSACTION_FILE))
    }

    pub fn save_transaction(&self, t: &Transaction) -> Result<(), MetadataError> {
        self.write(TRANSACTION_FILE, &encode(t))
    }

    pub fn remove_transaction(&self) -> Result<(), MetadataError> {
        self.durable
            .remove(TRANSACTION_FILE)
            .map_err(|e| MetadataError::io("removing", self.dir.join(TRANSACTION_FILE), e))
    }

    pub fn load_deviceset(&self) -> Result<Option<DeviceSetMeta>, MetadataError> {
        read_json(&self.dir.join(DEVICESET_FILE))
    }

    pub fn save_deviceset(&self, m: &DeviceSetMeta) -> Result<(), MetadataError> {
        self.write(DEVICESET_FILE, &encode(m))
    }

    /// Temp files a crash left behind.
    pub fn stray_temp_files(&self) -> Vec<PathBuf> {
        fsutil::stray_temp_files(&self.dir).unwrap_or_default()
    }

    fn write(&self, name: &str, bytes: &[u8]) -> Result<(), MetadataError> {
        self.durable
            .write(name, bytes, 0o600)
            .map_err(|e| MetadataError::io("writing", self.dir.join(name), e))
    }

    /// Docker < 1.7 kept every device in `<home>/devicemapper/json`
    /// (`{"Devices":{hash:devInfo}}`): split it into per-device files and
    /// rename it `json.migrated`, as Docker's migration does.
    pub fn migrate_legacy(&self, legacy: &Path) -> Result<usize, MetadataError> {
        #[derive(serde::Deserialize)]
        struct Legacy {
            #[serde(rename = "Devices", default)]
            devices: BTreeMap<String, DevInfo>,
        }
        let Some(old) = read_json::<Legacy>(legacy)? else {
            return Ok(0);
        };
        if let Some(bad) = old
            .devices
            .keys()
            .find(|h| h.contains('/') || h.contains('\0') || h.starts_with('.'))
        {
            return Err(MetadataError::io(
                "migrating",
                legacy,
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("device hash {bad:?} cannot name a file in the metadata directory"),
                ),
            ));
        }
        for (hash, info) in &old.devices {
            if self.load_device(hash)?.is_none() {
                self.save_device(hash, info)?;
            }
        }
        let migrated = legacy.with_extension("migrated");
        fs::rename(legacy, &migrated).map_err(|e| MetadataError::io("renaming", legacy, e))?;
        Ok(old.devices.len())
    }
}

/// The file of device `hash` in the metadata directory (`base` for "").
fn device_file(hash: &str) -> &str {
    if hash.is_empty() { BASE_FILE } else { hash }
}

fn read_json<T: DeserializeOwned>(path: &Path) -> Result<Option<T>, MetadataError> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(MetadataError::io("reading", path, e)),
    };
    if bytes.iter().all(|b| b.is_ascii_whitespace()) {
        return Err(MetadataError::Empty {
            path: path.to_path_buf(),
        });
    }
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|source| MetadataError::Parse {
            path: path.to_path_buf(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_and_reports_broken_files_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let store = MetadataStore::open(dir.path()).unwrap();
        let info = DevInfo {
            device_id: 2,
            size: 1 << 30,
            transaction_id: 2,
            initialized: false,
            deleted: false,
        };
        store.save_device("layer1", &info).unwrap();
        store
            .save_device(
                "",
                &DevInfo {
                    device_id: 1,
                    initialized: true,
                    ..info
                },
            )
            .unwrap();
        fs::write(dir.path().join("garbage"), b"{not json").unwrap();
        fs::write(dir.path().join("empty"), b"").unwrap();
        fs::write(dir.path().join("huge"), br#"{"device_id":16777216}"#).unwrap();
        fs::write(dir.path().join(".tmp-x"), b"half").unwrap();
        fs::write(dir.path().join("json.migrated"), b"{}").unwrap();
        store
            .save_transaction(&Transaction {
                open_transaction_id: 2,
                device_hash: "layer1".into(),
                device_id: 2,
            })
            .unwrap();
        let loaded = store.load_devices().unwrap();
        assert_eq!(loaded.devices.len(), 2);
        assert_eq!(loaded.devices[""].device_id, 1);
        assert_eq!(loaded.devices["layer1"], info);
        let broken: Vec<&str> = loaded.broken.iter().map(|b| b.hash.as_str()).collect();
        assert_eq!(broken, ["empty", "garbage", "huge"]);
        assert!(
            loaded.broken[1].error.contains("garbage"),
            "{}",
            loaded.broken[1].error
        );
        assert_eq!(store.load_transaction().unwrap().unwrap().device_id, 2);
    }

    /// Docker's own files parse and re-serialise byte for byte, and a store
    /// rewriting them produces the same bytes.
    #[test]
    fn docker_fixtures_round_trip_byte_identical() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/docker-store");
        let mut checked = 0;
        for set in ["docker-20.10", "seed-17.05"] {
            let dir = root.join(set).join("metadata");
            let copy = tempfile::tempdir().unwrap();
            let store = MetadataStore::open(copy.path()).unwrap();
            let original = MetadataStore::open(&dir).unwrap();
            let loaded = original.load_devices().unwrap();
            assert!(loaded.broken.is_empty(), "{:?}", loaded.broken);
            for (hash, info) in &loaded.devices {
                let bytes = fs::read(original.device_path(hash)).unwrap();
                assert_eq!(encode(info), bytes, "{set}/{hash}");
                store.save_device(hash, info).unwrap();
                assert_eq!(fs::read(store.device_path(hash)).unwrap(), bytes);
                checked += 1;
            }
            let t = original.load_transaction().unwrap().unwrap();
            store.save_transaction(&t).unwrap();
            assert_eq!(
                fs::read(copy.path().join(TRANSACTION_FILE)).unwrap(),
                fs::read(dir.join(TRANSACTION_FILE)).unwrap()
            );
            let m = original.load_deviceset().unwrap().unwrap();
            store.save_deviceset(&m).unwrap();
            assert_eq!(
                fs::read(copy.path().join(DEVICESET_FILE)).unwrap(),
                fs::read(dir.join(DEVICESET_FILE)).unwrap()
            );
            checked += 2;
        }
        assert_eq!(checked, 4 + 2 + 7 + 2);
    }

    #[test]
    fn migrates_legacy_json() {
        let dir = tempfile::tempdir().unwrap();
        let store = MetadataStore::open(&dir.path().join("metadata")).unwrap();
        let legacy = dir.path().join("json");
        fs::write(
            &legacy,
            br#"{"Devices":{"":{"device_id":1,"size":10,"transaction_id":1,"initialized":true,"deleted":false},"abc":{"device_id":2,"size":10,"transaction_id":2,"initialized":false,"deleted":false}}}"#,
        )
        .unwrap();
        assert_eq!(store.migrate_legacy(&legacy).unwrap(), 2);
        assert!(dir.path().join("json.migrated").exists());
        assert_eq!(store.load_device("abc").unwrap().unwrap().device_id, 2);
        assert_eq!(store.load_device("").unwrap().unwrap().device_id, 1);
    }
}
