//! `weftctl dashboard`: the URL of the dashboard of the replica that
//! answered. It opens no browser and tunnels nothing: it prints.

use std::net::SocketAddr;

use weft_proto::v1 as pb;

use super::CliError;

/// The URL to open, from the replica's answer and the URL weftctl reached
/// it at (whose host stands in for an unspecified bind address). When
/// reads need the credential, the token rides in the fragment, which a
/// browser never sends: the page reads it and sends it as a header.
pub fn url(
    answer: &pb::DashboardResponse,
    replica_url: &str,
    token: &str,
) -> Result<String, CliError> {
    if answer.address.is_empty() {
        return Err(CliError::Input(
            "this control plane serves no dashboard (started with --dashboard off)".into(),
        ));
    }
    let addr: SocketAddr = answer.address.parse().map_err(|_| {
        CliError::Input(format!(
            "the control plane answered a dashboard address that is not host:port: {:?}",
            answer.address
        ))
    })?;
    let host = if addr.ip().is_unspecified() {
        let uri: http::Uri = replica_url
            .parse()
            .map_err(|_| CliError::Input(format!("{replica_url:?} is not a URL")))?;
        uri.host().unwrap_or("127.0.0.1").to_string()
    } else if addr.is_ipv6() {
        format!("[{}]", addr.ip())
    } else {
        addr.ip().to_string()
    };
    let mut url = format!("http://{host}:{}/", addr.port());
    if answer.needs_credential {
        url.push_str("#token=");
        url.push_str(token);
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(address: &str, needs_credential: bool) -> pb::DashboardResponse {
        pb::DashboardResponse {
            address: address.into(),
            needs_credential,
        }
    }

    #[test]
    fn urls_name_a_reachable_host_and_carry_the_token_only_when_needed() {
        let r = "https://cp.example:15012";
        assert_eq!(
            url(&answer("127.0.0.1:15015", false), r, "t0k").expect("url"),
            "http://127.0.0.1:15015/"
        );
        assert_eq!(
            url(&answer("0.0.0.0:15015", true), r, "t0k").expect("url"),
            "http://cp.example:15015/#token=t0k"
        );
        assert_eq!(
            url(&answer("[::]:9000", true), "https://[fd00::1]:15012", "t").expect("url"),
            "http://[fd00::1]:9000/#token=t"
        );
        assert_eq!(
            url(&answer("[::1]:9000", false), r, "t").expect("url"),
            "http://[::1]:9000/"
        );
        let off = url(&answer("", false), r, "t").expect_err("off");
        assert!(off.to_string().contains("--dashboard off"), "{off}");
        assert!(url(&answer("junk", false), r, "t").is_err());
    }
}
