//! Starting a worker binary as LocalAI does (`BINARY --addr 127.0.0.1:PORT`), waiting until
//! `Health` answers "OK" (or, for the conformance harness, answers at all), and stopping it
//! with SIGTERM.
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use backend_common::pb::HealthMessage;
use tokio::process::{Child, Command};

use crate::client::{Client, connect};

/// A worker process this program started.
pub struct Worker {
    child: Child,
    /// The `HOST:PORT` it listens on.
    pub addr: String,
}

/// The worker could not be started or did not become healthy.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// No free loopback port.
    #[error("no free port on 127.0.0.1: {0}")]
    Port(std::io::Error),
    /// The binary could not be executed.
    #[error("cannot start {binary}: {source}")]
    Spawn {
        /// The binary.
        binary: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The process ended before it was healthy.
    #[error("the worker exited with {0} before answering Health")]
    Exited(std::process::ExitStatus),
    /// Health did not answer "OK" in time.
    #[error("the worker did not answer Health (as required) within {0:?}")]
    Timeout(Duration),
}

/// A free TCP port on 127.0.0.1 (released before the worker binds it).
pub fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// How to start a worker and when it counts as started.
pub struct Launch<'a> {
    /// The worker binary (or `run.sh`).
    pub binary: &'a Path,
    /// Extra environment variables.
    pub env: &'a [(&'a str, &'a str)],
    /// The bearer token Health is called with.
    pub token: Option<&'a str>,
    /// How long to wait for Health.
    pub timeout: Duration,
    /// Started once Health answers anything, not only "OK": the conformance harness checks
    /// the message in its own `health` trial and must not fail every other trial over it.
    pub any_health: bool,
    /// Where the worker's stdout and stderr go; ours when `None`.
    pub log: Option<std::fs::File>,
    /// Pass the address as one argument, `--addr=HOST:PORT`, as LocalAI's harness starts
    /// `run.sh`, instead of `--addr HOST:PORT` as LocalAI itself does.
    pub addr_equals: bool,
}

impl Worker {
    /// Starts `binary --addr 127.0.0.1:PORT` with extra environment variables and waits up
    /// to `timeout` for Health to answer "OK". The worker's stderr goes to ours.
    pub async fn start(
        binary: &Path,
        env: &[(&str, &str)],
        token: Option<&str>,
        timeout: Duration,
    ) -> Result<Self, WorkerError> {
        Self::launch(Launch {
            binary,
            env,
            token,
            timeout,
            any_health: false,
            log: None,
            addr_equals: false,
        })
        .await
    }

    /// Starts a worker as `launch` says.
    pub async fn launch(launch: Launch<'_>) -> Result<Self, WorkerError> {
        let port = free_port().map_err(WorkerError::Port)?;
        let addr = format!("127.0.0.1:{port}");
        let spawn_error = |source| WorkerError::Spawn {
            binary: launch.binary.display().to_string(),
            source,
        };
        let (stdout, stderr) = match &launch.log {
            Some(file) => (
                Stdio::from(file.try_clone().map_err(spawn_error)?),
                Stdio::from(file.try_clone().map_err(spawn_error)?),
            ),
            None => (Stdio::inherit(), Stdio::inherit()),
        };
        let mut command = Command::new(launch.binary);
        if launch.addr_equals {
            command.arg(format!("--addr={addr}"));
        } else {
            command.arg("--addr").arg(&addr);
        }
        let child = command
            .envs(launch.env.iter().copied())
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .map_err(spawn_error)?;
        let mut worker = Worker { child, addr };
        worker
            .wait_healthy(launch.token, launch.timeout, launch.any_health)
            .await?;
        Ok(worker)
    }

    async fn wait_healthy(
        &mut self,
        token: Option<&str>,
        timeout: Duration,
        any_health: bool,
    ) -> Result<(), WorkerError> {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(WorkerError::Exited(status));
            }
            if let Ok(mut client) = connect(&self.addr, token).await
                && let Ok(reply) = client.health(HealthMessage {}).await
                && (any_health || reply.get_ref().message == b"OK")
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(WorkerError::Timeout(timeout))
    }

    /// A client for this worker.
    pub async fn client(&self, token: Option<&str>) -> Result<Client, crate::client::ConnectError> {
        connect(&self.addr, token).await
    }

    /// The process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Sends SIGTERM and waits for the exit (SIGKILL after `grace`).
    pub async fn stop(mut self, grace: Duration) -> std::io::Result<std::process::ExitStatus> {
        if let Some(pid) = self.child.id() {
            // SAFETY: kill(2) on a pid we spawned and have not reaped yet.
            unsafe {
                libc::kill(pid as libc::pid_t, libc::SIGTERM);
            }
        }
        match tokio::time::timeout(grace, self.child.wait()).await {
            Ok(status) => status,
            Err(_) => {
                self.child.kill().await?;
                self.child.wait().await
            }
        }
    }
}
