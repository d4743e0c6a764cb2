//! The Weft mesh API: the wire types of package `weft.v1` (generated from
//! `proto/weft/v1/mesh.proto`), and the identity contract both ends must
//! agree on ([`identity`]: SPIFFE IDs and how a peer's certificate is
//! checked), and what both programs share ([`logs`]: JSON logs with a
//! filter changeable at runtime; [`stats`]: the latency buckets of
//! `weftctl top`; [`duration`]: `10s`-style durations; [`shutdown`]: the
//! stop signal).
//!
//! Both the control plane and the sidecar convert every message into their
//! own validated domain types at the edge; no wire type reaches a data path.

pub mod duration;
pub mod grpc;
pub mod identity;
pub mod logs;
pub mod shutdown;
pub mod stats;

/// Package `weft.v1`.
#[allow(clippy::all, missing_docs, unreachable_pub)]
pub mod v1 {
    tonic::include_proto!("weft.v1");
}
