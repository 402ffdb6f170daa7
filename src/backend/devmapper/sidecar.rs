//! thinsnap's own per-layer state for the devicemapper backend: parent
//! links (Docker keeps those in its layer database, not in the driver) and
//! incomplete marks, plus store-wide settings.
//!
//! It lives in `<home>/thinsnap/`, outside `metadata/`: Docker's loader
//! treats every non-dot file under `metadata/` (recursively) as a device,
//! so a store thinsnap wrote must not carry extra files there.
//!
//! Layer records are one append-only journal, `layers.journal`, one JSON
//! line per change (`{"id":…,"layer":{…}}`, or `{"id":…}` for a removal),
//! the last line for an id winning. A create appends and fdatasyncs one
//! line: two system calls where a file per layer took nine (temp file,
//! rename, directory fsync), on the path Docker's protocol already makes
//! costly. Removals are appended without a sync: a record whose device file
//! is gone is dropped at the next start anyway. The journal is rewritten
//! (atomically) with only the live records at every start and whenever it
//! grows past twice their number. A line torn by a crash can only be the
//! last one and only belong to a layer whose device file was never written
//! (records are synced first), so it is cut off at start. Stores written by
//! earlier versions (`layers/<id>.json`) are read and folded into the
//! journal.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

use super::error::DevmapperError;
use crate::fsutil;
use crate::snapshot::LayerId;

/// What thinsnap records about one layer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerRecord {
    /// `None`: a snapshot of the base device (an empty layer).
    pub parent: Option<LayerId>,
    #[serde(default)]
    pub incomplete: bool,
}

/// Settings fixed when the store is created.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreRecord {
    pub layout: String,
}

/// One journal line: a layer's new record, or its removal (`layer` absent).
#[derive(Debug, Serialize, Deserialize)]
struct Entry {
    id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    layer: Option<LayerRecord>,
}

const JOURNAL: &str = "layers.journal";
/// Where earlier versions kept one file per layer.
const LEGACY_DIR: &str = "layers";
/// Lines beyond the live records tolerated before an online rewrite.
const SLACK: usize = if cfg!(test) { 16 } else { 4096 };

#[derive(Debug)]
struct Journal {
    append: File,
    records: BTreeMap<String, LayerRecord>,
    /// Lines in the file.
    lines: usize,
    legacy: bool,
}

#[derive(Debug)]
pub struct Sidecar {
    dir: PathBuf,
    journal: Mutex<Journal>,
    /// Unreadable lines and legacy files found at open, by name.
    broken: Vec<String>,
}

impl Sidecar {
    pub fn open(home: &Path) -> Result<Sidecar, DevmapperError> {
        let dir = home.join("thinsnap");
        fsutil::ensure_dir(&dir, 0o700)
            .map_err(|e| DevmapperError::io(format!("creating {}", dir.display()), e))?;
        let mut broken = Vec::new();
        let (mut records, legacy) = load_legacy(&dir.join(LEGACY_DIR), &mut broken)?;
        let path = dir.join(JOURNAL);
        let lines = replay(&path, &mut records, &mut broken)?;
        let append = open_append(&path)?;
        Ok(Sidecar {
            dir,
            journal: Mutex::new(Journal {
                append,
                records,
                lines,
                legacy,
            }),
            broken,
        })
    }

    fn journal(&self) -> MutexGuard<'_, Journal> {
        self.journal.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn journal_path(&self) -> PathBuf {
        self.dir.join(JOURNAL)
    }

    pub fn load_store(&self) -> Result<Option<StoreRecord>, DevmapperError> {
        read(&self.dir.join("store.json"))
    }

    pub fn save_store(&self, rec: &StoreRecord) -> Result<(), DevmapperError> {
        write(&self.dir.join("store.json"), rec)
    }

    /// Every layer record, by id, and what could not be read (by name, so
    /// the caller can report it).
    pub fn load_layers(&self) -> (BTreeMap<String, LayerRecord>, Vec<String>) {
        (self.journal().records.clone(), self.broken.clone())
    }

    /// Records `rec` for layer `id`, durable on return.
    pub fn save_layer(&self, id: &str, rec: &LayerRecord) -> Result<(), DevmapperError> {
        let mut j = self.journal();
        self.append(&mut j, id, Some(rec), true)?;
        j.records.insert(id.to_string(), rec.clone());
        self.compact_if_grown(&mut j)
    }

    /// Drops a layer's record without waiting for the disk: for a device
    /// already deleted from the pool, whose record the next start drops
    /// anyway if this line is lost in a crash.
    pub fn forget_layer(&self, id: &str) {
        let mut j = self.journal();
        j.records.remove(id);
        if let Err(e) = self.append(&mut j, id, None, false) {
            tracing::warn!(error = %e, "could not record the removal of a deleted layer; the next start drops it");
        }
    }

