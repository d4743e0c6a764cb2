//! The wrapped app: `weft-sidecar [flags] -- APP ARGS...`. The sidecar
//! starts the app only once it is ready (so the app's first call finds a
//! certificate and a config), passes SIGTERM, SIGINT and SIGHUP on to it,
//! and when the app exits drains and exits with the app's code. A Job or
//! a batch task in the same container (or pod) then finishes instead of
//! waiting on a sidecar that never exits. As a container's entrypoint
//! (PID 1) it also reaps the orphaned processes the kernel re-parents to
//! it, as tini would.

use std::ffi::OsString;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;

use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::oneshot;

use crate::config::SidecarConfig;
use crate::run::{Listeners, SidecarError, run_notifying};

/// The app to run: a program and its arguments (what follows `--`).
#[derive(Debug, Clone)]
pub struct AppCommand {
    program: OsString,
    args: Vec<OsString>,
}

impl AppCommand {
    /// `None` when nothing follows `--` (or there is no `--`): no app.
    pub fn new(mut words: Vec<OsString>) -> Option<Self> {
        if words.is_empty() {
            return None;
        }
        let program = words.remove(0);
        Some(AppCommand {
            program,
            args: words,
        })
    }

    fn name(&self) -> String {
        self.program.to_string_lossy().into_owned()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WrapError {
    #[error(transparent)]
    Sidecar(#[from] SidecarError),
    #[error("the sidecar stopped before it was ready; {app} was not started")]
    StoppedBeforeReady { app: String },
    #[error("cannot start the app {app}: {error}")]
    Spawn { app: String, error: std::io::Error },
    #[error("cannot watch {signal}: {error}")]
    Signals {
        signal: &'static str,
        error: std::io::Error,
    },
    #[error("cannot wait for the app {app}: {error}")]
    Wait { app: String, error: std::io::Error },
}

/// The signals passed on to the app, as a shell reports them (128 + n).
struct Signals {
    term: Signal,
    int: Signal,
    hup: Signal,
}

impl Signals {
    /// Watched from the start: a SIGTERM while the sidecar gets ready must
    /// not kill it with the default action.
    fn watch() -> Result<Self, WrapError> {
        let w = |kind: SignalKind, name: &'static str| {
            signal(kind).map_err(|error| WrapError::Signals {
                signal: name,
                error,
            })
        };
        Ok(Signals {
            term: w(SignalKind::terminate(), "SIGTERM")?,
            int: w(SignalKind::interrupt(), "SIGINT")?,
            hup: w(SignalKind::hangup(), "SIGHUP")?,
        })
    }

    /// The next signal's number.
    async fn recv(&mut self) -> i32 {
        tokio::select! {
            _ = self.term.recv() => libc::SIGTERM,
            _ = self.int.recv() => libc::SIGINT,
            _ = self.hup.recv() => libc::SIGHUP,
        }
    }
}

/// Runs the sidecar with `app` beside it; returns the exit code the
/// process should end with: the app's, or 128 + the signal that ended it
/// (or, if a signal came before the app started, 128 + that signal).
pub async fn run(
    cfg: SidecarConfig,
    listeners: Listeners,
    app: AppCommand,
) -> Result<u8, WrapError> {
    let mut signals = Signals::watch()?;
    let (stop, stopped) = oneshot::channel::<()>();
    let (ready_tx, ready) = oneshot::channel();
    let sidecar = run_notifying(
        cfg,
        listeners,
        async {
            let _ = stopped.await;
        },
        Some(ready_tx),
    );
    tokio::pin!(sidecar);

    // Before the app: ready, a signal, or the sidecar giving up.
    tokio::select! {
        r = ready => {
            if r.is_err() {
                // The sender went with the sidecar's tasks: it ended.
                (&mut sidecar).await?;
                return Err(WrapError::StoppedBeforeReady { app: app.name() });
            }
        }
        sig = signals.recv() => {
            tracing::info!(signal = sig, app = %app.name(), "signal before the app started; stopping");
            let _ = stop.send(());
            (&mut sidecar).await?;
            return Ok(exit_code_for_signal(sig));
        }
        r = &mut sidecar => {
            r?;
            return Err(WrapError::StoppedBeforeReady { app: app.name() });
        }
    }

    let mut child = AppChild::spawn(&app)?;
    let pid = child.id();
    tracing::info!(app = %app.name(), pid, reaper = child.is_reaper(), "sidecar ready; app started");

    // While the app runs the sidecar serves it: a signal goes to the app
    // (which may still call out while it shuts down), and the sidecar
    // drains only once the app has exited.
    let mut sidecar_result = None;
    let status = loop {
        tokio::select! {
            s = child.wait(&app) => break s?,
            sig = signals.recv() => {
                tracing::info!(signal = sig, "passing the signal to the app");
                forward(pid, sig);
            }
            r = &mut sidecar, if sidecar_result.is_none() => {
                // Stopped on its own (POST /shutdown): the app is asked to
                // stop too rather than run on outside the mesh.
                tracing::warn!("the sidecar stopped while the app runs; sending the app SIGTERM");
                forward(pid, libc::SIGTERM);
                sidecar_result = Some(r);
            }
        }
    };
    let code = exit_code(status);
    tracing::info!(app = %app.name(), %status, code, "app exited; draining");
    child.keep_reaping();
    let _ = stop.send(());
    let result = match sidecar_result {
        Some(r) => r,
        None => sidecar.await,
    };
    if let Err(e) = result {
        // The app's code is what a Job or a supervisor reads; the
        // sidecar's failure is told, not substituted for it.
        tracing::error!(error = %e, "the sidecar ended with an error");
    }
    Ok(code)
}

/// The app's process. As PID 1 of its PID namespace (a container's
/// entrypoint) the sidecar is also the reaper of every orphan in it: a
/// process whose parent died is re-parented to PID 1, and nothing else
/// will ever wait for it, so without reaping each exited orphan stays a
/// zombie until the container ends (tini and dumb-init exist for this).
/// Reaping uses `waitpid(-1)`, which would also take the app's status
/// from tokio's child handling, so there the app is a plain child and its
/// status is picked out of what is reaped.
enum AppChild {
    Tokio(tokio::process::Child),
    Reaper(Reaper),
}

impl AppChild {
    fn spawn(app: &AppCommand) -> Result<Self, WrapError> {
        let spawn_error = |error| WrapError::Spawn {
            app: app.name(),
            error,
        };
        if std::process::id() != 1 {
            let child = tokio::process::Command::new(&app.program)
                .args(&app.args)
                .spawn()
                .map_err(spawn_error)?;
            return Ok(AppChild::Tokio(child));
        }
        // Watched before the app exists, so that no exit goes unnoticed.
        let sigchld = signal(SignalKind::child()).map_err(|error| WrapError::Signals {
            signal: "SIGCHLD",
            error,
        })?;
        let child = std::process::Command::new(&app.program)
            .args(&app.args)
            .spawn()
            .map_err(spawn_error)?;
        let pid = i32::try_from(child.id())
            .map_err(|_| spawn_error(std::io::Error::other("the app's pid does not fit an i32")))?;
        Ok(AppChild::Reaper(Reaper {
            app: pid,
            sigchld,
            app_name: app.name(),
        }))
    }

    fn id(&self) -> Option<i32> {
        match self {
            AppChild::Tokio(c) => c.id().and_then(|p| i32::try_from(p).ok()),
            AppChild::Reaper(r) => Some(r.app),
        }
    }

    fn is_reaper(&self) -> bool {
        matches!(self, AppChild::Reaper(_))
    }

    /// The app's exit status. Cancel-safe: a status is never reaped
    /// without being returned in the same poll.
    async fn wait(&mut self, app: &AppCommand) -> Result<ExitStatus, WrapError> {
        match self {
            AppChild::Tokio(c) => c.wait().await.map_err(|error| WrapError::Wait {
                app: app.name(),
                error,
            }),
            AppChild::Reaper(r) => r.wait_app().await,
        }
    }

    /// After the app: orphans still running may exit while the sidecar
    /// drains; they are reaped until the process ends.
    fn keep_reaping(self) {
        if let AppChild::Reaper(mut r) = self {
            tokio::spawn(async move {
                loop {
                    if r.reap_all().is_err() {
                        return; // no child left at all
                    }
                    r.sigchld.recv().await;
                }
            });
        }
    }
}

/// PID 1's side of [`AppChild`].
struct Reaper {
    app: i32,
    sigchld: Signal,
    app_name: String,
}

impl Reaper {
    async fn wait_app(&mut self) -> Result<ExitStatus, WrapError> {
        loop {
            match self.reap_all() {
                Ok(Some(status)) => return Ok(status),
                Ok(None) => {}
                Err(error) => {
                    return Err(WrapError::Wait {
                        app: self.app_name.clone(),
                        error,
                    });
                }
            }
            // A SIGCHLD since the last look (tokio keeps one pending).
            self.sigchld.recv().await;
        }
    }

    /// Reaps every child that has exited; returns the app's status if it
    /// was among them. An error is waitpid's (ECHILD: no child left).
    fn reap_all(&mut self) -> std::io::Result<Option<ExitStatus>> {
        loop {
            let (pid, status) = match waitpid_any() {
                Ok(Some(r)) => r,
                Ok(None) => return Ok(None),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if pid == self.app {
                return Ok(Some(status));
            }
            tracing::debug!(pid, %status, "reaped an orphaned process");
        }
    }
}

/// `waitpid(-1, WNOHANG)`: a child that exited and its status, or `None`
/// when children remain and none has exited.
#[allow(unsafe_code)]
fn waitpid_any() -> std::io::Result<Option<(i32, ExitStatus)>> {
    let mut status: libc::c_int = 0;
    // SAFETY: waitpid(2) writes one int through a pointer to a local
    // that outlives the call.
    let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
    match pid {
        0 => Ok(None),
        p if p > 0 => Ok(Some((p, ExitStatus::from_raw(status)))),
        _ => Err(std::io::Error::last_os_error()),
    }
}

/// The app's exit code, or 128 + the signal that killed it (as a shell
/// and Kubernetes report it).
fn exit_code(status: ExitStatus) -> u8 {
    match (status.code(), status.signal()) {
        (Some(c), _) => (c & 0xff) as u8,
        (None, Some(sig)) => exit_code_for_signal(sig),
        (None, None) => 1,
    }
}

fn exit_code_for_signal(sig: i32) -> u8 {
    u8::try_from(128 + sig).unwrap_or(u8::MAX)
}

/// Sends `sig` to the app (`pid` is `None` once it was reaped).
fn forward(pid: Option<i32>, sig: i32) {
    if let Some(pid) = pid
        && kill(pid, sig) != 0
    {
        tracing::warn!(pid, signal = sig, error = %std::io::Error::last_os_error(), "cannot signal the app");
    }
}

#[allow(unsafe_code)]
fn kill(pid: i32, sig: i32) -> i32 {
    // SAFETY: kill(2) takes plain integers and touches no memory of ours;
    // `pid` is our own child, not yet reaped (its exit is awaited in the
    // same select loop that calls this).
    unsafe { libc::kill(pid, sig) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_after_the_separator_is_no_app() {
        assert!(AppCommand::new(vec![]).is_none());
        let a = AppCommand::new(vec!["sh".into(), "-c".into(), "exit 7".into()]).expect("app");
        assert_eq!(a.program, "sh");
        assert_eq!(a.args, vec![OsString::from("-c"), OsString::from("exit 7")]);
    }

    #[test]
    fn exit_codes_are_the_apps_or_128_plus_the_signal() {
        assert_eq!(exit_code(ExitStatus::from_raw(7 << 8)), 7);
        assert_eq!(exit_code(ExitStatus::from_raw(0)), 0);
        // Killed by SIGTERM (raw wait status: the signal in the low bits).
        assert_eq!(exit_code(ExitStatus::from_raw(libc::SIGTERM)), 143);
        assert_eq!(exit_code(ExitStatus::from_raw(libc::SIGKILL)), 137);
    }
}
