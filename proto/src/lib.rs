//! The Weft mesh API and the vocabulary both programs validate it with.
//!
//! - [`v1`]: the wire types of package `weft.v1` (generated from
//!   `proto/weft/v1/mesh.proto`).
//! - [`addresses`]: the control plane's address list, resolved, in each
//!   client's own preference order.
//! - [`resume`]: digests of what a reconnecting sidecar holds.
//! - [`name`]: service names, instance ids and advertised addresses.
//! - [`labels`]: `key=value` labels of instances and subsets.
//! - [`protocol`]: a service's protocol, load balancer and inbound mode.
//! - [`retry`]: the conditions a failed try may be retried on.
//! - [`pattern`]: `/package.Service/Method` patterns with `*`.
//! - [`routing`]: routes (the Gateway API's HTTPRoute and GRPCRoute): what
//!   a rule matches, which rule wins, what it does.
//! - [`identity`]: the identity contract both ends must agree on (SPIFFE
//!   IDs, join tokens, how a server's certificate is checked).
//! - [`grpc`]: gRPC status codes and what they mean to the mesh.
//! - [`duration`]: `10s`-style durations, parsed and printed alike.
//! - [`stats`]: the latency buckets of `weftctl top`.
//! - [`time`]: wall-clock times as the API carries them (`unix_ms`).
//! - [`mutate`]: byte mutations of valid inputs, for property tests and
//!   `weft-fuzz`.
//!
//! Both programs check every flag, file, resource and message with the words
//! defined here, so they accept exactly the same inputs; each converts
//! messages into its own validated domain types at the edge, and no wire
//! type reaches a data path.

pub mod addresses;
pub mod deadline;
pub mod duration;
pub mod grpc;
pub mod identity;
pub mod labels;
pub mod mutate;
pub mod name;
pub mod pattern;
pub mod protocol;
pub mod resume;
pub mod retry;
pub mod routing;
pub mod stats;
pub mod time;

/// Package `weft.v1`.
#[allow(clippy::all, missing_docs, unreachable_pub)]
pub mod v1 {
    tonic::include_proto!("weft.v1");
}