    /// Drops a layer's record, durable on return.
    pub fn remove_layer(&self, id: &str) -> Result<(), DevmapperError> {
        let mut j = self.journal();
        j.records.remove(id);
        self.append(&mut j, id, None, true)
    }

    /// Rewrites the journal with only the live records (and folds in the
    /// files of earlier versions) when it holds anything else.
    pub fn compact(&self) -> Result<(), DevmapperError> {
        let mut j = self.journal();
        if j.lines != j.records.len() || j.legacy {
            self.rewrite(&mut j)?;
        }
        Ok(())
    }

    fn compact_if_grown(&self, j: &mut Journal) -> Result<(), DevmapperError> {
        if j.lines > 2 * j.records.len() + SLACK {
            self.rewrite(j)?;
        }
        Ok(())
    }

    fn append(
        &self,
        j: &mut Journal,
        id: &str,
        layer: Option<&LayerRecord>,
        sync: bool,
    ) -> Result<(), DevmapperError> {
        let path = self.journal_path();
        let mut line = encode(id, layer)?;
        line.push(b'\n');
        // One write: O_APPEND places the whole line at the end.
        j.append
            .write_all(&line)
            .and_then(|_| if sync { j.append.sync_data() } else { Ok(()) })
            .map_err(|e| DevmapperError::io(format!("appending to {}", path.display()), e))?;
        j.lines += 1;
        Ok(())
    }

    fn rewrite(&self, j: &mut Journal) -> Result<(), DevmapperError> {
        let path = self.journal_path();
        let mut all = Vec::new();
        for (id, rec) in &j.records {
            all.extend(encode(id, Some(rec))?);
            all.push(b'\n');
        }
        fsutil::atomic_write(&path, &all, 0o600)
            .map_err(|e| DevmapperError::io(format!("rewriting {}", path.display()), e))?;
        j.append = open_append(&path)?;
        j.lines = j.records.len();
        if j.legacy {
            // The journal now holds everything the old files said.
            let legacy = self.dir.join(LEGACY_DIR);
            fs::remove_dir_all(&legacy)
                .map_err(|e| DevmapperError::io(format!("removing {}", legacy.display()), e))?;
            j.legacy = false;
        }
        Ok(())
    }
}

fn encode(id: &str, layer: Option<&LayerRecord>) -> Result<Vec<u8>, DevmapperError> {
    serde_json::to_vec(&Entry {
        id: id.to_string(),
        layer: layer.cloned(),
    })
    .map_err(|e| DevmapperError::Other(e.to_string()))
}

fn open_append(path: &Path) -> Result<File, DevmapperError> {
    OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| DevmapperError::io(format!("opening {}", path.display()), e))
}

/// Applies the journal's lines to `records`; returns how many lines it
/// kept. A torn last line (a crash mid-append) is cut off the file.
fn replay(
    path: &Path,
    records: &mut BTreeMap<String, LayerRecord>,
    broken: &mut Vec<String>,
) -> Result<usize, DevmapperError> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(DevmapperError::io(format!("reading {}", path.display()), e)),
    };
    let complete = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    if complete < bytes.len() {
        tracing::warn!(file = %path.display(), bytes = bytes.len() - complete,
            "cutting off a journal line torn by a crash (a layer create that never finished)");
        let f = OpenOptions::new()
            .write(true)
            .open(path)
            .and_then(|f| f.set_len(complete as u64).and_then(|_| f.sync_all()));
        f.map_err(|e| DevmapperError::io(format!("truncating {}", path.display()), e))?;
    }
    let mut lines = 0;
    for (n, line) in bytes[..complete].split(|&b| b == b'\n').enumerate() {
        if line.is_empty() {
            continue;
        }
        lines += 1;
        match serde_json::from_slice::<Entry>(line) {
            Ok(Entry {
                id,
                layer: Some(rec),
            }) => {
                records.insert(id, rec);
            }
            Ok(Entry { id, layer: None }) => {
                records.remove(&id);
            }
            Err(e) => broken.push(format!(
                "{} line {} is not valid: {e}",
                path.display(),
                n + 1
            )),
        }
    }
    Ok(lines)
}

/// Records from `layers/<id>.json` (earlier versions); whether any exist.
fn load_legacy(
    dir: &Path,
    broken: &mut Vec<String>,
) -> Result<(BTreeMap<String, LayerRecord>, bool), DevmapperError> {
    let mut out = BTreeMap::new();
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((out, false)),
        Err(e) => return Err(DevmapperError::io(format!("listing {}", dir.display()), e)),
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(id) = name.strip_suffix(".json") else {
            continue;
        };
        if name.starts_with('.') {
            continue;
        }
        match read::<LayerRecord>(&e.path()) {
            Ok(Some(r)) => {
                out.insert(id.to_string(), r);
            }
            Ok(None) => {}
            Err(err) => broken.push(err.to_string()),
        }
    }
    Ok((out, true))
}

