//! The `thinsnap serve` process: take the root, open the store and the
//! records, repair, listen, serve until SIGTERM/SIGINT, then stop accepting,
//! let in-flight requests finish, and remove the socket.

use std::path::PathBuf;
use std::sync::Arc;

use containerd_snapshots::tonic::transport::Server;
use tokio::signal::unix::{SignalKind, signal};
use tokio_stream::wrappers::UnixListenerStream;

use super::config::ServeConfig;
use super::grpc::GrpcFront;
use super::instance::{self, InstanceInfo, SERVICE_DIR};
use super::published::{self, PUBLISH_INTERVAL, Published};
use super::records::{RecordError, RecordStore};
use super::snapshots::SnapshotService;
use super::socket::{self, SocketError};
use crate::snapshot::SnapshotError;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Instance(#[from] instance::InstanceError),
    #[error(transparent)]
    Socket(#[from] SocketError),
    #[error("opening the {driver} store at {}: {source}", .root.display())]
    Backend {
        driver: String,
        root: PathBuf,
        #[source]
        source: SnapshotError,
    },
    #[error(transparent)]
    Records(#[from] RecordError),
    #[error("repairing snapshot records at start-up: {0}")]
    Repair(#[source] super::model::ServiceError),
    #[error("{context}: {source}")]
    Io {
        context: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("gRPC server: {0}")]
    Transport(#[from] containerd_snapshots::tonic::transport::Error),
}

/// Where the records of `driver` under `root` live.
pub fn records_path(root: &std::path::Path, driver: &str) -> PathBuf {
    root.join(SERVICE_DIR).join(driver).join("records.redb")
}

/// The store as the service opens it. containerd mounts a devicemapper
/// snapshot's block device itself, so the layer must be the filesystem's
/// root: a new devicemapper store gets `thinsnap.layout=flat` unless the
/// options say otherwise (an existing Docker-layout store is then refused at
/// start with a sentence naming the option, not at the first Mounts call).
pub fn service_store(
    store: &crate::backend::StoreConfig,
    driver: &str,
) -> crate::backend::StoreConfig {
    let mut out = store.clone();
    let has_layout = store
        .storage_opts
        .iter()
        .any(|o| o.trim_start().starts_with("thinsnap.layout"));
    if driver == "devicemapper" && !has_layout {
        out.storage_opts.push("thinsnap.layout=flat".into());
    }
    out
}

/// Serves until a termination signal; returns after a clean shutdown.
pub fn run(config: &ServeConfig) -> Result<(), ServeError> {
    let store = &config.store;
    let _lock = instance::acquire(
        &store.root,
        &InstanceInfo {
            pid: std::process::id(),
            socket: config.socket.clone(),
            driver: store.driver.clone(),
        },
    )?;
    let backend_error = |source| ServeError::Backend {
        driver: store.driver.clone(),
        root: store.root.clone(),
        source,
    };
    let choice = crate::backend::choose(store).map_err(backend_error)?;
    let store = &service_store(store, &choice.driver);
    let driver = crate::backend::open_named(&choice.driver, store).map_err(backend_error)?;
    let driver: Arc<dyn crate::snapshot::Driver> = Arc::from(driver);
    let records_file = records_path(&store.root, driver.name());
    if let Some(dir) = records_file.parent() {
        crate::fsutil::ensure_dir(dir, 0o700).map_err(|source| ServeError::Io {
            context: "creating the record directory",
            source,
        })?;
    }
    let records = RecordStore::open(&records_file)?;
    let mut svc = SnapshotService::new(driver.clone(), records);
    if config.remove_workers > 0 {
        svc = svc
            .with_background_removal(config.remove_workers)
            .map_err(ServeError::Repair)?;
    }
    let svc = Arc::new(svc);
    let report = svc.repair().map_err(ServeError::Repair)?;
    if !report.is_empty() {
        tracing::warn!(?report, "repaired state left by an interrupted run");
    }
    let listener = socket::bind(&config.socket)?;
    listener
        .set_nonblocking(true)
        .map_err(|source| ServeError::Io {
            context: "making the socket non-blocking",
            source,
        })?;
    tracing::info!(
        socket = %config.socket.display(),
        root = %store.root.display(),
        driver = driver.name(),
        config = ?config.file,
        "serving containerd snapshots"
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("thinsnap-serve")
        .build()
        .map_err(|source| ServeError::Io {
            context: "starting the async runtime",
            source,
        })?;
    let served = runtime.block_on(async {
        let listener =
            tokio::net::UnixListener::from_std(listener).map_err(|source| ServeError::Io {
                context: "registering the socket",
                source,
            })?;
        let shutdown = shutdown_signal()?;
        let publisher = tokio::spawn(publish_loop(svc.clone(), store.root.clone()));
        let served = serve_listener(listener, svc.clone(), shutdown).await;
        publisher.abort();
        served?;
        Ok::<(), ServeError>(())
    });
    // Blocking work already handed to the pool finishes before the runtime goes.
    runtime.shutdown_timeout(std::time::Duration::from_secs(60));
    socket::unlink(&config.socket);
    let _ = std::fs::remove_file(published::path(&store.root));
    // Removals already answered are finished; a stuck one stays queued.
    svc.finish_removals(std::time::Duration::from_secs(60));
    // As Docker's daemon did on shutdown: deactivate what nobody uses (a
    // devicemapper pool this store created goes too when no device is left
    // in use; devices a client still has mounted stay, and say so).
    if let Err(e) = driver.cleanup() {
        tracing::warn!(error = %e, "shutdown left some devices active");
    }
    tracing::info!("stopped");
    served
}

/// How long a shutdown waits for connections to go away. containerd keeps
/// its connection open for as long as it runs, so waiting for every client
/// to hang up would hang `systemctl stop`.
pub const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// Serves `svc` on `listener` until `shutdown` resolves, then stops
/// accepting, lets requests in flight answer for up to [`SHUTDOWN_GRACE`]
/// and closes the connections still open. Work already handed to the
/// blocking pool runs to its end either way (the caller's runtime shutdown
/// waits for it), and every operation is crash-safe besides.
pub async fn serve_listener(
    listener: tokio::net::UnixListener,
    svc: Arc<SnapshotService>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), ServeError> {
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = Server::builder()
        .add_service(containerd_snapshots::server(Arc::new(GrpcFront::new(svc))))
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), async {
            let _ = stop_rx.await;
        });
    tokio::pin!(server);
    tokio::select! {
        served = &mut server => return Ok(served?),
        _ = shutdown => {}
    }
    let _ = stop_tx.send(());
    match tokio::time::timeout(SHUTDOWN_GRACE, &mut server).await {
        Ok(served) => served?,
        Err(_) => tracing::info!(
            grace = ?SHUTDOWN_GRACE,
            "clients still connected at shutdown; closing their connections"
        ),
    }
    Ok(())
}

/// Keeps `published::path` current for `thinsnap status` / `ls` (see
/// `published`): writes at start, then whenever the state changed.
async fn publish_loop(svc: Arc<SnapshotService>, root: PathBuf) {
    let mut last: Option<Published> = None;
    let mut tick = tokio::time::interval(PUBLISH_INTERVAL);
    loop {
        tick.tick().await;
        let d = svc.driver().clone();
        let taken = tokio::task::spawn_blocking(move || Published::take(d.as_ref())).await;
        let now = match taken {
            Ok(Ok(mut p)) => {
                // Removals still queued are part of what an admin must see.
                if let Some(r) = svc.remover_status() {
                    p.status.extend(r.rows());
                }
                p
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot take the store's status for the CLI");
                continue;
            }
            Err(_) => continue,
        };
        if last.as_ref().is_some_and(|l| l.same_state(&now)) {
            continue;
        }
        let root = root.clone();
        let copy = now.clone();
        match tokio::task::spawn_blocking(move || published::write(&root, &copy)).await {
            Ok(Ok(())) => last = Some(now),
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot publish the store's status"),
            Err(_) => {}
        }
    }
}

/// Resolves on the first SIGTERM or SIGINT.
fn shutdown_signal() -> Result<impl std::future::Future<Output = ()>, ServeError> {
    let io = |source| ServeError::Io {
        context: "installing signal handlers",
        source,
    };
    let mut term = signal(SignalKind::terminate()).map_err(io)?;
    let mut int = signal(SignalKind::interrupt()).map_err(io)?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = int.recv() => tracing::info!("SIGINT: shutting down"),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::StoreConfig;

    fn store(opts: &[&str]) -> StoreConfig {
        StoreConfig {
            root: "/r".into(),
            driver: "auto".into(),
            storage_opts: opts.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn devicemapper_defaults_to_flat_layout_only_when_unset() {
        let s = service_store(&store(&["dm.fs=xfs"]), "devicemapper");
        assert_eq!(s.storage_opts, ["dm.fs=xfs", "thinsnap.layout=flat"]);
        let s = service_store(&store(&["thinsnap.layout=docker"]), "devicemapper");
        assert_eq!(s.storage_opts, ["thinsnap.layout=docker"]);
        let s = service_store(&store(&[]), "overlay2");
        assert!(s.storage_opts.is_empty());
    }
}
