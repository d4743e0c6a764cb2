//! The wrapped app: `weft-sidecar [flags] -- APP ARGS...`. The sidecar
//! starts the app only once it is ready (so the app's first call finds a
//! certificate and a config), passes SIGTERM, SIGINT and SIGHUP on to it,
//! and when the app exits drains and exits with the app's code. A Job or
//! a batch task in the same container (or pod) then finishes instead of
//! waiting on a sidecar that never exits.

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

    let mut child = tokio::process::Command::new(&app.program)
        .args(&app.args)
        .spawn()
        .map_err(|error| WrapError::Spawn {
            app: app.name(),
            error,
        })?;
    let pid = child.id().and_then(|p| i32::try_from(p).ok());
    tracing::info!(app = %app.name(), pid, "sidecar ready; app started");

    // While the app runs the sidecar serves it: a signal goes to the app
    // (which may still call out while it shuts down), and the sidecar
    // drains only once the app has exited.
    let mut sidecar_result = None;
    let status = loop {
        tokio::select! {
            s = child.wait() => break s.map_err(|error| WrapError::Wait { app: app.name(), error })?,
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
