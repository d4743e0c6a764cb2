//! Every conversion between `weft.v1` messages and the control plane's
//! domain types, in one place: what comes in is validated here (errors name
//! the field), what goes out is built here, so no prost type reaches the
//! catalog or the resources. The store's records use the same messages as
//! their file format and are converted here too.

mod catalog;
mod explain;
#[cfg(test)]
mod pinned;
mod resilience;
mod resources;
mod routes;

pub use catalog::{
    HelloError, StatsError, health_from_proto, record_from_proto, registration_from_hello,
};
pub use explain::ExplainRequestError;
pub use resources::{
    labels_from_proto, labels_to_proto, protocol_to_proto, resources_from_proto,
    service_spec_from_proto,
};
pub use routes::rule_from_proto;
