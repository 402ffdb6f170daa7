//! The Docker-compatible metadata store of the devicemapper backend:
//! `metadata/base`, `metadata/<id>`, `metadata/deviceset-metadata` and
//! `metadata/transaction-metadata`, byte-for-byte in Docker's shapes, plus
//! the transaction record and the 24-bit device-id allocator.

pub mod allocator;
pub mod error;
pub mod store;
pub mod types;

pub use allocator::IdAllocator;
pub use error::MetadataError;
pub use store::{BrokenFile, LoadedDevices, MetadataStore};
pub use types::{DevInfo, DeviceSetMeta, Transaction};
