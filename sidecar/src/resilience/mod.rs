//! Resilience on the outbound path: the mechanisms behind retries within a
//! budget, deadlines (honouring and forwarding `grpc-timeout`), outlier
//! ejection, request limits, hedging and fault injection. The settings they
//! apply are model types (`model::policy`); `proxy::outbound` decides per
//! request when to use them.

pub mod breaker;
pub mod budget;
pub mod deadline;
pub mod fault;
pub mod hedge;
pub mod limit;
pub mod replay;
pub mod timed;
