//! An in-memory backend for the service's unit tests: layers are map
//! entries, mounts are bind specs of fake paths, failures are switches.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::snapshot::{
    CreateOpts, Driver, LayerId, LayerInfo, MountSpec, Result as SnapResult, SnapshotError, Usage,
};
use crate::units::Bytes;

#[derive(Default)]
pub struct FakeDriver {
    pub layers: Mutex<HashMap<LayerId, Option<LayerId>>>,
    pub fail_create: AtomicBool,
    pub fail_remove: AtomicBool,
    /// Milliseconds each create sleeps (slow backend work).
    pub create_delay_ms: AtomicU64,
    /// Milliseconds each remove sleeps.
    pub remove_delay_ms: AtomicU64,
}

impl Driver for FakeDriver {
    fn name(&self) -> &'static str {
        "fake"
    }
    fn create(&self, id: &LayerId, parent: Option<&LayerId>, _: &CreateOpts) -> SnapResult<()> {
        let delay = self.create_delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            std::thread::sleep(std::time::Duration::from_millis(delay));
        }
        if self.fail_create.load(Ordering::SeqCst) {
            return Err(SnapshotError::NoSpace {
                detail: "fake pool full".into(),
            });
        }
        let mut l = self.layers.lock().unwrap();
        if l.contains_key(id) {
            return Err(SnapshotError::already_exists(id));
        }
        if let Some(p) = parent
            && !l.contains_key(p)
        {
            return Err(SnapshotError::not_found(p));
        }
        l.insert(id.clone(), parent.cloned());
        Ok(())
    }
    fn remove(&self, id: &LayerId) -> SnapResult<()> {
        let delay = self.remove_delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            std::thread::sleep(std::time::Duration::from_millis(delay));
        }
        if self.fail_remove.load(Ordering::SeqCst) {
            return Err(SnapshotError::Busy {
                id: id.to_string(),
                detail: "fake busy".into(),
            });
        }
        let mut l = self.layers.lock().unwrap();
        let children: Vec<String> = l
            .iter()
            .filter(|(_, p)| p.as_ref() == Some(id))
            .map(|(c, _)| c.to_string())
            .collect();
        if !children.is_empty() {
            return Err(SnapshotError::HasChildren {
                id: id.to_string(),
                children,
            });
        }
        l.remove(id)
            .map(|_| ())
            .ok_or_else(|| SnapshotError::not_found(id))
    }
    fn get(&self, id: &LayerId, _: Option<&str>) -> SnapResult<PathBuf> {
        Ok(PathBuf::from(format!("/fake/{id}")))
    }
    fn put(&self, _: &LayerId) -> SnapResult<()> {
        Ok(())
    }
    fn exists(&self, id: &LayerId) -> bool {
        self.layers.lock().unwrap().contains_key(id)
    }
    fn status(&self) -> SnapResult<Vec<(String, String)>> {
        Ok(vec![("Fake".into(), "yes".into())])
    }
    fn metadata(&self, _: &LayerId) -> SnapResult<BTreeMap<String, String>> {
        Ok(BTreeMap::new())
    }
    fn cleanup(&self) -> SnapResult<()> {
        Ok(())
    }
    fn parent(&self, id: &LayerId) -> SnapResult<Option<LayerId>> {
        self.layers
            .lock()
            .unwrap()
            .get(id)
            .cloned()
            .ok_or_else(|| SnapshotError::not_found(id))
    }
    fn list(&self) -> SnapResult<Vec<LayerInfo>> {
        let mut v: Vec<LayerInfo> = self
            .layers
            .lock()
            .unwrap()
            .iter()
            .map(|(id, p)| LayerInfo {
                id: id.clone(),
                parent: p.clone(),
                mount_count: 0,
                incomplete: false,
            })
            .collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(v)
    }
    fn usage(&self, id: &LayerId) -> SnapResult<Usage> {
        if !self.exists(id) {
            return Err(SnapshotError::not_found(id));
        }
        Ok(Usage {
            bytes: Bytes(4096),
            inodes: 1,
        })
    }
    fn set_incomplete(&self, _: &LayerId, _: bool) -> SnapResult<()> {
        Ok(())
    }
    fn mounts(&self, id: &LayerId, readonly: bool) -> SnapResult<Vec<MountSpec>> {
        Ok(vec![MountSpec::bind(
            std::path::Path::new(&format!("/fake/{id}")),
            readonly,
        )])
    }
}
