//! Request mirroring (the Gateway API's `RequestMirror`): a copy of a
//! share of a rule's requests goes to another backend, fire and forget.
//! The copy goes once the real attempts have read the caller's whole body,
//! from the replay buffer they filled, so a mirror never reads the
//! caller's body itself and never slows the real request (a body over the
//! buffer is not copied). Its answer is read and thrown away; it is bounded
//! in time.

use std::time::Duration;

use http_body_util::BodyExt;

use super::retry::Call;
use crate::body::boxed;

/// The longest a copy may take; then it is dropped (cancelled).
const MIRROR_LIMIT: Duration = Duration::from_secs(30);

/// Sends the copies the route's rule asks for.
pub fn copies(call: &mut Call<'_>) {
    let Some(rule) = call.route.rule.clone() else {
        return;
    };
    let Some(replay) = call.bodies.replay() else {
        return;
    };
    for (backend, percent) in &rule.mirrors {
        if crate::rand::below(100) >= *percent as usize {
            continue;
        }
        let Some(pick) = backend.target.as_ref().and_then(|t| t.pick()) else {
            continue;
        };
        call.telemetry.metrics.count_mirror(
            &call.route.service,
            (&rule.route, rule.rule),
            &backend.name,
        );
        let (mut template, replay) = (call.template.clone(), replay.clone());
        tokio::spawn(async move {
            let copy = async {
                // Sent once the tries have read the whole body (a copy never
                // reads the caller's body itself); a body that outgrew the
                // replay buffer is not copied.
                if !replay.settled().await {
                    return None;
                }
                let req = template.request(boxed(replay.body()?), None, false);
                let (resp, _) = pick.endpoint.peer.client.send(req, None).await.ok()?;
                // Read to the end, so that the mirror finishes its work.
                resp.into_body().collect().await.ok()
            };
            let _ = tokio::time::timeout(MIRROR_LIMIT, copy).await;
        });
    }
}
