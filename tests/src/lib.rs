//! The harness of Weft's end-to-end tests and benchmark: test services (a
//! gRPC echo service with every kind of call, an HTTP/1.1 app), an in-process
//! control plane and sidecars on 127.0.0.1 port 0, a test mesh CA, child processes of the
//! real binaries, an OTLP trace receiver, and polling helpers with bounded deadlines;
//! network namespaces as pods for the interception tests (`netns`); real
//! etcd clusters for the HA tests (`etcd`); the simulator of many sidecars
//! (`sim`, run by `weft-sim`).

pub mod browser;
pub mod ca;
pub mod echo;
pub mod etcd;
pub mod fuzz;
pub mod http_app;
pub mod mesh;
pub mod netns;
pub mod otlp;
pub mod process;
pub mod sim;
pub mod soak;
pub mod util;

/// Generated code of `proto/echo.proto`.
pub mod pb {
    #![allow(clippy::all, missing_docs, unreachable_pub)]
    tonic::include_proto!("weft.test.v1");
}

/// The descriptor set of `proto/echo.proto` with its imports: what a
/// gateway's `--transcode` reads.
pub const ECHO_DESCRIPTORS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/echo.binpb"));
