//! What the admin API promises its readers beyond the message types: the
//! words for an instance's health (`InstanceTop.health`, and how weftctl
//! shows `ListInstances`). The server writes them and weftctl reads them,
//! so they are defined once, here.

use weft_proto::v1 as pb;

/// `healthy`, `unhealthy` or `unknown`.
pub fn health_word(h: pb::Health) -> &'static str {
    match h {
        pb::Health::Healthy => "healthy",
        pb::Health::Unhealthy => "unhealthy",
        pb::Health::Unknown => "unknown",
    }
}

/// What a sidecar with no app shows instead of its health: it is a caller,
/// not an endpoint that failed.
pub const NO_APP: &str = "no app";

/// The word shown for an instance: its health, or [`NO_APP`].
pub fn instance_word(health: pb::Health, no_app: bool) -> &'static str {
    if no_app { NO_APP } else { health_word(health) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_caller_only_sidecar_shows_no_app_whatever_its_health() {
        assert_eq!(instance_word(pb::Health::Healthy, false), "healthy");
        assert_eq!(instance_word(pb::Health::Unhealthy, false), "unhealthy");
        assert_eq!(instance_word(pb::Health::Unknown, false), "unknown");
        assert_eq!(instance_word(pb::Health::Unhealthy, true), NO_APP);
    }
}
