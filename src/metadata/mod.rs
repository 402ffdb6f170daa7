//! The Docker-compatible metadata store of the devicemapper backend:
//! `metadata/base`, `metadata/<id>`, `metadata/deviceset-metadata` and
//! `metadata/transaction-metadata`, byte-for-byte in Docker's shapes.