fn read<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Option<T>, DevmapperError> {
    match fs::read(path) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| DevmapperError::Other(format!("{} is not valid: {e}", path.display()))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(DevmapperError::io(format!("reading {}", path.display()), e)),
    }
}

fn write<T: Serialize>(path: &Path, value: &T) -> Result<(), DevmapperError> {
    let bytes = serde_json::to_vec(value).map_err(|e| DevmapperError::Other(e.to_string()))?;
    fsutil::atomic_write(path, &bytes, 0o600)
        .map_err(|e| DevmapperError::io(format!("writing {}", path.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(parent: Option<&str>) -> LayerRecord {
        LayerRecord {
            parent: parent.map(|p| LayerId::new(p).unwrap()),
            incomplete: false,
        }
    }

    #[test]
    fn records_survive_reopen_and_last_line_wins() {
        let home = tempfile::tempdir().unwrap();
        let s = Sidecar::open(home.path()).unwrap();
        s.save_layer("a", &rec(None)).unwrap();
        s.save_layer("b", &rec(Some("a"))).unwrap();
        s.forget_layer("a");
        s.save_layer("b", &rec(None)).unwrap();
        drop(s);
        let s = Sidecar::open(home.path()).unwrap();
        let (layers, broken) = s.load_layers();
        assert!(broken.is_empty(), "{broken:?}");
        assert_eq!(layers.len(), 1);
        assert_eq!(layers["b"], rec(None));
        s.compact().unwrap();
        let text = fs::read_to_string(home.path().join("thinsnap").join(JOURNAL)).unwrap();
        assert_eq!(
            text,
            "{\"id\":\"b\",\"layer\":{\"parent\":null,\"incomplete\":false}}\n"
        );
    }

    #[test]
    fn a_torn_last_line_is_cut_off_and_appends_stay_readable() {
        let home = tempfile::tempdir().unwrap();
        let s = Sidecar::open(home.path()).unwrap();
        s.save_layer("a", &rec(None)).unwrap();
        drop(s);
        let path = home.path().join("thinsnap").join(JOURNAL);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"id\":\"b\",\"lay").unwrap();
        drop(f);
        let s = Sidecar::open(home.path()).unwrap();
        s.save_layer("c", &rec(Some("a"))).unwrap();
        drop(s);
        let s = Sidecar::open(home.path()).unwrap();
        let (layers, broken) = s.load_layers();
        assert!(broken.is_empty(), "{broken:?}");
        assert_eq!(layers.keys().collect::<Vec<_>>(), ["a", "c"]);
    }

    #[test]
    fn a_corrupt_line_is_reported_by_line_and_the_rest_kept() {
        let home = tempfile::tempdir().unwrap();
        fs::create_dir_all(home.path().join("thinsnap")).unwrap();
        fs::write(
            home.path().join("thinsnap").join(JOURNAL),
            "{\"id\":\"a\",\"layer\":{\"parent\":null}}\nnot json\n{\"id\":\"b\",\"layer\":{\"parent\":\"a\"}}\n",
        )
        .unwrap();
        let s = Sidecar::open(home.path()).unwrap();
        let (layers, broken) = s.load_layers();
        assert_eq!(layers.len(), 2);
        assert_eq!(broken.len(), 1);
        assert!(broken[0].contains("line 2"), "{broken:?}");
    }

    #[test]
    fn legacy_files_are_folded_into_the_journal() {
        let home = tempfile::tempdir().unwrap();
        let legacy = home.path().join("thinsnap").join(LEGACY_DIR);
        fs::create_dir_all(&legacy).unwrap();
        fs::write(
            legacy.join("a.json"),
            b"{\"parent\":null,\"incomplete\":false}",
        )
        .unwrap();
        fs::write(
            legacy.join("b.json"),
            b"{\"parent\":\"a\",\"incomplete\":true}",
        )
        .unwrap();
        let s = Sidecar::open(home.path()).unwrap();
        s.compact().unwrap();
        assert!(!legacy.exists());
        drop(s);
        let s = Sidecar::open(home.path()).unwrap();
        let (layers, _) = s.load_layers();
        assert_eq!(layers["b"].parent.as_ref().map(|p| p.as_str()), Some("a"));
        assert!(layers["b"].incomplete);
    }

    #[test]
    fn the_journal_is_rewritten_when_it_outgrows_its_records() {
        let home = tempfile::tempdir().unwrap();
        let s = Sidecar::open(home.path()).unwrap();
        for _ in 0..(SLACK + 10) {
            s.save_layer("a", &rec(None)).unwrap();
        }
        let j = s.journal();
        assert!(j.lines <= SLACK, "{} lines", j.lines);
    }
}
