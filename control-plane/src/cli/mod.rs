//! `weftctl`: configure and inspect the mesh through the control-plane API.
//!
//! kubectl habits: `apply -f FILE|-`, `get KIND [NAME] -o yaml|json`,
//! `delete KIND NAME`; errors on stderr, a non-zero exit code on failure.
//! `top` is the one live view: traffic per service, redrawn until Ctrl-C.
//! `explain` asks the control plane which route a request would take.
//! `inject` adds the sidecar to Kubernetes manifests, offline.

mod dashboard;
mod explain;
pub mod inject;
mod output;
mod replicas;
pub mod top;

use std::io::{IsTerminal, Read};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use weft_proto::identity::{SpiffeId, SpiffeServerVerifier, certs_from_pem, root_store};
use weft_proto::v1 as pb;
use weft_proto::v1::admin_client::AdminClient;

use crate::api::convert::resources_from_proto;
use crate::api::credential::AdminCredential;
use crate::resource::{Kind, Resource, parse_documents};

#[derive(Debug, Parser)]
#[command(
    name = "weftctl",
    version,
    about = "Configure and inspect a Weft mesh",
    long_about = "Configure and inspect a Weft mesh through its control plane.\n\n\
                  Examples:\n  weftctl apply -f services.yaml\n  weftctl get services\n  \
                  weftctl get instances -o yaml\n  weftctl get routes\n  \
                  weftctl delete service user-service\n  weftctl delete httproute users-canary\n  \
                  weftctl explain --from order-service GET http://user-service/users/1 -H x-canary:1\n  \
                  weftctl get gateways\n  weftctl delete gateway gateway\n  \
                  weftctl explain --gateway gateway GET http://api.example.com/api/users/1\n  \
                  weftctl status\n  \
                  weftctl status --control-plane https://10.0.0.1:15012,https://10.0.0.2:15012\n  \
                  weftctl token create user-service --ttl 1h\n  weftctl token list\n  \
                  weftctl token revoke 3f2a9c0d1e4b5a67\n  weftctl top\n  \
                  weftctl top user-service --window 1m --once\n  weftctl top -o json\n  \
                  weftctl dashboard\n  \
                  weftctl inject -f deploy.yaml | kubectl apply -f -"
)]
pub struct Cli {
    /// The control plane's gRPC API (TLS): https://HOST:PORT (port 15012
    /// when none is given). Replicas on etcd: a comma-separated list, and a
    /// host name that resolves to several addresses counts as each. A
    /// command goes to the first replica that answers, in an order of this
    /// run's own; `status` asks every one and shows which replica each
    /// sidecar is connected to.
    #[arg(
        long,
        env = "WEFT_CONTROL_PLANE",
        default_value = "https://127.0.0.1:15012",
        global = true
    )]
    pub control_plane: String,

    /// The admin credential the control plane wrote at first start (the
    /// admin token and the CA that signs the control plane's certificate).
    #[arg(
        long,
        env = "WEFT_CREDENTIAL",
        default_value = "weft-data/admin.credential",
        global = true
    )]
    pub credential: PathBuf,

    /// How long to wait for the control plane to answer.
    #[arg(long, default_value = "10s", value_parser = weft_proto::duration::parse_duration, global = true)]
    pub timeout: Duration,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create or update resources from a YAML file (`-` for stdin).
    Apply {
        /// The file; documents separated by `---`.
        #[arg(short = 'f', long = "filename")]
        file: String,
        /// Validate on the control plane, store nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Show services, instances, sidecars or resources.
    Get {
        /// services | instances | sidecars | authorizationpolicies |
        /// httproutes | grpcroutes | routes (both) | gateways
        what: GetWhat,
        /// Only this one (a service name).
        name: Option<String>,
        #[arg(short = 'o', long, value_enum, default_value_t = Format::Table)]
        output: Format,
    },
    /// Delete a resource.
    Delete {
        /// The resource kind, e.g. service, httproute.
        kind: String,
        name: String,
    },
    /// Which route, rule and backends a request from SERVICE would take,
    /// and why: the candidates in precedence order with why each did not
    /// match, the rule taken, its backends with weights and subsets, its
    /// filters, timeouts and retries, and whether each backend's
    /// AuthorizationPolicy lets SERVICE in. The control plane answers from
    /// its applied routes, with the sidecars' matcher. With --gateway, the
    /// request arrives at that gateway: the URL's host is matched against
    /// its routes' host names, and the gateway is the caller.
    Explain {
        /// The calling service.
        #[arg(long, required_unless_present = "gateway", conflicts_with = "gateway")]
        from: Option<String>,
        /// The request arrives at this Gateway (http://HOST/path: the host
        /// its routes match).
        #[arg(long)]
        gateway: Option<String>,
        /// The request's method (gRPC calls are POST).
        method: String,
        /// http://SERVICE/path?query (the host names the destination), or
        /// a path with --service.
        url: String,
        /// A request header, `name:value`; repeat for more.
        #[arg(short = 'H', long = "header")]
        headers: Vec<String>,
        /// The destination service, when the URL's host does not name it.
        #[arg(long)]
        service: Option<String>,
        #[arg(short = 'o', long, value_enum, default_value_t = Format::Table)]
        output: Format,
    },
    /// Every connected sidecar: its service, the control-plane replica it
    /// is connected to, since when, the version it applied, its last
    /// rejection and its certificate's expiry. With several --control-plane
    /// addresses every replica is asked (one that does not answer is named
    /// on stderr and left out).
    Status {
        #[arg(short = 'o', long, value_enum, default_value_t = Format::Table)]
        output: Format,
    },
    /// Join tokens: what a new sidecar needs for its first certificate.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Live traffic per service and per instance: requests per second,
    /// success rate, p50 and p99 latency over a sliding window, and healthy
    /// endpoints. Redraws every --interval until Ctrl-C; `-` marks an
    /// instance whose sidecar has not reported traffic.
    Top {
        /// Only this service.
        service: Option<String>,
        /// The window rates and percentiles cover: whole seconds, 1s to 300s.
        #[arg(long, default_value = "10s", value_parser = top::parse_window)]
        window: Duration,
        /// How often the live view redraws.
        #[arg(long, default_value = "1s", value_parser = top::parse_interval)]
        interval: Duration,
        /// Print one frame and exit.
        #[arg(long)]
        once: bool,
        /// table: the live view; json | yaml: one answer with the API's
        /// field names (implies --once).
        #[arg(short = 'o', long, value_enum, default_value_t = Format::Table)]
        output: Format,
    },
    /// Adds the mesh to Kubernetes workloads, offline, as `linkerd inject`
    /// does: to every Pod, Deployment, StatefulSet, DaemonSet, ReplicaSet,
    /// Job and CronJob, the init step (`weft-sidecar init` as root with
    /// NET_ADMIN and NET_RAW) and the sidecar as a native sidecar (an init
    /// container with `restartPolicy: Always`, Kubernetes 1.29 or later)
    /// with --intercept, its join token from a Secret, resources, and
    /// probes on /live and /ready. The service is the pod's annotation
    /// weft.dev/service, else its label app.kubernetes.io/name, else app;
    /// weft.dev/protocol, weft.dev/app-port and
    /// weft.dev/exclude-{inbound,outbound}-{ports,cidrs} annotations are
    /// read too, and weft.dev/inject: disabled leaves a workload out.
    /// Other documents come out unchanged; injecting twice is injecting
    /// once. A workload that cannot be injected (hostNetwork, another
    /// mesh's sidecar, no service name) fails the whole file, with the
    /// reason.
    Inject(InjectArgs),
    /// The URL of the mesh's web dashboard (the service graph, each
    /// service's page, the sidecars), served by the control plane at its
    /// --dashboard address. Prints it; opens and tunnels nothing. Off
    /// loopback the URL carries the admin token after `#` (a browser does
    /// not send that part): share it as you would the credential.
    Dashboard,
}

