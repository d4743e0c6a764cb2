//! What the gateway does at the edge besides routing, each a small piece it
//! calls on a request or response: local rate limits ([`ratelimit`], also
//! used by every sidecar's inbound side), CORS ([`cors`]), the forwarding
//! headers and request id ([`forwarded`]), gRPC-Web ([`grpc_web`]), and
//! REST→gRPC transcoding from `google.api.http` annotations
//! ([`transcode`]).

pub mod cors;
pub mod forwarded;
pub mod grpc_web;
pub mod ratelimit;
pub mod transcode;
