//! Unit tests of the business logic over an in-memory fake backend:
//! containerd's semantics, error classes, and crash repair from every
//! intermediate state an interrupted operation can leave.

use super::*;
use crate::service::fake::FakeDriver;
use std::path::PathBuf;
use std::sync::atomic::Ordering;

struct World {
    _dir: tempfile::TempDir,
    fake: Arc<FakeDriver>,
    svc: SnapshotService,
    path: PathBuf,
}

fn world() -> World {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("records.redb");
    let fake = Arc::new(FakeDriver::default());
    let svc = SnapshotService::new(fake.clone(), RecordStore::open(&path).unwrap());
    World {
        _dir: dir,
        fake,
        svc,
        path,
    }
}

impl World {
    /// Simulates a restart: a new service over the same files and backend.
    fn restart(&mut self) -> RepairReport {
        let placeholder = RecordStore::open(&self._dir.path().join("placeholder.redb")).unwrap();
        let old = std::mem::replace(
            &mut self.svc,
            SnapshotService::new(self.fake.clone(), placeholder),
        );
        drop(old);
        self.svc = SnapshotService::new(self.fake.clone(), RecordStore::open(&self.path).unwrap());
        self.svc.repair().unwrap()
    }

    fn layer_count(&self) -> usize {
        self.fake.layers.lock().unwrap().len()
    }
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn committed(w: &World, name: &str, parent: &str) {
    let key = format!("{name}-active");
    w.svc.prepare(&key, parent, BTreeMap::new()).unwrap();
    w.svc.commit(name, &key, BTreeMap::new()).unwrap();
}

#[test]
fn basic_lifecycle_with_slash_keys() {
    let w = world();
    let mounts = w
        .svc
        .prepare("default/1/sha256:aa", "", labels(&[("a", "1")]))
        .unwrap();
    assert_eq!(mounts.len(), 1);
    assert!(!mounts[0].is_readonly());
    let st = w.svc.stat("default/1/sha256:aa").unwrap();
    assert_eq!(st.kind, Kind::Active);
    assert_eq!(st.parent, None);
    assert_eq!(st.labels, labels(&[("a", "1")]));

    w.svc
        .commit("sha256:base", "default/1/sha256:aa", labels(&[("c", "2")]))
        .unwrap();
    assert!(matches!(
        w.svc.stat("default/1/sha256:aa"),
        Err(ServiceError::NotFound { .. })
    ));
    let base = w.svc.stat("sha256:base").unwrap();
    assert_eq!(base.kind, Kind::Committed);
    assert_eq!(base.labels, labels(&[("c", "2")]));
    // Commit keeps the layer: still one backend layer.
    assert_eq!(w.layer_count(), 1);

    let view = w
        .svc
        .view("default/2/view", "sha256:base", BTreeMap::new())
        .unwrap();
    assert!(view[0].is_readonly());
    let child = w
        .svc
        .prepare("default/3/child", "sha256:base", BTreeMap::new())
        .unwrap();
    assert!(!child[0].is_readonly());
    assert_eq!(
        w.svc.stat("default/3/child").unwrap().parent.as_deref(),
        Some("sha256:base")
    );
    assert_eq!(w.svc.mounts("default/2/view").unwrap(), view);
    assert!(matches!(
        w.svc.mounts("sha256:base"),
        Err(ServiceError::FailedPrecondition(_))
    ));

    // Parent with children cannot go.
    let e = w.svc.remove("sha256:base").unwrap_err();
    assert!(matches!(e, ServiceError::FailedPrecondition(_)), "{e}");
    assert!(e.to_string().contains("default/2/view"), "{e}");
    w.svc.remove("default/2/view").unwrap();
    w.svc.remove("default/3/child").unwrap();
    w.svc.remove("sha256:base").unwrap();
    assert_eq!(w.layer_count(), 0);
    assert!(w.svc.walk(&[]).unwrap().is_empty());
}

#[test]
fn error_classes() {
    let w = world();
    committed(&w, "base", "");
    w.svc.prepare("k", "base", BTreeMap::new()).unwrap();
    // Same key twice, for Prepare and for View.
    assert!(matches!(
        w.svc.prepare("k", "base", BTreeMap::new()),
        Err(ServiceError::AlreadyExists { .. })
    ));
    assert!(matches!(
        w.svc.view("k", "base", BTreeMap::new()),
        Err(ServiceError::AlreadyExists { .. })
    ));
    // Parent missing / not committed.
    assert!(matches!(
        w.svc.prepare("x", "nope", BTreeMap::new()),
        Err(ServiceError::NotFound { .. })
    ));
    assert!(matches!(
        w.svc.prepare("x", "k", BTreeMap::new()),
        Err(ServiceError::InvalidArgument(_))
    ));
    // Commit of a view or of a committed snapshot.
    w.svc.view("v", "base", BTreeMap::new()).unwrap();
    assert!(matches!(
        w.svc.commit("n", "v", BTreeMap::new()),
        Err(ServiceError::FailedPrecondition(_))
    ));
    assert!(matches!(
        w.svc.commit("n", "base", BTreeMap::new()),
        Err(ServiceError::FailedPrecondition(_))
    ));
    // Commit onto an existing name.
    assert!(matches!(
        w.svc.commit("base", "k", BTreeMap::new()),
        Err(ServiceError::AlreadyExists { .. })
    ));
    assert!(matches!(
        w.svc.remove("missing"),
        Err(ServiceError::NotFound { .. })
    ));
    assert!(matches!(
        w.svc.prepare("", "", BTreeMap::new()),
        Err(ServiceError::InvalidArgument(_))
    ));
    assert!(matches!(
        w.svc.walk(&["name==\"open".to_string()]),
        Err(ServiceError::InvalidArgument(_))
    ));
    // Nothing failed above left a layer or a half record behind.
    assert_eq!(w.layer_count(), 3);
    assert_eq!(w.svc.walk(&[]).unwrap().len(), 3);
}

#[test]
fn transitivity_and_key_reuse() {
    let w = world();
    committed(&w, "a", "");
    committed(&w, "b", "a");
    committed(&w, "c", "b");
    assert_eq!(w.svc.stat("c").unwrap().parent.as_deref(), Some("b"));
    assert_eq!(
        w.fake
            .parent(&LayerId::new("snap-3").unwrap())
            .unwrap()
            .unwrap()
            .as_str(),
        "snap-2"
    );
    w.svc.remove("c").unwrap();
    // The name is free again, and a key can be reused after remove.
    committed(&w, "c", "b");
    w.svc.prepare("tmp", "c", BTreeMap::new()).unwrap();
    w.svc.remove("tmp").unwrap();
    w.svc.prepare("tmp", "c", BTreeMap::new()).unwrap();
    assert_eq!(w.svc.stat("tmp").unwrap().parent.as_deref(), Some("c"));
}

#[test]
fn update_semantics() {
    let w = world();
    w.svc
        .prepare("k", "", labels(&[("keep", "1"), ("drop", "2")]))
        .unwrap();
    let before = w.svc.stat("k").unwrap();
    std::thread::sleep(std::time::Duration::from_millis(5));
    let mut info = before.clone();
    info.labels = labels(&[("new", "3")]);
    // labels.<k>: set one, delete one absent from info, leave the rest.
    let after = w
        .svc
        .update(&info, &["labels.new".into(), "labels.drop".into()])
        .unwrap();
    assert_eq!(after.labels, labels(&[("keep", "1"), ("new", "3")]));
    assert!(after.updated > before.updated);
    assert_eq!(after.created, before.created);
    // labels (or no paths): replace everything.
    let after = w.svc.update(&info, &["labels".into()]).unwrap();
    assert_eq!(after.labels, labels(&[("new", "3")]));
    info.labels = labels(&[("only", "x")]);
    let after = w.svc.update(&info, &[]).unwrap();
    assert_eq!(after.labels, labels(&[("only", "x")]));
    // Immutable fields.
    for path in ["name", "parent", "kind", "created_at"] {
        assert!(
            matches!(
                w.svc.update(&info, &[path.to_string()]),
                Err(ServiceError::InvalidArgument(_))
            ),
            "{path}"
        );
    }
    assert_eq!(w.svc.stat("k").unwrap().labels, labels(&[("only", "x")]));
    info.name = "missing".into();
    assert!(matches!(
        w.svc.update(&info, &[]),
        Err(ServiceError::NotFound { .. })
    ));
}

#[test]
fn walk_with_filters_and_usage() {
    let w = world();
    committed(&w, "base", "");
    w.svc
        .prepare("run", "base", labels(&[("tier", "app")]))
        .unwrap();
    w.svc.view("look", "base", BTreeMap::new()).unwrap();
    let names = |f: &[&str]| -> Vec<String> {
        let f: Vec<String> = f.iter().map(|s| s.to_string()).collect();
        w.svc
            .walk(&f)
            .unwrap()
            .into_iter()
            .map(|i| i.name)
            .collect()
    };
    assert_eq!(names(&[]), ["base", "look", "run"]);
    assert_eq!(names(&["kind==view"]), ["look"]);
    assert_eq!(names(&["parent==base,labels.tier==app"]), ["run"]);
    assert_eq!(names(&["kind==committed", "kind==view"]), ["base", "look"]);
    let u = w.svc.usage("run").unwrap();
    assert_eq!((u.size, u.inodes), (4096, 1));
    assert!(matches!(
        w.svc.usage("zzz"),
        Err(ServiceError::NotFound { .. })
    ));
}

#[test]
fn backend_failures_leave_nothing_behind() {
    let w = world();
    committed(&w, "base", "");
    w.fake.fail_create.store(true, Ordering::SeqCst);
    let e = w.svc.prepare("k", "base", BTreeMap::new()).unwrap_err();
    assert!(matches!(e, ServiceError::Backend { .. }), "{e}");
    w.fake.fail_create.store(false, Ordering::SeqCst);
    assert!(w.svc.records().get("k").unwrap().is_none());
    // The parent link went with it: base is removable.
    w.svc.prepare("k", "base", BTreeMap::new()).unwrap();
    w.fake.fail_remove.store(true, Ordering::SeqCst);
    assert!(w.svc.remove("k").is_err());
    w.fake.fail_remove.store(false, Ordering::SeqCst);
    // A failed remove puts the snapshot back in service.
    assert_eq!(w.svc.stat("k").unwrap().kind, Kind::Active);
    w.svc.remove("k").unwrap();
    w.svc.remove("base").unwrap();
    assert_eq!(w.layer_count(), 0);
}

/// Writes `record` as an interrupted operation would have left it.
fn plant(w: &World, record: &Record) {
    w.svc
        .records()
        .write(|t| {
            t.put(record)?;
            if let Some(p) = &record.parent {
                t.link(p, &record.key)?;
            }
            Ok(())
        })
        .unwrap();
}

fn intent(key: &str, layer: &str, parent: Option<&str>, state: RecordState) -> Record {
    Record {
        key: key.into(),
        kind: Kind::Active,
        parent: parent.map(Into::into),
        labels: BTreeMap::new(),
        created: SystemTime::now(),
        updated: SystemTime::now(),
        layer: LayerId::new(layer).unwrap(),
        state,
    }
}

#[test]
fn repair_every_interrupted_state() {
    let mut w = world();
    committed(&w, "base", "");
    let base_layer = w.svc.records().get("base").unwrap().unwrap().layer;
    // 1. Prepare killed after the intent, before the backend: record only.
    plant(
        &w,
        &intent("p1", "snap-101", Some("base"), RecordState::Creating),
    );
    // 2. Prepare killed after the backend, before Ready: record + layer.
    plant(
        &w,
        &intent("p2", "snap-102", Some("base"), RecordState::Creating),
    );
    w.fake
        .create(
            &LayerId::new("snap-102").unwrap(),
            Some(&base_layer),
            &CreateOpts::default(),
        )
        .unwrap();
    // 3. Remove killed after marking, before the backend: record + layer.
    w.svc.prepare("r1", "base", BTreeMap::new()).unwrap();
    let mut r1 = w.svc.records().get("r1").unwrap().unwrap();
    r1.state = RecordState::Removing;
    w.svc.records().write(|t| t.put(&r1)).unwrap();
    // 4. Remove killed after the backend, before the record went: record only.
    plant(
        &w,
        &intent("r2", "snap-104", Some("base"), RecordState::Removing),
    );
    // 5. A service layer without any record, and a CLI layer (no prefix).
    w.fake
        .create(
            &LayerId::new("snap-105").unwrap(),
            None,
            &CreateOpts::default(),
        )
        .unwrap();
    w.fake
        .create(
            &LayerId::new("snap-106").unwrap(),
            Some(&LayerId::new("snap-105").unwrap()),
            &CreateOpts::default(),
        )
        .unwrap();
    w.fake
        .create(
            &LayerId::new("docker-layer").unwrap(),
            None,
            &CreateOpts::default(),
        )
        .unwrap();
    // 6. A ready record whose layer someone deleted behind our back.
    w.svc.prepare("lost", "base", BTreeMap::new()).unwrap();
    let lost_layer = w.svc.records().get("lost").unwrap().unwrap().layer;
    w.fake.layers.lock().unwrap().remove(&lost_layer);

    let report = w.restart();
    assert_eq!(report.rolled_back, ["p1", "p2"]);
    assert_eq!(report.finished_removals, ["r1", "r2"]);
    assert_eq!(report.orphan_layers, ["snap-106", "snap-105"]);
    assert_eq!(report.dropped_records, ["lost"]);

    // Consistent: every record has a layer, every service layer a record.
    let records = w.svc.records().all().unwrap();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].key, "base");
    let mut layers: Vec<String> = w
        .fake
        .list()
        .unwrap()
        .into_iter()
        .map(|l| l.id.to_string())
        .collect();
    layers.sort();
    assert_eq!(layers, ["docker-layer", base_layer.as_str()]);
    // The parent is free of phantom children, and the keys are reusable.
    w.svc.prepare("p2", "base", BTreeMap::new()).unwrap();
    w.svc.remove("p2").unwrap();
    w.svc.remove("base").unwrap();
    // A second repair finds nothing.
    assert!(w.restart().is_empty());
}

