//! Starting a worker binary as LocalAI does (`BINARY --addr 127.0.0.1:PORT`), waiting until
//! `Health` answers "OK", and stopping it with SIGTERM.
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
    #[error("the worker did not answer Health with \"OK\" within {0:?}")]
    Timeout(Duration),
}

/// A free TCP port on 127.0.0.1 (released before the worker binds it).
pub fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl Worker {
    /// Starts `binary --addr 127.0.0.1:PORT` with extra environment variables and waits up
    /// to `timeout` for Health. The worker's stderr goes to ours.
    pub async fn start(
        binary: &Path,
        env: &[(&str, &str)],
        token: Option<&str>,
        timeout: Duration,
    ) -> Result<Self, WorkerError> {
        let port = free_port().map_err(WorkerError::Port)?;
        let addr = format!("127.0.0.1:{port}");
        let child = Command::new(binary)
            .arg("--addr")
            .arg(&addr)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| WorkerError::Spawn {
                binary: binary.display().to_string(),
                source,
            })?;
        let mut worker = Worker { child, addr };
        worker.wait_healthy(token, timeout).await?;
        Ok(worker)
    }

    async fn wait_healthy(
        &mut self,
        token: Option<&str>,
        timeout: Duration,
    ) -> Result<(), WorkerError> {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(WorkerError::Exited(status));
            }
            if let Ok(mut client) = connect(&self.addr, token).await
                && let Ok(reply) = client.health(HealthMessage {}).await
                && reply.get_ref().message == b"OK"
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
