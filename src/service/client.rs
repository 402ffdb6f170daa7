//! A Rust client for containerd's Snapshots API over a unix socket, with
//! the service's own types (no protobuf in the caller). Used by the tests,
//! by `thinsnap snapshots ...`, and by the benchmark, which points it at
//! thinsnap's socket or at containerd's own socket (then set a namespace
//! and the snapshotter name, e.g. `devmapper`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use containerd_snapshots::api::snapshots::v1 as pb;
use containerd_snapshots::api::snapshots::v1::snapshots_client::SnapshotsClient;
use containerd_snapshots::tonic::transport::{Channel, Endpoint, Uri};
use containerd_snapshots::tonic::{Request, Status};
use futures::StreamExt;

use super::convert::{info_from_wire, info_to_wire, labels_out, mount_from_api};
use super::model::{SnapshotInfo, SnapshotUsage};
use crate::snapshot::MountSpec;

/// containerd's gRPC metadata key for the namespace.
pub const NAMESPACE_HEADER: &str = "containerd-namespace";

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("connecting to {}: {source}", .socket.display())]
    Connect {
        socket: PathBuf,
        #[source]
        source: containerd_snapshots::tonic::transport::Error,
    },
    #[error("{}", status_line(.0))]
    Status(Box<Status>),
    #[error("starting the client runtime: {0}")]
    Runtime(#[source] std::io::Error),
}

fn status_line(s: &Status) -> String {
    format!("{:?}: {}", s.code(), s.message())
}

impl From<Status> for ClientError {
    fn from(s: Status) -> Self {
        ClientError::Status(Box::new(s))
    }
}

impl ClientError {
    /// The gRPC code, when the server answered.
    pub fn code(&self) -> Option<containerd_snapshots::tonic::Code> {
        match self {
            ClientError::Status(s) => Some(s.code()),
            _ => None,
        }
    }
}

pub type ClientResult<T> = Result<T, ClientError>;

/// An async Snapshots client; cheap to clone (one shared HTTP/2 connection).
#[derive(Clone)]
pub struct Client {
    inner: SnapshotsClient<Channel>,
    snapshotter: String,
    namespace: Option<String>,
}

impl Client {
    /// Connects to the socket at `socket`.
    pub async fn connect(socket: &Path) -> ClientResult<Client> {
        let path = socket.to_path_buf();
        let connect_err = |source| ClientError::Connect {
            socket: socket.to_path_buf(),
            source,
        };
        // The URI is a placeholder: the connector ignores it and dials the socket.
        let channel = Endpoint::from_static("http://[::1]:1")
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                tokio::net::UnixStream::connect(path.clone())
            }))
            .await
            .map_err(connect_err)?;
        Ok(Client {
            inner: SnapshotsClient::new(channel),
            snapshotter: "thinsnap".into(),
            namespace: None,
        })
    }

    /// The `snapshotter` field sent with each request (containerd's own
    /// socket routes on it; thinsnap ignores it).
    pub fn with_snapshotter(mut self, name: &str) -> Self {
        self.snapshotter = name.to_string();
        self
    }

    /// Sends `containerd-namespace: <ns>` (needed on containerd's socket).
    pub fn with_namespace(mut self, ns: &str) -> Self {
        self.namespace = Some(ns.to_string());
        self
    }

    fn req<T>(&self, msg: T) -> Request<T> {
        let mut r = Request::new(msg);
        if let Some(ns) = &self.namespace
            && let Ok(v) = ns.parse()
        {
            r.metadata_mut().insert(NAMESPACE_HEADER, v);
        }
        r
    }

    pub async fn prepare(
        &mut self,
        key: &str,
        parent: &str,
        labels: &BTreeMap<String, String>,
    ) -> ClientResult<Vec<MountSpec>> {
        let r = self.req(pb::PrepareSnapshotRequest {
            snapshotter: self.snapshotter.clone(),
            key: key.into(),
            parent: parent.into(),
            labels: labels_out(labels.clone()),
        });
        let resp = self.inner.prepare(r).await?.into_inner();
        Ok(resp.mounts.into_iter().map(mount_from_api).collect())
    }

    pub async fn view(
        &mut self,
        key: &str,
        parent: &str,
        labels: &BTreeMap<String, String>,
    ) -> ClientResult<Vec<MountSpec>> {
        let r = self.req(pb::ViewSnapshotRequest {
            snapshotter: self.snapshotter.clone(),
            key: key.into(),
            parent: parent.into(),
            labels: labels_out(labels.clone()),
        });
        let resp = self.inner.view(r).await?.into_inner();
        Ok(resp.mounts.into_iter().map(mount_from_api).collect())
    }

    pub async fn mounts(&mut self, key: &str) -> ClientResult<Vec<MountSpec>> {
        let r = self.req(pb::MountsRequest {
            snapshotter: self.snapshotter.clone(),
            key: key.into(),
        });
        let resp = self.inner.mounts(r).await?.into_inner();
        Ok(resp.mounts.into_iter().map(mount_from_api).collect())
    }

    pub async fn commit(
        &mut self,
        name: &str,
        key: &str,
        labels: &BTreeMap<String, String>,
    ) -> ClientResult<()> {
        let r = self.req(pb::CommitSnapshotRequest {
            snapshotter: self.snapshotter.clone(),
            name: name.into(),
            key: key.into(),
            labels: labels_out(labels.clone()),
        });
        self.inner.commit(r).await?;
        Ok(())
    }

    pub async fn remove(&mut self, key: &str) -> ClientResult<()> {
        let r = self.req(pb::RemoveSnapshotRequest {
            snapshotter: self.snapshotter.clone(),
            key: key.into(),
        });
        self.inner.remove(r).await?;
        Ok(())
    }

    pub async fn stat(&mut self, key: &str) -> ClientResult<SnapshotInfo> {
        let r = self.req(pb::StatSnapshotRequest {
            snapshotter: self.snapshotter.clone(),
            key: key.into(),
        });
        let info = self
            .inner
            .stat(r)
            .await?
            .into_inner()
            .info
            .ok_or_else(|| Status::internal("Stat answered without info"))?;
        Ok(info_from_wire(info)?)
    }

    /// Updates the fields named by `paths` (`labels`, `labels.<k>`).
    pub async fn update(
        &mut self,
        info: &SnapshotInfo,
        paths: &[&str],
    ) -> ClientResult<SnapshotInfo> {
        let r = self.req(pb::UpdateSnapshotRequest {
            snapshotter: self.snapshotter.clone(),
            info: Some(info_to_wire(info.clone())),
            update_mask: Some(prost_types::FieldMask {
                paths: paths.iter().map(|p| p.to_string()).collect(),
            }),
        });
        let info = self
            .inner
            .update(r)
            .await?
            .into_inner()
            .info
            .ok_or_else(|| Status::internal("Update answered without info"))?;
        Ok(info_from_wire(info)?)
    }

    pub async fn usage(&mut self, key: &str) -> ClientResult<SnapshotUsage> {
        let r = self.req(pb::UsageRequest {
            snapshotter: self.snapshotter.clone(),
            key: key.into(),
        });
        let u = self.inner.usage(r).await?.into_inner();
        Ok(SnapshotUsage {
            size: u64::try_from(u.size).unwrap_or(0),
            inodes: u64::try_from(u.inodes).unwrap_or(0),
        })
    }

    /// `Walk`: every snapshot matching any of `filters`.
    pub async fn walk(&mut self, filters: &[&str]) -> ClientResult<Vec<SnapshotInfo>> {
        let r = self.req(pb::ListSnapshotsRequest {
            snapshotter: self.snapshotter.clone(),
            filters: filters.iter().map(|f| f.to_string()).collect(),
        });
        let mut stream = self.inner.list(r).await?.into_inner();
        let mut out = Vec::new();
        while let Some(batch) = stream.next().await {
            for info in batch?.info {
                out.push(info_from_wire(info)?);
            }
        }
        Ok(out)
    }

    pub async fn cleanup(&mut self) -> ClientResult<()> {
        let r = self.req(pb::CleanupRequest {
            snapshotter: self.snapshotter.clone(),
        });
        self.inner.cleanup(r).await?;
        Ok(())
    }
}

