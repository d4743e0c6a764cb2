//! What the gateway does at the edge besides routing, each a small piece it
//! calls on a request or response: local rate limits ([`ratelimit`], also
//! used by every sidecar's inbound side), CORS ([`cors`]), the forwarding
//! headers and request id ([`forwarded`]), and gRPC-Web ([`grpc_web`]).

pub mod cors;
pub mod forwarded;
pub mod grpc_web;
pub mod ratelimit;