/// `weftctl inject`'s flags.
#[derive(Debug, clap::Args)]
pub struct InjectArgs {
    /// The manifests (`-` for stdin); documents separated by `---`.
    #[arg(short = 'f', long = "filename")]
    pub file: String,
    /// Write the result here instead of stdout.
    #[arg(short = 'o', long = "output")]
    pub output: Option<PathBuf>,
    /// The image of the init step and the sidecar.
    #[arg(long, default_value = "localhost/weft:dev")]
    pub image: String,
    /// The control plane as the pods reach it (the manifests in
    /// deploy/kubernetes/ run it as this Service).
    #[arg(
        long,
        default_value = "https://weft-control-plane.weft.svc.cluster.local:15012"
    )]
    pub sidecar_control_plane: String,
    /// The Secret holding each service's join token (key `token`);
    /// `{service}` is replaced by the pod's service.
    #[arg(long, default_value = "weft-token-{service}")]
    pub token_secret: String,
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Creates a token that admits sidecars of SERVICE (only), and prints it.
    /// Give it to the sidecar with --token-file or WEFT_TOKEN.
    Create {
        service: String,
        /// How long the token admits new sidecars.
        #[arg(long, default_value = "24h", value_parser = weft_proto::duration::parse_duration)]
        ttl: Duration,
    },
    /// The tokens that still admit sidecars: id, service, age, time left.
    List {
        #[arg(short = 'o', long, value_enum, default_value_t = Format::Table)]
        output: Format,
    },
    /// Revokes a token at once (ID from `token list`): it admits no new
    /// sidecar. Sidecars that joined with it keep their certificates.
    Revoke { id: String },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum GetWhat {
    #[value(alias = "service", alias = "svc")]
    Services,
    #[value(alias = "instance")]
    Instances,
    #[value(alias = "sidecar")]
    Sidecars,
    #[value(
        name = "authorizationpolicies",
        alias = "authorizationpolicy",
        alias = "authz",
        alias = "policies",
        alias = "policy"
    )]
    AuthorizationPolicies,
    #[value(name = "httproutes", alias = "httproute")]
    HttpRoutes,
    #[value(name = "grpcroutes", alias = "grpcroute")]
    GrpcRoutes,
    /// Both kinds of route.
    #[value(alias = "route")]
    Routes,
    #[value(alias = "gateway", alias = "gtw")]
    Gateways,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Yaml,
    Json,
}

