//! HTTP/1.1 REST through two sidecars: the hop between sidecars is HTTP/2,
//! and the app on each end still sees HTTP/1.1 with its Host and headers.

use bytes::Bytes;
use http_body_util::Full;
use weft_tests::http_app::start_http_app;
use weft_tests::mesh::{ControlPlane, SidecarSpec};
use weft_tests::util::{http_get, http_send, init_logs};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_calls_keep_method_path_headers_and_body() -> anyhow::Result<()> {
    init_logs();
    let cp = ControlPlane::start_fast().await?;
    let app = start_http_app("users-1").await?;
    let _server = SidecarSpec::new("users")
        .arg("--protocol", "http")
        .control_plane(&cp)
        .app(app.addr)
        .start()
        .await?;
    let client = SidecarSpec::new("web")
        .control_plane(&cp)
        .upstream("users")
        .start()
        .await?;
    client
        .wait_endpoints("users", "the users endpoint", |e| e.len() == 1)
        .await?;
    let up = client.upstream("users");

    // Through the upstream port.
    let r = http_get(&format!("http://{up}/users/7?verbose=1")).await?;
    assert_eq!(r.status, 200, "{r:?}");
    let v: serde_json::Value = serde_json::from_str(&r.body)?;
    assert_eq!(v["path"], "/users/7?verbose=1");
    assert_eq!(v["version"], "HTTP/1.1");
    assert_eq!(v["headers"]["host"], up.to_string());
    assert!(
        v["headers"].get("x-weft-orig-proto").is_none(),
        "internal header leaked: {v}"
    );
    assert_eq!(r.headers["x-instance"], "users-1");

    // Through the outbound listener, routed by Host.
    let req = http::Request::builder()
        .method("POST")
        .uri(format!("http://{}/echo", client.outbound))
        .header("host", "users")
        .header("x-test-id", "42")
        .body(Full::new(Bytes::from(vec![b'a'; 300_000])))?;
    let r = http_send(req).await?;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body.len(), 300_000);

    // Unknown Host: a clear 503 naming the cause, at once.
    let req = http::Request::builder()
        .uri(format!("http://{}/", client.outbound))
        .header("host", "nobody-here")
        .body(Full::new(Bytes::new()))?;
    let started = std::time::Instant::now();
    let r = http_send(req).await?;
    assert_eq!(r.status, 503);
    assert_eq!(r.headers["x-weft-error"], "unknown-service");
    assert!(r.body.contains("nobody-here"), "{}", r.body);
    assert!(started.elapsed() < std::time::Duration::from_secs(2));
    assert_eq!(app.calls(), 2);
    Ok(())
}
