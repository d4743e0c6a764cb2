//! Which control-plane replica weftctl talks to: `--control-plane` is a
//! list (`weft_proto::addresses`), tried in an order of this run's own
//! until one answers; `status` asks every replica and merges their
//! answers, since each knows only the sidecars connected to it.

use tonic::transport::Channel;
use weft_proto::addresses::{Candidate, ControlPlaneList, preference_order};
use weft_proto::v1 as pb;
use weft_proto::v1::admin_client::AdminClient;

use super::{Bearer, Cli, CliError, Client, connect_tls, read_credential};
use crate::api::credential::AdminCredential;

/// The replicas `--control-plane` names, resolved, in this run's order
/// (random, so that many weftctl runs spread over the replicas).
async fn candidates(cli: &Cli) -> Result<Vec<Candidate>, CliError> {
    let list = ControlPlaneList::parse(&cli.control_plane)
        .map_err(|e| CliError::Input(format!("--control-plane: {e}")))?;
    let (mut found, failed) = list.resolve().await;
    if found.is_empty() {
        let reasons: Vec<String> = failed.iter().map(|(e, r)| format!("{e}: {r}")).collect();
        return Err(CliError::Connect {
            url: cli.control_plane.clone(),
            reason: format!("no address resolved ({})", reasons.join("; ")),
        });
    }
    let seed = std::hash::BuildHasher::hash_one(
        &std::collections::hash_map::RandomState::new(),
        std::process::id(),
    );
    preference_order(&mut found, seed);
    Ok(found)
}

fn admin_client(channel: Channel, cred: &AdminCredential) -> Result<Client, CliError> {
    let bearer = format!("Bearer {}", cred.token)
        .parse()
        .map_err(|_| CliError::Input("the credential's token is not valid text".into()))?;
    Ok(AdminClient::with_interceptor(channel, Bearer(bearer)))
}

/// A client of the first replica that answers.
pub(super) async fn connect(cli: &Cli) -> Result<Client, CliError> {
    Ok(connect_at(cli).await?.0)
}

/// A client of the first replica that answers, and that replica's URL.
pub(super) async fn connect_at(cli: &Cli) -> Result<(Client, String), CliError> {
    let cred = read_credential(&cli.credential)?;
    let mut reasons = Vec::new();
    for at in candidates(cli).await? {
        let url = at.url();
        match connect_tls(&url, &cred, cli.timeout).await {
            Ok(channel) => return Ok((admin_client(channel, &cred)?, url)),
            Err(CliError::Connect { reason, .. }) => reasons.push(format!("{at}: {reason}")),
            Err(e) => return Err(e),
        }
    }
    Err(CliError::Connect {
        url: cli.control_plane.clone(),
        reason: reasons.join("; "),
    })
}

/// Every replica's sidecars, each marked with its replica; the replicas
/// that did not answer are named on stderr. A sidecar listed by two (its
/// old replica has not noticed it left) is shown where it connected last.
pub(super) async fn sidecars_everywhere(cli: &Cli) -> Result<Vec<pb::SidecarInfo>, CliError> {
    let cred = read_credential(&cli.credential)?;
    let asks = candidates(cli).await?.into_iter().map(|at| {
        let cred = &cred;
        async move {
            let channel = connect_tls(&at.url(), cred, cli.timeout).await?;
            let mut client = admin_client(channel, cred)?;
            let list = client
                .list_sidecars(pb::ListSidecarsRequest {})
                .await?
                .into_inner()
                .sidecars;
            Ok::<_, CliError>((at, list))
        }
    });
    let answers = futures_util::future::join_all(asks).await;
    let mut listings = Vec::new();
    let mut failures = Vec::new();
    for answer in answers {
        match answer {
            Ok(listing) => listings.push(listing),
            Err(e) => failures.push(e.to_string()),
        }
    }
    let answered = listings.len();
    if answered == 0 {
        return Err(CliError::Connect {
            url: cli.control_plane.clone(),
            reason: failures.join("; "),
        });
    }
    for f in failures {
        eprintln!("warning: left out of the status: {f}");
    }
    Ok(merge(listings))
}

/// The replicas' listings as one: each sidecar marked with the replica
/// that listed it (its name, else its address); one listed twice is shown
/// where it connected last; sorted by service and instance.
fn merge(listings: Vec<(Candidate, Vec<pb::SidecarInfo>)>) -> Vec<pb::SidecarInfo> {
    let mut all: Vec<pb::SidecarInfo> = Vec::new();
    for (at, list) in listings {
        for mut s in list {
            if s.replica.is_empty() {
                s.replica = at.url();
            }
            match all
                .iter_mut()
                .find(|x| x.instance_id == s.instance_id && x.service == s.service)
            {
                Some(x) if x.connected_since_unix_ms >= s.connected_since_unix_ms => {}
                Some(x) => *x = s,
                None => all.push(s),
            }
        }
    }
    all.sort_by(|a, b| (&a.service, &a.instance_id).cmp(&(&b.service, &b.instance_id)));
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(port: u16) -> Candidate {
        Candidate {
            addr: std::net::SocketAddr::from(([127, 0, 0, 1], port)),
            entry: format!("https://127.0.0.1:{port}"),
        }
    }

    fn sidecar(instance: &str, replica: &str, since: u64) -> pb::SidecarInfo {
        pb::SidecarInfo {
            service: "echo".into(),
            instance_id: instance.into(),
            replica: replica.into(),
            connected_since_unix_ms: since,
            ..Default::default()
        }
    }

    #[test]
    fn listings_merge_with_each_sidecar_where_it_connected_last() {
        let merged = merge(vec![
            (at(1), vec![sidecar("e2", "a", 10), sidecar("e1", "a", 10)]),
            // e1 moved to b later; a has not noticed yet.
            (at(2), vec![sidecar("e1", "b", 20)]),
            // An older replica names none: its address stands in.
            (at(3), vec![sidecar("e3", "", 5)]),
        ]);
        let shown: Vec<(&str, &str)> = merged
            .iter()
            .map(|s| (s.instance_id.as_str(), s.replica.as_str()))
            .collect();
        assert_eq!(
            shown,
            vec![("e1", "b"), ("e2", "a"), ("e3", "https://127.0.0.1:3")]
        );
        // The same the other way round.
        let merged = merge(vec![
            (at(2), vec![sidecar("e1", "b", 20)]),
            (at(1), vec![sidecar("e1", "a", 10)]),
        ]);
        assert_eq!(merged[0].replica, "b");
    }
}