/// A failure `weftctl` reports; the message is shown as it is.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{0}")]
    Input(String),
    #[error("cannot reach the control plane at {url}: {reason}")]
    Connect { url: String, reason: String },
    #[error("{0}")]
    Api(String),
}

impl From<tonic::Status> for CliError {
    fn from(s: tonic::Status) -> Self {
        let what = match s.code() {
            tonic::Code::InvalidArgument => "rejected",
            tonic::Code::FailedPrecondition => "refused",
            tonic::Code::NotFound => "not found",
            // The control plane answered: its store (etcd) did not.
            tonic::Code::Unavailable if s.message().starts_with("etcd") => "refused",
            tonic::Code::Unavailable => "control plane unavailable",
            tonic::Code::Aborted => "not applied",
            tonic::Code::DeadlineExceeded => "control plane did not answer in time",
            tonic::Code::Unauthenticated | tonic::Code::PermissionDenied => "not allowed",
            _ => "control plane error",
        };
        // NotFound messages already say what was not found.
        if s.code() == tonic::Code::NotFound {
            return CliError::Api(s.message().to_string());
        }
        CliError::Api(format!("{what}: {}", s.message()))
    }
}

/// Adds the admin token to every call.
#[derive(Clone)]
pub struct Bearer(pub tonic::metadata::MetadataValue<tonic::metadata::Ascii>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        req.metadata_mut().insert("authorization", self.0.clone());
        Ok(req)
    }
}

pub type Client = AdminClient<tonic::service::interceptor::InterceptedService<Channel, Bearer>>;

pub(super) fn read_credential(path: &std::path::Path) -> Result<AdminCredential, CliError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        CliError::Input(format!(
            "cannot read the admin credential {}: {e} (the control plane writes it to its \
             --data-dir at first start; point --credential or WEFT_CREDENTIAL at it)",
            path.display()
        ))
    })?;
    serde_json::from_str(&text).map_err(|e| {
        CliError::Input(format!(
            "{} is not an admin credential: {e}",
            path.display()
        ))
    })
}

/// A TLS channel to the control plane, verified as `spiffe://<td>/control-plane`
/// under the credential's CA.
pub async fn connect_tls(
    url: &str,
    cred: &AdminCredential,
    timeout: Duration,
) -> Result<Channel, CliError> {
    let err = |reason: String| CliError::Connect {
        url: url.to_string(),
        reason,
    };
    if !url.starts_with("https://") {
        return Err(err(
            "the control plane serves TLS: use an https:// URL".into()
        ));
    }
    weft_proto::identity::install_provider();
    let roots = certs_from_pem(&cred.ca)
        .and_then(|c| root_store(&c))
        .map_err(|e| CliError::Input(format!("the credential's CA: {e}")))?;
    let verifier = SpiffeServerVerifier::new(roots, SpiffeId::control_plane(&cred.trust_domain));
    let endpoint = Endpoint::from_shared(url.to_string())
        .map_err(|e| err(format!("not a valid URL ({e})")))?
        .connect_timeout(Duration::from_secs(3))
        .timeout(timeout)
        .tls_config_with_verifier(ClientTlsConfig::new(), Arc::new(verifier))
        .map_err(|e| err(e.to_string()))?;
    endpoint.connect().await.map_err(|e| {
        let mut reason = e.to_string();
        let mut src = std::error::Error::source(&e);
        while let Some(s) = src {
            reason = format!("{reason}: {s}");
            src = s.source();
        }
        err(reason)
    })
}