#[test]
fn cleanup_leaves_in_flight_keys_alone() {
    let w = world();
    plant(&w, &intent("busy", "snap-50", None, RecordState::Creating));
    let held = w.svc.locks.lock(&["busy"]);
    let report = w.svc.cleanup().unwrap();
    assert!(report.rolled_back.is_empty());
    assert!(w.svc.records().get("busy").unwrap().is_some());
    drop(held);
    let report = w.svc.cleanup().unwrap();
    assert_eq!(report.rolled_back, ["busy"]);
}

#[test]
fn concurrent_prepares_on_one_parent() {
    let w = Arc::new(world());
    committed(&w, "base", "");
    let mut threads = Vec::new();
    for i in 0..16 {
        let w = w.clone();
        threads.push(std::thread::spawn(move || {
            for j in 0..10 {
                let key = format!("default/{i}/{j}");
                w.svc.prepare(&key, "base", BTreeMap::new()).unwrap();
                if j % 2 == 0 {
                    w.svc
                        .commit(&format!("c-{i}-{j}"), &key, BTreeMap::new())
                        .unwrap();
                } else {
                    w.svc.remove(&key).unwrap();
                }
            }
        }));
    }
    for t in threads {
        t.join().unwrap();
    }
    let all = w.svc.walk(&[]).unwrap();
    assert_eq!(all.len(), 1 + 16 * 5);
    assert_eq!(w.layer_count(), 1 + 16 * 5);
    // Layer ids are unique.
    let layers: HashSet<String> = w
        .svc
        .records()
        .all()
        .unwrap()
        .into_iter()
        .map(|r| r.layer.to_string())
        .collect();
    assert_eq!(layers.len(), all.len());
    assert_eq!(w.svc.locks.held_count(), 0);
}

