//! The generated types of `proto/backend.proto` (package `backend`).
#![allow(missing_docs)]
#![allow(clippy::all)]

tonic::include_proto!("backend");

/// The encoded `FileDescriptorSet` of `backend.proto`, served by gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("backend_descriptor");
