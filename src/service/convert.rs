//! Translation between the service's types and containerd's generated API
//! types, and from errors to gRPC status codes. The only module (with
//! `grpc` and `client`) that sees protobuf types.

use std::collections::{BTreeMap, HashMap};
use std::time::SystemTime;

use containerd_snapshots::api::snapshots::v1 as pb;
use containerd_snapshots::api::types::Mount;
use containerd_snapshots::tonic::{Code, Status};

use super::model::{Kind, ServiceError, SnapshotInfo};
use crate::snapshot::{ErrorKind, MountSpec};

pub fn mount_to_api(m: MountSpec) -> Mount {
    Mount {
        r#type: m.kind,
        source: m.source,
        target: m
            .target
            .map(|t| t.display().to_string())
            .unwrap_or_default(),
        options: m.options,
    }
}

pub fn mount_from_api(m: Mount) -> MountSpec {
    MountSpec {
        kind: m.r#type,
        source: m.source,
        target: (!m.target.is_empty()).then(|| m.target.into()),
        options: m.options,
    }
}

pub fn kind_to_crate(k: Kind) -> containerd_snapshots::Kind {
    match k {
        Kind::View => containerd_snapshots::Kind::View,
        Kind::Active => containerd_snapshots::Kind::Active,
        Kind::Committed => containerd_snapshots::Kind::Committed,
    }
}

pub fn kind_from_wire(k: i32) -> Option<Kind> {
    match k {
        1 => Some(Kind::View),
        2 => Some(Kind::Active),
        3 => Some(Kind::Committed),
        _ => None,
    }
}

pub fn kind_to_wire(k: Kind) -> i32 {
    match k {
        Kind::View => 1,
        Kind::Active => 2,
        Kind::Committed => 3,
    }
}

pub fn labels_in(labels: HashMap<String, String>) -> BTreeMap<String, String> {
    labels.into_iter().collect()
}

pub fn labels_out(labels: BTreeMap<String, String>) -> HashMap<String, String> {
    labels.into_iter().collect()
}

pub fn info_to_crate(i: SnapshotInfo) -> containerd_snapshots::Info {
    containerd_snapshots::Info {
        kind: kind_to_crate(i.kind),
        name: i.name,
        parent: i.parent.unwrap_or_default(),
        labels: labels_out(i.labels),
        created_at: i.created,
        updated_at: i.updated,
    }
}

/// The fields of an `Update` request that matter: name and labels. The kind
/// is not needed (it is immutable) and may be `Unknown` on the wire.
pub fn info_from_crate(i: containerd_snapshots::Info) -> SnapshotInfo {
    let kind = match i.kind {
        containerd_snapshots::Kind::View => Kind::View,
        containerd_snapshots::Kind::Committed => Kind::Committed,
        _ => Kind::Active,
    };
    SnapshotInfo {
        name: i.name,
        parent: (!i.parent.is_empty()).then_some(i.parent),
        kind,
        labels: labels_in(i.labels),
        created: i.created_at,
        updated: i.updated_at,
    }
}

