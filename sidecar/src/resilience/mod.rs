//! Resilience on the outbound path: the mechanisms behind retries within a
//! budget, deadlines (honouring and forwarding `grpc-timeout`, whose wire
//! format is `weft_proto::deadline`), outlier ejection, request limits,
//! hedging and fault injection. The settings they apply are model types
//! (`model::policy`); `proxy::outbound` decides per request when to use
//! them.

pub mod breaker;
pub mod budget;
pub mod fault;
pub mod hedge;
pub mod limit;
pub mod replay;
pub mod timed;
