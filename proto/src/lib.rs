//! The Weft mesh API (`weft.v1`), generated from `proto/weft/v1/mesh.proto`.
//!
//! These are wire types only. Both the control plane and the sidecar convert
//! every message into their own validated domain types at the edge; nothing
//! here reaches a data path.

#![allow(clippy::all, missing_docs, unreachable_pub)]

/// Package `weft.v1`.
pub mod v1 {
    tonic::include_proto!("weft.v1");
}
