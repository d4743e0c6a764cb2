//! A real browser for the dashboard's tests: Debian's headless Chromium,
//! driven over WebDriver by Debian's `chromedriver` (a child process on a
//! port of its own). Only what the tests need: open a URL, run a script in
//! the page and read its answer, save a screenshot.
//!
//! When Chromium or chromedriver is missing the caller skips, saying so;
//! under `CI=true` that is an error.

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http_body_util::Full;
use serde_json::{Value, json};

use crate::process::{Proc, free_port};
use crate::util::{http_get, http_send, wait_for};

/// The first of `names` found on PATH (or in /usr/bin).
fn find(names: &[&str]) -> Option<PathBuf> {
    let dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    names.iter().find_map(|n| {
        dirs.iter()
            .chain([PathBuf::from("/usr/bin")].iter())
            .map(|d| d.join(n))
            .find(|p| p.is_file())
    })
}

/// Chromium and chromedriver, or `None` (said loudly) when either is
/// missing and CI is not set.
pub fn binaries() -> anyhow::Result<Option<(PathBuf, PathBuf)>> {
    let chromium = find(&["chromium", "chromium-browser"]);
    let driver = find(&["chromedriver"]);
    if let (Some(c), Some(d)) = (chromium, driver) {
        return Ok(Some((c, d)));
    }
    let why = "the dashboard's browser tests need Chromium (Debian: apt-get install chromium chromium-driver)";
    if std::env::var("CI").as_deref() == Ok("true") {
        anyhow::bail!("{why}");
    }
    eprintln!("SKIPPED: {why}");
    Ok(None)
}

/// One headless Chromium session; the browser and its driver end on drop.
pub struct Browser {
    base: String,
    session: String,
    driver: Proc,
}

impl Browser {
    /// Starts chromedriver and a headless Chromium of `width`×`height`.
    /// `None` when they are not installed (see [`binaries`]).
    pub async fn start(width: u32, height: u32) -> anyhow::Result<Option<Self>> {
        let Some((chromium, driver)) = binaries()? else {
            return Ok(None);
        };
        let port = free_port()?;
        let mut proc = Proc::spawn_program(
            &driver,
            &[format!("--port={port}"), "--allowed-ips=127.0.0.1".into()],
        )?;
        let base = format!("http://127.0.0.1:{port}");
        let status = format!("{base}/status");
        let ready = wait_for(
            "chromedriver to be ready",
            Duration::from_secs(20),
            || async {
                let r = http_get(&status).await.ok()?;
                let v: Value = serde_json::from_str(&r.body).ok()?;
                (v["value"]["ready"] == true).then_some(())
            },
        )
        .await;
        if let Err(e) = ready {
            let _ = proc.child.kill();
            anyhow::bail!("{e}; chromedriver's log:\n{}", proc.log_text());
        }
        let caps = json!({
            "capabilities": { "alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": {
                    "binary": chromium.display().to_string(),
                    "args": [
                        "--headless=new",
                        "--no-sandbox",
                        "--disable-gpu",
                        "--disable-dev-shm-usage",
                        "--no-first-run",
                        "--disable-extensions",
                        "--disable-background-networking",
                        "--disable-component-update",
                        "--disable-sync",
                        "--metrics-recording-only",
                        "--no-default-browser-check",
                        format!("--window-size={width},{height}"),
                    ],
                },
            }},
        });
        let mut browser = Browser {
            base,
            session: String::new(),
            driver: proc,
        };
        let v = browser.call("POST", "/session", Some(caps)).await?;
        browser.session = v["sessionId"]
            .as_str()
            .ok_or_else(|| anyhow::anyhow!("no session id in {v}"))?
            .to_string();
        Ok(Some(browser))
    }

    /// One WebDriver command; its `value`, or the driver's error.
    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let req = http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(
                body.map(|b| b.to_string()).unwrap_or_default(),
            )))?;
        let r = tokio::time::timeout(Duration::from_secs(60), http_send(req)).await??;
        let v: Value = serde_json::from_str(&r.body)
            .map_err(|e| anyhow::anyhow!("WebDriver {method} {path}: {e}: {}", r.body))?;
        if !r.status.is_success() {
            anyhow::bail!(
                "WebDriver {method} {path}: {} {}",
                r.status,
                v["value"]["message"].as_str().unwrap_or(&r.body)
            );
        }
        Ok(v["value"].clone())
    }

    fn at(&self, rest: &str) -> String {
        format!("/session/{}{rest}", self.session)
    }

    /// Opens `url` (returns when the page has loaded).
    pub async fn open(&self, url: &str) -> anyhow::Result<()> {
        self.call("POST", &self.at("/url"), Some(json!({ "url": url })))
            .await?;
        Ok(())
    }

    /// Runs `script` (a function body: `return …`) in the page.
    pub async fn eval(&self, script: &str) -> anyhow::Result<Value> {
        self.call(
            "POST",
            &self.at("/execute/sync"),
            Some(json!({ "script": script, "args": [] })),
        )
        .await
    }

    /// Evaluates `script` until `ok` accepts its answer, for at most
    /// `within`; the last answer is in the error.
    pub async fn wait_until(
        &self,
        what: &str,
        within: Duration,
        script: &str,
        ok: impl Fn(&Value) -> bool,
    ) -> anyhow::Result<Value> {
        let last = std::sync::Mutex::new(Value::Null);
        let r = wait_for(what, within, || async {
            // A script that throws (the page is between views) is retried;
            // its error is what the failure shows if nothing better came.
            let v = match self.eval(script).await {
                Ok(v) => v,
                Err(e) => Value::String(format!("(the script failed: {e:#})")),
            };
            if ok(&v) {
                return Some(v);
            }
            *last.lock().unwrap_or_else(|e| e.into_inner()) = v;
            None
        })
        .await;
        r.map_err(|e| {
            let last = last.lock().map(|l| l.to_string()).unwrap_or_default();
            anyhow::anyhow!("{e}; the page said last: {last}")
        })
    }

    /// Saves a PNG of the window to `path` (directories created).
    pub async fn screenshot(&self, path: &Path) -> anyhow::Result<()> {
        let v = self.call("GET", &self.at("/screenshot"), None).await?;
        let b64 = v
            .as_str()
            .ok_or_else(|| anyhow::anyhow!("no screenshot data"))?;
        let png = base64::engine::general_purpose::STANDARD.decode(b64)?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, png)?;
        Ok(())
    }

    /// Resizes the window (a screenshot shows the window only).
    pub async fn resize(&self, width: u32, height: u32) -> anyhow::Result<()> {
        self.call(
            "POST",
            &self.at("/window/rect"),
            Some(json!({ "width": width, "height": height })),
        )
        .await?;
        Ok(())
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Ending the session ends Chromium (a driver killed first would
        // leave it behind); blocking and bounded, as drop cannot wait.
        use std::io::{Read, Write};
        let addr = self.base.trim_start_matches("http://").to_string();
        if !self.session.is_empty()
            && let Ok(addr) = addr.parse::<std::net::SocketAddr>()
            && let Ok(mut s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        {
            let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
            let req = format!(
                "DELETE /session/{} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
                self.session
            );
            if s.write_all(req.as_bytes()).is_ok() {
                let mut sink = Vec::new();
                let _ = s.read_to_end(&mut sink);
            }
        }
        let _ = self.driver.child.kill();
        let _ = self.driver.child.wait();
    }
}