fn read_input(file: &str) -> Result<String, CliError> {
    if file == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .map_err(|e| CliError::Input(format!("cannot read stdin: {e}")))?;
        return Ok(s);
    }
    let path = PathBuf::from(file);
    std::fs::read_to_string(&path).map_err(|e| CliError::Input(format!("cannot read {file}: {e}")))
}

/// The routes of `kinds` (one named `name`, if given; it must exist as
/// one of them).
async fn get_routes(
    client: &mut Client,
    kinds: &[Kind],
    name: Option<&str>,
) -> Result<Vec<Resource>, CliError> {
    let mut all = Vec::new();
    for kind in kinds {
        let r = client
            .get(pb::GetRequest {
                kind: kind.as_str().into(),
                name: name.unwrap_or_default().into(),
            })
            .await;
        match r {
            Ok(r) => all.extend(r.into_inner().resources),
            // Named: it may be the other kind's.
            Err(s) if s.code() == tonic::Code::NotFound && kinds.len() > 1 => {}
            Err(s) => return Err(s.into()),
        }
    }
    if let Some(n) = name
        && all.is_empty()
    {
        return Err(CliError::Api(format!("route {n:?} not found")));
    }
    resources_from_proto(&all)
        .map_err(|e| CliError::Api(format!("the control plane sent an invalid route: {e}")))
}

