//! The gRPC front end end to end, in process: a real unix socket, the real
//! tonic server and the Rust client, over the fake backend. Checks what
//! containerd sees: status codes, streaming Walk, field masks, concurrency
//! and graceful shutdown.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use containerd_snapshots::tonic::Code;

use super::client::Client;
use super::fake::FakeDriver;
use super::model::Kind;
use super::records::RecordStore;
use super::server::serve_listener;
use super::snapshots::SnapshotService;

struct Served {
    _dir: tempfile::TempDir,
    socket: std::path::PathBuf,
    fake: Arc<FakeDriver>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

async fn serve() -> Served {
    let dir = tempfile::tempdir().unwrap();
    let fake = Arc::new(FakeDriver::default());
    let records = RecordStore::open(&dir.path().join("r.redb")).unwrap();
    let svc = Arc::new(SnapshotService::new(fake.clone(), records));
    let socket = dir.path().join("s.sock");
    let std_listener = super::socket::bind(&socket).unwrap();
    std_listener.set_nonblocking(true).unwrap();
    let listener = tokio::net::UnixListener::from_std(std_listener).unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        serve_listener(listener, svc, async {
            let _ = rx.await;
        })
        .await
        .unwrap();
    });
    Served {
        _dir: dir,
        socket,
        fake,
        stop: Some(tx),
        task,
    }
}

fn code<T>(r: Result<T, super::client::ClientError>) -> Option<Code> {
    r.err().and_then(|e| e.code())
}

fn none() -> BTreeMap<String, String> {
    BTreeMap::new()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn codes_walk_update_usage_over_the_wire() {
    let s = serve().await;
    let mut c = Client::connect(&s.socket).await.unwrap();
    let m = c.prepare("default/1/a", "", &none()).await.unwrap();
    assert_eq!(m[0].kind, "bind");
    assert_eq!(
        code(c.prepare("default/1/a", "", &none()).await),
        Some(Code::AlreadyExists)
    );
    assert_eq!(code(c.stat("nope").await), Some(Code::NotFound));
    assert_eq!(
        code(c.prepare("x", "default/1/a", &none()).await),
        Some(Code::InvalidArgument),
        "parent must be committed"
    );
    c.commit("base", "default/1/a", &none()).await.unwrap();
    c.view("default/2/v", "base", &none()).await.unwrap();
    assert_eq!(
        code(c.commit("n", "default/2/v", &none()).await),
        Some(Code::FailedPrecondition)
    );
    assert_eq!(code(c.remove("base").await), Some(Code::FailedPrecondition));
    assert_eq!(code(c.walk(&["name=="]).await), Some(Code::InvalidArgument));

    let mut labels = BTreeMap::new();
    labels.insert("containerd.io/gc.root".to_string(), "x".to_string());
    c.prepare("default/3/r", "base", &labels).await.unwrap();
    let found = c
        .walk(&["labels.\"containerd.io/gc.root\"", "kind==view"])
        .await
        .unwrap();
    let names: Vec<_> = found.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(names, ["default/2/v", "default/3/r"]);

    let mut info = c.stat("default/3/r").await.unwrap();
    assert_eq!(info.kind, Kind::Active);
    assert_eq!(info.parent.as_deref(), Some("base"));
    info.labels.clear();
    info.labels.insert("new".into(), "1".into());
    let updated = c
        .update(&info, &["labels.new", "labels.containerd.io/gc.root"])
        .await
        .unwrap();
    assert_eq!(updated.labels.len(), 1);
    assert_eq!(updated.labels["new"], "1");
    assert_eq!(
        code(c.update(&info, &["parent"]).await),
        Some(Code::InvalidArgument)
    );
    let u = c.usage("base").await.unwrap();
    assert_eq!((u.size, u.inodes), (4096, 1));
    c.cleanup().await.unwrap();
    assert_eq!(c.mounts("default/2/v").await.unwrap().len(), 1);
    assert!(c.mounts("default/2/v").await.unwrap()[0].is_readonly());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_concurrent_clients() {
    let s = serve().await;
    // Slow creates: requests must overlap, not queue behind one another.
    s.fake.create_delay_ms.store(20, Ordering::SeqCst);
    let mut c = Client::connect(&s.socket).await.unwrap();
    c.prepare("base-active", "", &none()).await.unwrap();
    c.commit("base", "base-active", &none()).await.unwrap();
    let started = std::time::Instant::now();
    let mut tasks = Vec::new();
    for i in 0..16 {
        let socket = s.socket.clone();
        tasks.push(tokio::spawn(async move {
            let mut c = Client::connect(&socket).await.unwrap();
            for j in 0..5 {
                let key = format!("default/{i}/{j}");
                c.prepare(&key, "base", &none()).await.unwrap();
                if j % 2 == 0 {
                    c.commit(&format!("c/{i}/{j}"), &key, &none())
                        .await
                        .unwrap();
                } else {
                    c.remove(&key).await.unwrap();
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let serial = std::time::Duration::from_millis(20 * 16 * 5);
    assert!(
        started.elapsed() < serial,
        "16 clients took {:?}, as long as running them one by one ({serial:?})",
        started.elapsed()
    );
    let all = c.walk(&["kind==committed"]).await.unwrap();
    assert_eq!(all.len(), 1 + 16 * 3);
    assert_eq!(s.fake.layers.lock().unwrap().len(), 1 + 16 * 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_requests_in_flight() {
    let mut s = serve().await;
    s.fake.create_delay_ms.store(400, Ordering::SeqCst);
    let mut c = Client::connect(&s.socket).await.unwrap();
    let slow = tokio::spawn(async move { c.prepare("slow", "", &none()).await });
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    s.stop.take().unwrap().send(()).unwrap();
    let result = slow.await.unwrap();
    assert!(result.is_ok(), "{:?}", result.err());
    s.task.await.unwrap();
    assert!(s.fake.layers.lock().unwrap().len() == 1);
    // The listener is gone: nobody answers any more.
    assert!(Client::connect(&s.socket).await.is_err());
}