/// The same client for synchronous callers (CLI, plain `#[test]`s): owns a
/// small runtime and blocks on each call.
pub struct BlockingClient {
    rt: tokio::runtime::Runtime,
    client: Client,
}

impl BlockingClient {
    pub fn connect(socket: &Path) -> ClientResult<BlockingClient> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(ClientError::Runtime)?;
        let client = rt.block_on(Client::connect(socket))?;
        Ok(BlockingClient { rt, client })
    }

    /// Talks to another snapshotter behind the same socket (containerd's own
    /// socket serves all of them), in containerd namespace `ns`.
    pub fn for_snapshotter(mut self, name: &str, ns: &str) -> Self {
        self.client = self.client.with_snapshotter(name).with_namespace(ns);
        self
    }

    /// The async client, e.g. to clone it into concurrent tasks.
    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn runtime(&self) -> &tokio::runtime::Runtime {
        &self.rt
    }

    pub fn prepare(
        &mut self,
        key: &str,
        parent: &str,
        labels: &BTreeMap<String, String>,
    ) -> ClientResult<Vec<MountSpec>> {
        self.rt.block_on(self.client.prepare(key, parent, labels))
    }

    pub fn view(
        &mut self,
        key: &str,
        parent: &str,
        labels: &BTreeMap<String, String>,
    ) -> ClientResult<Vec<MountSpec>> {
        self.rt.block_on(self.client.view(key, parent, labels))
    }

    pub fn mounts(&mut self, key: &str) -> ClientResult<Vec<MountSpec>> {
        self.rt.block_on(self.client.mounts(key))
    }

    pub fn commit(
        &mut self,
        name: &str,
        key: &str,
        labels: &BTreeMap<String, String>,
    ) -> ClientResult<()> {
        self.rt.block_on(self.client.commit(name, key, labels))
    }

    pub fn remove(&mut self, key: &str) -> ClientResult<()> {
        self.rt.block_on(self.client.remove(key))
    }

    pub fn stat(&mut self, key: &str) -> ClientResult<SnapshotInfo> {
        self.rt.block_on(self.client.stat(key))
    }

    pub fn update(&mut self, info: &SnapshotInfo, paths: &[&str]) -> ClientResult<SnapshotInfo> {
        self.rt.block_on(self.client.update(info, paths))
    }

    pub fn usage(&mut self, key: &str) -> ClientResult<SnapshotUsage> {
        self.rt.block_on(self.client.usage(key))
    }

    pub fn walk(&mut self, filters: &[&str]) -> ClientResult<Vec<SnapshotInfo>> {
        self.rt.block_on(self.client.walk(filters))
    }

    pub fn cleanup(&mut self) -> ClientResult<()> {
        self.rt.block_on(self.client.cleanup())
    }
}
