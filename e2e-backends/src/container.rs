//! Running a backend image for the harness, two ways: as a container (testcontainers, the
//! worker's port mapped to loopback, the model's folder mounted read-only at `/models`), or
//! LocalAI's way: the image's file system exported to a folder and `run.sh` started on the host.
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use backend_common::pb::HealthMessage;
use testcontainers::core::{AccessMode, IntoContainerPort, Mount};
use testcontainers::runners::AsyncRunner;
use testcontainers::{ContainerAsync, GenericImage, ImageExt};
use tokio_stream::StreamExt;

use crate::client::{Client, connect};
use crate::image::{CONTAINER_PORT, ImageError, engine};

/// Where the model folder is mounted in the container.
pub const MODELS_MOUNT: &str = "/models";

/// A backend image could not be run.
#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    /// The engine refused or failed.
    #[error("{0}")]
    Engine(#[from] testcontainers::TestcontainersError),
    /// The image could not be exported.
    #[error("{0}")]
    Image(#[from] ImageError),
    /// The exported file system could not be written.
    #[error("unpacking the image into {path}: {source}")]
    Unpack {
        /// The folder.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The container stopped before it was healthy.
    #[error("the container exited before answering Health; its output:\n{0}")]
    Exited(String),
    /// Health did not answer in time.
    #[error("the container did not answer Health within {0:?}")]
    Timeout(Duration),
}

/// `NAME[:TAG]` split as the engine reads it (the tag is after the last `:` that follows
/// the last `/`; `latest` when there is none).
pub fn split_reference(image: &str) -> (&str, &str) {
    let slash = image.rfind('/').map_or(0, |i| i + 1);
    match image[slash..].rfind(':') {
        Some(i) => (&image[..slash + i], &image[slash + i + 1..]),
        None => (image, "latest"),
    }
}

/// How to start one container of the image.
pub struct ContainerLaunch<'a> {
    /// `NAME[:TAG]` of a local image.
    pub image: &'a str,
    /// Extra environment variables.
    pub env: &'a [(&'a str, &'a str)],
    /// The host folder mounted read-only at [`MODELS_MOUNT`].
    pub models: Option<&'a Path>,
    /// The bearer token Health is called with.
    pub token: Option<&'a str>,
    /// How long to wait for Health.
    pub timeout: Duration,
}

/// A running container of a backend image.
pub struct ContainerWorker {
    container: ContainerAsync<GenericImage>,
    /// `127.0.0.1:PORT` mapped to the worker's port.
    pub addr: String,
}

impl ContainerWorker {
    /// Starts the image with `run.sh --addr 0.0.0.0:50051` and waits until Health answers.
    pub async fn start(launch: ContainerLaunch<'_>) -> Result<Self, ContainerError> {
        let (name, tag) = split_reference(launch.image);
        let mut request = GenericImage::new(name, tag)
            .with_exposed_port(CONTAINER_PORT.tcp())
            .with_cmd(["--addr".to_string(), format!("0.0.0.0:{CONTAINER_PORT}")])
            .with_startup_timeout(launch.timeout);
        for (key, value) in launch.env {
            request = request.with_env_var(*key, *value);
        }
        if let Some(models) = launch.models {
            request = request.with_mount(
                Mount::bind_mount(models.display().to_string(), MODELS_MOUNT)
                    .with_access_mode(AccessMode::ReadOnly),
            );
        }
        let container = request.start().await?;
        let port = container.get_host_port_ipv4(CONTAINER_PORT.tcp()).await?;
        let worker = ContainerWorker {
            container,
            addr: format!("127.0.0.1:{port}"),
        };
        worker.wait_healthy(launch.token, launch.timeout).await?;
        Ok(worker)
    }

    async fn wait_healthy(
        &self,
        token: Option<&str>,
        timeout: Duration,
    ) -> Result<(), ContainerError> {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Ok(mut client) = connect(&self.addr, token).await
                && client.health(HealthMessage {}).await.is_ok()
            {
                return Ok(());
            }
            if !self.container.is_running().await.unwrap_or(true) {
                return Err(ContainerError::Exited(self.output().await));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Err(ContainerError::Timeout(timeout))
    }

    /// What the worker printed so far (stdout then stderr).
    pub async fn output(&self) -> String {
        let out = self.container.stdout_to_vec().await.unwrap_or_default();
        let err = self.container.stderr_to_vec().await.unwrap_or_default();
        format!(
            "{}{}",
            String::from_utf8_lossy(&out),
            String::from_utf8_lossy(&err)
        )
    }

    /// A client for this worker.
    pub async fn client(&self, token: Option<&str>) -> Result<Client, crate::client::ConnectError> {
        connect(&self.addr, token).await
    }

    /// Stops and removes the container (the worker gets SIGTERM first).
    pub async fn stop(self) -> Result<(), ContainerError> {
        self.container.stop().await?;
        self.container.rm().await?;
        Ok(())
    }
}

/// LocalAI's way of installing a backend image: the image's file system, exported from a
/// container created (not started) from it, unpacked into `dir`. Returns the path of `run.sh`.
pub async fn export_rootfs(image: &str, dir: &Path) -> Result<PathBuf, ContainerError> {
    let docker = engine().await?;
    let unpack = |source| ContainerError::Unpack {
        path: dir.into(),
        source,
    };
    let config = bollard::models::ContainerCreateBody {
        image: Some(image.to_string()),
        ..Default::default()
    };
    let created = docker
        .create_container(
            None::<bollard::query_parameters::CreateContainerOptions>,
            config,
        )
        .await
        .map_err(ImageError::from)?;
    let mut archive = Vec::new();
    let mut stream = docker.export_container(&created.id);
    let mut failure = None;
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(bytes) => archive.extend_from_slice(&bytes),
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    let removed = docker
        .remove_container(
            &created.id,
            None::<bollard::query_parameters::RemoveContainerOptions>,
        )
        .await;
    if let Some(e) = failure {
        return Err(ImageError::from(e).into());
    }
    removed.map_err(ImageError::from)?;
    std::fs::create_dir_all(dir).map_err(unpack)?;
    tar::Archive::new(archive.as_slice())
        .unpack(dir)
        .map_err(unpack)?;
    Ok(dir.join("run.sh"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_references() {
        assert_eq!(
            split_reference("localai-rs/llama-cpp:dev"),
            ("localai-rs/llama-cpp", "dev")
        );
        assert_eq!(split_reference("llama-cpp"), ("llama-cpp", "latest"));
        assert_eq!(
            split_reference("localhost:5000/team/img"),
            ("localhost:5000/team/img", "latest")
        );
        assert_eq!(
            split_reference("localhost:5000/team/img:v1"),
            ("localhost:5000/team/img", "v1")
        );
    }
}