fn time_from_wire(t: Option<prost_types::Timestamp>) -> SystemTime {
    t.and_then(|t| SystemTime::try_from(t).ok())
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

/// A wire `Info` (client side); unknown kinds are an error.
pub fn info_from_wire(i: pb::Info) -> Result<SnapshotInfo, Status> {
    let kind = kind_from_wire(i.kind)
        .ok_or_else(|| Status::internal(format!("snapshot {:?} has kind {}", i.name, i.kind)))?;
    Ok(SnapshotInfo {
        name: i.name,
        parent: (!i.parent.is_empty()).then_some(i.parent),
        kind,
        labels: labels_in(i.labels),
        created: time_from_wire(i.created_at),
        updated: time_from_wire(i.updated_at),
    })
}

pub fn info_to_wire(i: SnapshotInfo) -> pb::Info {
    pb::Info {
        name: i.name,
        parent: i.parent.unwrap_or_default(),
        kind: kind_to_wire(i.kind),
        created_at: Some(i.created.into()),
        updated_at: Some(i.updated.into()),
        labels: labels_out(i.labels),
    }
}

/// The gRPC code containerd maps back to its errdefs classes
/// (`errdefs.FromGRPC`): NotFound, AlreadyExists, FailedPrecondition and
/// InvalidArgument drive its unpack and GC logic, so they must be exact.
pub fn status_of(e: &ServiceError) -> Code {
    match e {
        ServiceError::NotFound { .. } => Code::NotFound,
        ServiceError::AlreadyExists { .. } => Code::AlreadyExists,
        ServiceError::FailedPrecondition(_) => Code::FailedPrecondition,
        ServiceError::InvalidArgument(_) => Code::InvalidArgument,
        ServiceError::Unavailable(_) => Code::Unavailable,
        ServiceError::Records(_) | ServiceError::Injected(_) => Code::Internal,
        ServiceError::Backend { source, .. } => match source.kind() {
            ErrorKind::NotFound => Code::NotFound,
            ErrorKind::AlreadyExists => Code::AlreadyExists,
            ErrorKind::Busy | ErrorKind::HasChildren | ErrorKind::Incomplete => {
                Code::FailedPrecondition
            }
            ErrorKind::NoSpace => Code::ResourceExhausted,
            ErrorKind::Unsupported => Code::Unimplemented,
            ErrorKind::InvalidInput => Code::InvalidArgument,
            ErrorKind::Corrupt | ErrorKind::Io | ErrorKind::Other => Code::Internal,
        },
    }
}

/// The full error chain as the status message, so `ctr` shows the cause.
pub fn to_status(e: ServiceError) -> Status {
    let mut msg = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        let m = s.to_string();
        if !msg.contains(&m) {
            msg.push_str(": ");
            msg.push_str(&m);
        }
        source = s.source();
    }
    Status::new(status_of(&e), msg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::SnapshotError;

    #[test]
    fn error_codes_containerd_acts_on() {
        let cases = [
            (ServiceError::not_found("k"), Code::NotFound),
            (
                ServiceError::AlreadyExists {
                    key: "k".into(),
                    in_progress: false,
                },
                Code::AlreadyExists,
            ),
            (
                ServiceError::FailedPrecondition("children".into()),
                Code::FailedPrecondition,
            ),
            (
                ServiceError::InvalidArgument("x".into()),
                Code::InvalidArgument,
            ),
            (
                ServiceError::backend(
                    "creating layer snap-1",
                    SnapshotError::NoSpace {
                        detail: "pool".into(),
                    },
                ),
                Code::ResourceExhausted,
            ),
            (
                ServiceError::backend(
                    "removing",
                    SnapshotError::Busy {
                        id: "snap-1".into(),
                        detail: "mounted".into(),
                    },
                ),
                Code::FailedPrecondition,
            ),
        ];
        for (e, code) in cases {
            let s = to_status(e);
            assert_eq!(s.code(), code, "{}", s.message());
        }
        let s = to_status(ServiceError::backend(
            "creating layer snap-1",
            SnapshotError::io("writing x", std::io::Error::from_raw_os_error(libc::EIO)),
        ));
        assert!(
            s.message().contains("creating layer snap-1"),
            "{}",
            s.message()
        );
        assert!(s.message().contains("writing x"), "{}", s.message());
    }

    #[test]
    fn info_round_trips_over_the_wire() {
        let info = SnapshotInfo {
            name: "default/1/x".into(),
            parent: Some("p".into()),
            kind: Kind::View,
            labels: [("a".to_string(), "b".to_string())].into_iter().collect(),
            created: SystemTime::UNIX_EPOCH + std::time::Duration::new(5, 7),
            updated: SystemTime::UNIX_EPOCH + std::time::Duration::new(9, 11),
        };
        assert_eq!(info_from_wire(info_to_wire(info.clone())).unwrap(), info);
        let crate_info = info_to_crate(info.clone());
        assert_eq!(info_from_crate(crate_info), info);
        let m = MountSpec::bind(std::path::Path::new("/d"), true);
        assert_eq!(mount_from_api(mount_to_api(m.clone())), m);
    }
}
