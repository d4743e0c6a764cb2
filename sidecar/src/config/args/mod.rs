//! Command-line flags, each also a `WEFT_*` variable, in groups: who this
//! sidecar is ([`names`]), where its view of the mesh and its certificate
//! come from ([`source`]), where it listens and what it calls ([`listen`]),
//! its time limits, and what it tells about traffic ([`telemetry`]). Each
//! group checks its flags' syntax into a validated part; the files the
//! flags name are read only once every flag is known to be well formed, so
//! a typo is reported before anything is read.

mod listen;
mod names;
mod source;
mod telemetry;
#[cfg(test)]
mod tests;

use std::time::Duration;

use clap::Parser;
use weft_proto::duration::parse_duration;

pub use listen::ListenArgs;
pub use names::NameArgs;
pub use source::SourceArgs;
pub use telemetry::TelemetryArgs;

use super::{ConfigError, SidecarConfig, Timeouts};

/// The Weft sidecar: carries a service's gRPC, HTTP and TCP traffic to and
/// from the rest of the mesh.
#[derive(Debug, Parser)]
#[command(
    name = "weft-sidecar",
    version,
    after_help = "Example:\n  weft-sidecar --service order-service --app 127.0.0.1:8080 \\\n    \
                  --control-plane http://127.0.0.1:15012 --upstream user-service=127.0.0.1:9001"
)]
pub struct Args {
    #[command(flatten)]
    pub names: NameArgs,

    #[command(flatten)]
    pub source: SourceArgs,

    #[command(flatten)]
    pub listen: ListenArgs,

    #[command(flatten)]
    pub timeouts: TimeoutArgs,

    /// Threads for the data path. 1 (the default) runs everything on one
    /// thread, which gives the lowest latency; more add throughput.
    #[arg(long, env = "WEFT_WORKERS", default_value_t = 1)]
    pub workers: usize,

    /// Log filter, e.g. info or weft_sidecar=debug (changeable at runtime:
    /// PUT /log-level on the admin port).
    #[arg(long, env = "WEFT_LOG", default_value = "info")]
    pub log: String,

    #[command(flatten)]
    pub telemetry: TelemetryArgs,
}

/// Time limits (each parsed as a duration such as `2s` by clap).
#[derive(Debug, clap::Args)]
pub struct TimeoutArgs {
    /// How long a call to a service not known yet waits to learn it.
    #[arg(long, env = "WEFT_DISCOVERY_TIMEOUT", default_value = "2s", value_parser = parse_duration)]
    pub discovery_timeout: Duration,

    /// TCP connect timeout (to peers and to the app).
    #[arg(long, env = "WEFT_CONNECT_TIMEOUT", default_value = "1s", value_parser = parse_duration)]
    pub connect_timeout: Duration,

    /// How often to check the local app's health.
    #[arg(long, env = "WEFT_HEALTH_INTERVAL", default_value = "2s", value_parser = parse_duration)]
    pub health_interval: Duration,

    /// How long in-flight requests get to finish on SIGTERM.
    #[arg(long, env = "WEFT_DRAIN_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub drain_timeout: Duration,
}

impl From<TimeoutArgs> for Timeouts {
    fn from(t: TimeoutArgs) -> Self {
        Timeouts {
            discovery: t.discovery_timeout,
            connect: t.connect_timeout,
            health_interval: t.health_interval,
            drain: t.drain_timeout,
        }
    }
}

impl Args {
    /// Validates every flag, then reads the files they name; the first
    /// problem is named.
    pub fn into_config(self) -> Result<SidecarConfig, ConfigError> {
        // The flags' syntax, group by group...
        let names = self.names.validate()?;
        let source = self.source.validate()?;
        let listen = self.listen.validate(source.joins_control_plane())?;
        let telemetry = self.telemetry.validate()?;
        // ...then the files they name.
        let source = source.read(&names.service)?;
        let tracing = telemetry.tracing.map(|t| t.read()).transpose()?;
        Ok(SidecarConfig {
            service: names.service,
            instance_id: names.instance_id,
            protocol: names.protocol,
            labels: names.labels,
            app: listen.app,
            inbound: listen.inbound,
            outbound: listen.outbound,
            admin: listen.admin,
            advertise: listen.advertise,
            upstreams: listen.upstreams,
            source,
            timeouts: self.timeouts.into(),
            tracing,
            access_log: telemetry.access_log,
            log_level: None,
        })
    }
}