fn background_world(workers: usize) -> World {
    let mut w = world();
    let svc = std::mem::replace(
        &mut w.svc,
        SnapshotService::new(
            w.fake.clone(),
            RecordStore::open(&w._dir.path().join("placeholder.redb")).unwrap(),
        ),
    );
    drop(svc);
    w.svc = SnapshotService::new(w.fake.clone(), RecordStore::open(&w.path).unwrap())
        .with_background_removal(workers)
        .unwrap();
    w
}

#[test]
fn background_remove_frees_keys_at_once_and_deletes_children_first() {
    let w = background_world(3);
    w.fake.remove_delay_ms.store(30, Ordering::SeqCst);
    committed(&w, "base", "");
    committed(&w, "mid", "base");
    w.svc.prepare("top", "mid", BTreeMap::new()).unwrap();
    for i in 0..5 {
        w.svc
            .prepare(&format!("c{i}"), "base", BTreeMap::new())
            .unwrap();
    }
    let started = std::time::Instant::now();
    // Parents right after their children: each call returns at once.
    for k in ["top", "mid", "c0", "c1", "c2", "c3", "c4", "base"] {
        w.svc.remove(k).unwrap();
    }
    assert!(
        started.elapsed() < std::time::Duration::from_millis(8 * 30),
        "removes waited for the backend: {:?}",
        started.elapsed()
    );
    assert!(w.svc.walk(&[]).unwrap().is_empty());
    // The key is free before its old layer is gone.
    w.svc.prepare("top", "", BTreeMap::new()).unwrap();
    // Cleanup waits for the queue; nothing failed on the way (a parent
    // deleted before its child would have been refused by the fake).
    w.svc.cleanup().unwrap();
    let st = w.svc.remover_status().unwrap();
    assert_eq!((st.pending, st.failing), (0, 0), "{st:?}");
    assert_eq!(w.layer_count(), 1);
    assert!(w.svc.records().removals().unwrap().is_empty());
}