/// Runs one command, writing results to `out`.
pub async fn run(cli: Cli, out: &mut dyn std::io::Write) -> Result<(), CliError> {
    let w = |out: &mut dyn std::io::Write, s: String| {
        let _ = out.write_all(s.as_bytes());
    };
    match &cli.command {
        Command::Apply { file, dry_run } => {
            let text = read_input(file)?;
            // Validate here first: the same rules as the server, with YAML paths.
            let resources =
                parse_documents(&text).map_err(|e| CliError::Input(format!("{file}: {e}")))?;
            let mut client = replicas::connect(&cli).await?;
            let resp = client
                .apply(pb::ApplyRequest {
                    resources: resources.iter().map(pb::Resource::from).collect(),
                    dry_run: *dry_run,
                })
                .await?
                .into_inner();
            let suffix = if *dry_run { " (dry run)" } else { "" };
            for r in resp.results {
                w(
                    out,
                    format!(
                        "{}/{} {}{suffix}\n",
                        r.kind.to_lowercase(),
                        r.name,
                        r.outcome
                    ),
                );
            }
        }
        Command::Get { what, name, output } => {
            let mut client = replicas::connect(&cli).await?;
            let text = match what {
                GetWhat::Services => {
                    let mut s = client
                        .list_services(pb::ListServicesRequest {})
                        .await?
                        .into_inner()
                        .services;
                    if let Some(n) = name {
                        s.retain(|x| &x.name == n);
                        if s.is_empty() {
                            return Err(CliError::Api(format!("service {n:?} not found")));
                        }
                    }
                    output::services(&s, *output)
                }
                GetWhat::Instances => {
                    let i = client
                        .list_instances(pb::ListInstancesRequest {
                            service: name.clone().unwrap_or_default(),
                        })
                        .await?
                        .into_inner()
                        .instances;
                    output::instances(&i, *output)
                }
                GetWhat::Sidecars => {
                    let mut s = client
                        .list_sidecars(pb::ListSidecarsRequest {})
                        .await?
                        .into_inner()
                        .sidecars;
                    if let Some(n) = name {
                        s.retain(|x| &x.service == n);
                    }
                    output::sidecars(&s, *output)
                }
                GetWhat::AuthorizationPolicies => {
                    let r = client
                        .get(pb::GetRequest {
                            kind: "AuthorizationPolicy".into(),
                            name: name.clone().unwrap_or_default(),
                        })
                        .await?
                        .into_inner()
                        .resources;
                    let rs = resources_from_proto(&r).map_err(|e| {
                        CliError::Api(format!("the control plane sent an invalid policy: {e}"))
                    })?;
                    output::policies(&rs, *output)
                }
                GetWhat::HttpRoutes => {
                    let rs = get_routes(&mut client, &[Kind::HttpRoute], name.as_deref()).await?;
                    output::routes(&rs, *output)
                }
                GetWhat::GrpcRoutes => {
                    let rs = get_routes(&mut client, &[Kind::GrpcRoute], name.as_deref()).await?;
                    output::routes(&rs, *output)
                }
                GetWhat::Routes => {
                    let kinds = [Kind::HttpRoute, Kind::GrpcRoute];
                    let rs = get_routes(&mut client, &kinds, name.as_deref()).await?;
                    output::routes(&rs, *output)
                }
                GetWhat::Gateways => {
                    let r = client
                        .get(pb::GetRequest {
                            kind: Kind::Gateway.as_str().into(),
                            name: name.clone().unwrap_or_default(),
                        })
                        .await?
                        .into_inner()
                        .resources;
                    let rs = resources_from_proto(&r).map_err(|e| {
                        CliError::Api(format!("the control plane sent an invalid gateway: {e}"))
                    })?;
                    output::gateways(&rs, *output)
                }
            };
            w(out, text);
        }
        Command::Delete { kind, name } => {
            let mut client = replicas::connect(&cli).await?;
            client
                .delete(pb::DeleteRequest {
                    kind: kind.clone(),
                    name: name.clone(),
                })
                .await?;
            w(out, format!("{}/{name} deleted\n", kind.to_lowercase()));
        }
        Command::Explain {
            from,
            gateway,
            method,
            url,
            headers,
            service,
            output,
        } => {
            let req = explain::request(&explain::ExplainArgs {
                from: from.as_deref(),
                gateway: gateway.as_deref(),
                method,
                url,
                headers,
                service: service.as_deref(),
            })?;
            let mut client = replicas::connect(&cli).await?;
            let resp = client.explain(req.clone()).await?.into_inner();
            w(out, explain::print(&req, &resp, *output));
        }
        Command::Inject(args) => {
            let text = read_input(&args.file)?;
            let opts = inject::InjectOptions {
                image: args.image.clone(),
                control_plane: args.sidecar_control_plane.clone(),
                token_secret: args.token_secret.clone(),
            };
            let injected = inject::inject(&text, &opts)
                .map_err(|e| CliError::Input(format!("{}: {e}", args.file)))?;
            match &args.output {
                Some(path) => std::fs::write(path, injected).map_err(|e| {
                    CliError::Input(format!("cannot write {}: {e}", path.display()))
                })?,
                None => w(out, injected),
            }
        }
        Command::Dashboard => {
            let (mut client, replica) = replicas::connect_at(&cli).await?;
            let answer = client
                .dashboard(pb::DashboardRequest {})
                .await?
                .into_inner();
            let token = read_credential(&cli.credential)?.token;
            w(out, dashboard::url(&answer, &replica, &token)? + "\n");
        }
        Command::Status { output } => {
            let s = replicas::sidecars_everywhere(&cli).await?;
            w(out, output::status(&s, *output));
        }
        Command::Token {
            command: TokenCommand::Create { service, ttl },
        } => {
            let mut client = replicas::connect(&cli).await?;
            let resp = client
                .create_token(pb::CreateTokenRequest {
                    service: service.clone(),
                    ttl_seconds: ttl.as_secs().max(1),
                })
                .await?
                .into_inner();
            // Only the token on stdout, so that it can go straight into a file.
            w(out, format!("{}\n", resp.token));
        }
        Command::Token {
            command: TokenCommand::List { output },
        } => {
            let mut client = replicas::connect(&cli).await?;
            let t = client
                .list_tokens(pb::ListTokensRequest {})
                .await?
                .into_inner()
                .tokens;
            w(out, output::tokens(&t, *output));
        }
        Command::Token {
            command: TokenCommand::Revoke { id },
        } => {
            let mut client = replicas::connect(&cli).await?;
            let r = client
                .revoke_token(pb::RevokeTokenRequest { id: id.clone() })
                .await?
                .into_inner();
            w(
                out,
                format!("token/{id} revoked (it admitted {})\n", r.service),
            );
        }
        Command::Top {
            service,
            window,
            interval,
            once,
            output,
        } => {
            let mut client = replicas::connect(&cli).await?;
            let args = top::TopArgs {
                url: cli.control_plane.clone(),
                request: pb::TopRequest {
                    service: service.clone().unwrap_or_default(),
                    window_seconds: u32::try_from(window.as_secs()).unwrap_or(u32::MAX),
                },
                interval: *interval,
                once: *once,
                output: *output,
                tty: std::io::stdout().is_terminal(),
            };
            top::run(&mut client, &args, out).await?;
        }
    }
    Ok(())
}
