//! Driver supervision: runs chromedriver (or geckodriver) on a loopback port, restarts it
//! when it dies, and hands out its URL once it accepts connections.

use crate::error::BrowserError;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const READY_TIMEOUT: Duration = Duration::from_secs(20);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// A supervised WebDriver server process.
pub(crate) struct SupervisedDriver {
    url: watch::Receiver<Option<String>>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl SupervisedDriver {
    /// Starts the driver and waits until it accepts connections.
    pub(crate) async fn start(binary: PathBuf, display: Option<String>) -> Result<Self, BrowserError> {
        let (tx, url) = watch::channel(None);
        let stop = CancellationToken::new();
        let first = launch(&binary, display.as_deref()).await?;
        let task = tokio::spawn(supervise(binary, display, first, tx, stop.clone()));
        Ok(Self { url, stop, task })
    }

    /// The driver's URL, waiting for a restart in progress.
    pub(crate) async fn url(&self) -> Result<String, BrowserError> {
        let mut rx = self.url.clone();
        let ready = tokio::time::timeout(READY_TIMEOUT, rx.wait_for(Option::is_some)).await;
        match ready {
            Ok(Ok(url)) => Ok(url.clone().unwrap_or_default()),
            Ok(Err(_)) => Err(BrowserError::DriverUnavailable("the driver supervisor stopped".into())),
            Err(_) => Err(BrowserError::DriverUnavailable(format!("not ready after {}s", READY_TIMEOUT.as_secs()))),
        }
    }

    pub(crate) async fn shutdown(self) {
        self.stop.cancel();
        if let Err(e) = self.task.await {
            tracing::warn!(error = %e, "driver supervisor ended abnormally");
        }
    }
}

struct Running {
    child: Child,
    url: String,
    /// The driver's process group (its pid), still valid for killing after it exited.
    group: u32,
}

async fn supervise(
    binary: PathBuf,
    display: Option<String>,
    first: Running,
    tx: watch::Sender<Option<String>>,
    stop: CancellationToken,
) {
    let mut running = Some(first);
    let mut backoff = Duration::from_millis(100);
    loop {
        let Some(Running { mut child, url, group }) = running.take() else {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            match launch(&binary, display.as_deref()).await {
                Ok(r) => running = Some(r),
                Err(e) => {
                    tracing::warn!(error = %e, driver = %binary.display(), "driver restart failed");
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
            continue;
        };
        tracing::info!(driver = %binary.display(), url = %url, "WebDriver server ready");
        tx.send_replace(Some(url));
        let started = Instant::now();
        tokio::select! {
            _ = stop.cancelled() => {
                tx.send_replace(None);
                stop_process_group(&mut child, group).await;
                return;
            }
            status = child.wait() => {
                tx.send_replace(None);
                tracing::warn!(driver = %binary.display(), status = ?status, "WebDriver server exited; restarting");
                // Its browsers die with their process group; orphans are reaped per session.
                crate::process::kill_group(group);
                if started.elapsed() > Duration::from_secs(10) {
                    backoff = Duration::from_millis(100);
                }
            }
        }
    }
}

/// Starts the driver on a free loopback port and waits until the port accepts connections.
async fn launch(binary: &Path, display: Option<&str>) -> Result<Running, BrowserError> {
    let port = free_port().await?;
    let mut cmd = Command::new(binary);
    cmd.arg(format!("--port={port}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        // Its own process group, so shutdown can stop the driver and every browser it started.
        .process_group(0)
        .kill_on_drop(true);
    // SAFETY: prctl is async-signal-safe and touches no memory of ours. With it the kernel
    // kills the driver when the agent dies, even by SIGKILL, so none is left behind.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    if is_geckodriver(binary) {
        // Firefox's WebDriver BiDi listens on this port (default 9222): a port of its own,
        // or two agents' browsers on one machine would reach each other's sessions.
        cmd.arg("--host=127.0.0.1").arg(format!("--websocket-port={}", free_port().await?));
    }
    match display {
        Some(d) => cmd.env("DISPLAY", d),
        None => cmd.env_remove("DISPLAY"),
    };
    let mut child = cmd.spawn().map_err(|e| BrowserError::io(format!("starting {}", binary.display()), e))?;
    let group = child.id().unwrap_or_default();
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return Ok(Running { child, url: format!("http://127.0.0.1:{port}"), group });
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(BrowserError::DriverUnavailable(format!("{} exited at start ({status})", binary.display())));
        }
        if Instant::now() > deadline {
            stop_process_group(&mut child, group).await;
            return Err(BrowserError::DriverUnavailable(format!("{} did not listen on port {port}", binary.display())));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn is_geckodriver(binary: &Path) -> bool {
    binary.file_name().is_some_and(|n| n.to_string_lossy().contains("gecko"))
}

async fn free_port() -> Result<u16, BrowserError> {
    let listener = TcpListener::bind(("127.0.0.1", 0)).await.map_err(|e| BrowserError::io("finding a free port", e))?;
    listener.local_addr().map(|a| a.port()).map_err(|e| BrowserError::io("finding a free port", e))
}

async fn stop_process_group(child: &mut Child, group: u32) {
    crate::process::kill_group(group);
    if let Err(e) = child.kill().await {
        tracing::debug!(error = %e, "driver already gone");
    }
}
