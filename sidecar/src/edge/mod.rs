//! The gateway's edge features that sit in front of the mesh (transcoding REST to gRPC, ...).

pub mod transcode;