#[test]
fn a_failing_background_removal_is_retried_shown_and_survives_a_restart() {
    let mut w = background_world(1);
    committed(&w, "base", "");
    w.svc.prepare("held", "base", BTreeMap::new()).unwrap();
    w.fake.fail_remove.store(true, Ordering::SeqCst);
    w.svc.remove("held").unwrap();
    assert!(matches!(
        w.svc.stat("held"),
        Err(ServiceError::NotFound { .. })
    ));
    // Its parent still cannot go before it: the remover orders them.
    w.svc.remove("base").unwrap();
    assert_eq!(w.svc.cleanup().unwrap(), RepairReport::default());
    let st = w.svc.remover_status().unwrap();
    assert_eq!(st.pending, 2);
    assert_eq!(st.failing, 1, "{st:?}");
    assert!(st.last_error.unwrap().contains("held"));
    let status = w.svc.status().unwrap();
    assert!(
        status
            .iter()
            .any(|(k, v)| k == "Pending Removals" && v == "2"),
        "{status:?}"
    );
    assert_eq!(w.layer_count(), 2);
    // A restart (the device was released meanwhile) finishes both.
    w.fake.fail_remove.store(false, Ordering::SeqCst);
    let report = w.restart();
    let mut finished = report.finished_removals.clone();
    finished.sort();
    assert_eq!(finished, ["base", "held"], "{report:?}");
    assert_eq!(w.layer_count(), 0);
    assert!(w.svc.records().removals().unwrap().is_empty());
}
