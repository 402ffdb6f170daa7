//! The gRPC adapter: containerd's `Snapshots` service (through the
//! `containerd-snapshots` crate's generated server) calling the blocking
//! business code on tokio's blocking pool. Thin on purpose: convert,
//! delegate, convert back.

use std::collections::HashMap;
use std::sync::Arc;

use containerd_snapshots::api::types::Mount;
use containerd_snapshots::tonic::Status;
use containerd_snapshots::{Info, Snapshotter, Usage};

use super::convert::{info_from_crate, info_to_crate, labels_in, mount_to_api, to_status};
use super::model::ServiceResult;
use super::snapshots::SnapshotService;

/// Serves one [`SnapshotService`] to any number of concurrent requests.
#[derive(Clone)]
pub struct GrpcFront {
    svc: Arc<SnapshotService>,
}

impl GrpcFront {
    pub fn new(svc: Arc<SnapshotService>) -> Self {
        GrpcFront { svc }
    }

    /// Runs `f` on the blocking pool: backend work (mkfs, snapshot ioctls,
    /// fsync) must never stall the async workers that accept requests.
    async fn blocking<T, F>(&self, f: F) -> Result<T, Status>
    where
        T: Send + 'static,
        F: FnOnce(&SnapshotService) -> ServiceResult<T> + Send + 'static,
    {
        let svc = self.svc.clone();
        match tokio::task::spawn_blocking(move || f(&svc)).await {
            Ok(result) => result.map_err(to_status),
            Err(e) => Err(Status::internal(format!("snapshot worker failed: {e}"))),
        }
    }
}

fn mounts_out(m: Vec<crate::snapshot::MountSpec>) -> Vec<Mount> {
    m.into_iter().map(mount_to_api).collect()
}

#[containerd_snapshots::tonic::async_trait]
impl Snapshotter for GrpcFront {
    type Error = Status;

    async fn stat(&self, key: String) -> Result<Info, Status> {
        self.blocking(move |s| s.stat(&key))
            .await
            .map(info_to_crate)
    }

    async fn update(&self, info: Info, fieldpaths: Option<Vec<String>>) -> Result<Info, Status> {
        let info = info_from_crate(info);
        let paths = fieldpaths.unwrap_or_default();
        self.blocking(move |s| s.update(&info, &paths))
            .await
            .map(info_to_crate)
    }

    async fn usage(&self, key: String) -> Result<Usage, Status> {
        let u = self.blocking(move |s| s.usage(&key)).await?;
        Ok(Usage {
            size: i64::try_from(u.size).unwrap_or(i64::MAX),
            inodes: i64::try_from(u.inodes).unwrap_or(i64::MAX),
        })
    }

    async fn mounts(&self, key: String) -> Result<Vec<Mount>, Status> {
        self.blocking(move |s| s.mounts(&key)).await.map(mounts_out)
    }

    async fn prepare(
        &self,
        key: String,
        parent: String,
        labels: HashMap<String, String>,
    ) -> Result<Vec<Mount>, Status> {
        let labels = labels_in(labels);
        self.blocking(move |s| s.prepare(&key, &parent, labels))
            .await
            .map(mounts_out)
    }

    async fn view(
        &self,
        key: String,
        parent: String,
        labels: HashMap<String, String>,
    ) -> Result<Vec<Mount>, Status> {
        let labels = labels_in(labels);
        self.blocking(move |s| s.view(&key, &parent, labels))
            .await
            .map(mounts_out)
    }

    async fn commit(
        &self,
        name: String,
        key: String,
        labels: HashMap<String, String>,
    ) -> Result<(), Status> {
        let labels = labels_in(labels);
        self.blocking(move |s| s.commit(&name, &key, labels)).await
    }

    async fn remove(&self, key: String) -> Result<(), Status> {
        self.blocking(move |s| s.remove(&key)).await
    }

    async fn clear(&self) -> Result<(), Status> {
        self.blocking(|s| s.cleanup().map(|_| ())).await
    }

    type InfoStream = tokio_stream::Iter<std::vec::IntoIter<Result<Info, Status>>>;

    async fn list(
        &self,
        _snapshotter: String,
        filters: Vec<String>,
    ) -> Result<Self::InfoStream, Status> {
        let infos = self.blocking(move |s| s.walk(&filters)).await?;
        let items: Vec<Result<Info, Status>> =
            infos.into_iter().map(|i| Ok(info_to_crate(i))).collect();
        Ok(tokio_stream::iter(items))
    }
}
