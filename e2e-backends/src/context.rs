//! What the trials share: the configuration, one async runtime, the worker under test (started
//! on first use and kept for all trials, as LocalAI's harness does) and the model it has loaded.
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use backend_common::pb::{self, ModelOptions, PredictOptions};
use tokio::sync::Mutex;

use crate::caps::CheckError;
use crate::client::{Client, ConnectError, connect};
use crate::config::{Config, ImageRun, ModelSource, Target};
use crate::container::{ContainerLaunch, ContainerWorker, MODELS_MOUNT, export_rootfs};
use crate::worker::{Launch, Worker};

/// The shared state of one harness run.
pub struct Context {
    /// The configuration.
    pub config: Config,
    /// Print details of each check (`--nocapture`).
    pub verbose: bool,
    runtime: tokio::runtime::Runtime,
    state: Mutex<State>,
    /// The model file on this machine, once known (downloaded at most once).
    host_model: Mutex<Option<HostModel>>,
    /// `BACKEND_IMAGE_RUN=host`: the image's file system, exported once.
    rootfs: Mutex<Option<tempfile::TempDir>>,
}

#[derive(Default)]
struct State {
    worker: Option<Started>,
    /// The options the worker's model was loaded with, when one is loaded by us.
    loaded: Option<LoadKey>,
}

/// A worker the harness started: a process (a binary, or an image's `run.sh` on this
/// machine) or a container.
pub enum Started {
    /// A process on this machine.
    Process(Box<Worker>),
    /// A container of the image.
    Container(Box<ContainerWorker>),
}

impl Started {
    /// The `HOST:PORT` it answers on.
    pub fn addr(&self) -> &str {
        match self {
            Started::Process(w) => &w.addr,
            Started::Container(c) => &c.addr,
        }
    }

    /// A client for it.
    pub async fn client(&self, token: Option<&str>) -> Result<Client, ConnectError> {
        connect(self.addr(), token).await
    }

    /// Stops it (SIGTERM, then SIGKILL after `grace` for processes; the container is removed).
    pub async fn stop(self, grace: Duration) {
        match self {
            Started::Process(w) => {
                let _ = w.stop(grace).await;
            }
            Started::Container(c) => {
                let _ = c.stop().await;
            }
        }
    }
}

/// The model as this machine has it.
#[derive(Debug, Clone)]
enum HostModel {
    /// A file (given, or downloaded).
    File(PathBuf),
    /// `BACKEND_TEST_MODEL_NAME`: only a name.
    Name(String),
}

/// What a load was made with, to know whether the worker holds the default model.
#[derive(Debug, Clone, PartialEq, Eq)]
struct LoadKey {
    options: Vec<String>,
    embeddings: bool,
}

/// The model as the worker is told about it.
#[derive(Debug, Clone)]
struct ResolvedModel {
    model: String,
    model_file: String,
    model_path: String,
}

impl Context {
    /// A context for `config`, with its own runtime.
    pub fn new(config: Config, verbose: bool) -> std::io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        Ok(Context {
            config,
            verbose,
            runtime,
            state: Mutex::new(State::default()),
            host_model: Mutex::new(None),
            rootfs: Mutex::new(None),
        })
    }

    /// Runs `future` to completion on the shared runtime.
    pub fn block_on<F: Future>(&self, future: F) -> F::Output {
        self.runtime.block_on(future)
    }

    /// Prints a detail of a check when `--nocapture` was given.
    pub fn note(&self, message: impl AsRef<str>) {
        if self.verbose {
            eprintln!("    {}", message.as_ref());
        }
    }

    /// Whether the target is a binary or image the harness can start more copies of.
    pub fn can_spawn(&self) -> bool {
        matches!(
            self.config.target,
            Some(Target::Binary(_) | Target::Image { .. })
        )
    }

    /// Whether the worker runs on this machine, seeing its files (a binary, or an image's
    /// `run.sh` with `BACKEND_IMAGE_RUN=host`).
    pub fn runs_here(&self) -> bool {
        matches!(
            self.config.target,
            Some(
                Target::Binary(_)
                    | Target::Image {
                        run: ImageRun::Host,
                        ..
                    }
            )
        )
    }

    /// The address of the worker under test, starting it on first use.
    pub async fn addr(&self) -> Result<String, CheckError> {
        let mut state = self.state.lock().await;
        self.addr_locked(&mut state).await
    }

    async fn addr_locked(&self, state: &mut State) -> Result<String, CheckError> {
        match &self.config.target {
            None => Err(CheckError::Setup(
                "no target: set BACKEND_BINARY or BACKEND_ADDR".into(),
            )),
            Some(Target::Addr(addr)) => Ok(addr.clone()),
            Some(Target::Binary(_) | Target::Image { .. }) => {
                if state.worker.is_none() {
                    let env: Vec<(&str, &str)> = self
                        .config
                        .token
                        .as_deref()
                        .map(|t| vec![(backend_common::server::AUTH_TOKEN_ENV, t)])
                        .unwrap_or_default();
                    state.worker = Some(self.spawn(&env, self.config.token.as_deref()).await?);
                }
                Ok(state
                    .worker
                    .as_ref()
                    .map(|w| w.addr().to_string())
                    .unwrap_or_default())
            }
        }
    }

    /// Starts another copy of the target binary with extra environment variables (for
    /// checks that need a fresh or differently configured worker); `None` when the target
    /// cannot be started by the harness.
    pub async fn spawn_fresh(
        &self,
        env: &[(&str, &str)],
        token: Option<&str>,
    ) -> Result<Option<Started>, CheckError> {
        if !self.can_spawn() {
            return Ok(None);
        }
        Ok(Some(self.spawn(env, token).await?))
    }

    async fn spawn(
        &self,
        env: &[(&str, &str)],
        token: Option<&str>,
    ) -> Result<Started, CheckError> {
        match &self.config.target {
            Some(Target::Binary(binary)) => self.spawn_process(binary, env, token, false).await,
            Some(Target::Image {
                reference,
                run: ImageRun::Host,
            }) => {
                let run_sh = self.exported(reference).await?;
                self.spawn_process(&run_sh, env, token, true).await
            }
            Some(Target::Image {
                reference,
                run: ImageRun::Container,
            }) => {
                let models = match self.host_model().await? {
                    HostModel::File(file) => file.parent().map(Path::to_path_buf),
                    HostModel::Name(_) => None,
                };
                let worker = ContainerWorker::start(ContainerLaunch {
                    image: reference,
                    env,
                    models: models.as_deref(),
                    token,
                    timeout: self.config.startup_timeout,
                })
                .await
                .map_err(|e| CheckError::Setup(format!("BACKEND_IMAGE {reference}: {e}")))?;
                Ok(Started::Container(Box::new(worker)))
            }
            _ => Err(CheckError::Setup(
                "the target is neither a binary nor an image".into(),
            )),
        }
    }

    async fn spawn_process(
        &self,
        binary: &Path,
        env: &[(&str, &str)],
        token: Option<&str>,
        addr_equals: bool,
    ) -> Result<Started, CheckError> {
        let log = if self.verbose {
            None
        } else {
            Some(worker_log()?)
        };
        Ok(Started::Process(Box::new(
            Worker::launch(Launch {
                binary,
                env,
                token,
                timeout: self.config.startup_timeout,
                any_health: true,
                log,
                addr_equals,
            })
            .await?,
        )))
    }

    /// `run.sh` of the image's file system, exported on first use.
    async fn exported(&self, reference: &str) -> Result<PathBuf, CheckError> {
        let mut rootfs = self.rootfs.lock().await;
        if rootfs.is_none() {
            let dir = tempfile::Builder::new()
                .prefix("e2e-backends-rootfs-")
                .tempdir()
                .map_err(|e| CheckError::Setup(format!("a folder for the image: {e}")))?;
            export_rootfs(reference, dir.path())
                .await
                .map_err(|e| CheckError::Setup(format!("BACKEND_IMAGE {reference}: {e}")))?;
            *rootfs = Some(dir);
        }
        Ok(rootfs
            .as_ref()
            .map(|d| d.path().join("run.sh"))
            .unwrap_or_default())
    }

    /// A client of the worker under test, with the configured token.
    pub async fn client(&self) -> Result<Client, CheckError> {
        let addr = self.addr().await?;
        Ok(connect(&addr, self.config.token.as_deref()).await?)
    }

    /// A client of the worker under test, whose default model is loaded (loading it if the
    /// worker holds none or another one).
    pub async fn loaded_client(&self) -> Result<Client, CheckError> {
        let mut state = self.state.lock().await;
        let addr = self.addr_locked(&mut state).await?;
        let mut client = connect(&addr, self.config.token.as_deref()).await?;
        let key = self.default_key();
        if state.loaded.as_ref() != Some(&key) {
            drop(state);
            self.load(&mut client, &key.options, key.embeddings).await?;
        }
        Ok(client)
    }

    fn default_key(&self) -> LoadKey {
        LoadKey {
            options: self.config.options.clone(),
            embeddings: self.config.requested(crate::caps::Capability::Embeddings),
        }
    }

    /// Loads the model with `options` through `client` and remembers what is loaded.
    /// `success=false` is an error here; the `load` check reports it as such.
    pub async fn load(
        &self,
        client: &mut Client,
        options: &[String],
        embeddings: bool,
    ) -> Result<pb::Result, CheckError> {
        let request = self.model_options(options, embeddings).await?;
        self.note(format!(
            "LoadModel Model={:?} ModelFile={:?} Options={:?}",
            request.model, request.model_file, request.options
        ));
        let mut state = self.state.lock().await;
        state.loaded = None;
        let result = client
            .load_model(request)
            .await
            .map_err(|status| CheckError::Rpc {
                call: "LoadModel",
                status,
            })?
            .into_inner();
        if !result.success {
            return Err(CheckError::Failed(format!(
                "LoadModel answered success=false: {}",
                result.message
            )));
        }
        state.loaded = Some(LoadKey {
            options: options.to_vec(),
            embeddings,
        });
        Ok(result)
    }

    /// Forgets which model is loaded (after Free, or after a check loaded something else).
    pub async fn forget_load(&self) {
        self.state.lock().await.loaded = None;
    }

    /// The LoadModel request for the configured model with `options`.
    pub async fn model_options(
        &self,
        options: &[String],
        embeddings: bool,
    ) -> Result<ModelOptions, CheckError> {
        let model = self.resolve_model().await?;
        Ok(ModelOptions {
            model: model.model,
            model_file: model.model_file,
            model_path: model.model_path,
            context_size: self.config.ctx_size,
            threads: self.config.threads,
            embeddings,
            options: options.to_vec(),
            ..Default::default()
        })
    }

    async fn resolve_model(&self) -> Result<ResolvedModel, CheckError> {
        let in_container = matches!(
            self.config.target,
            Some(Target::Image {
                run: ImageRun::Container,
                ..
            })
        );
        Ok(match self.host_model().await? {
            HostModel::Name(name) => ResolvedModel {
                model: name,
                model_file: String::new(),
                model_path: String::new(),
            },
            HostModel::File(file) => {
                let name = file
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                if in_container {
                    // The file's folder is mounted read-only at /models.
                    ResolvedModel {
                        model_file: format!("{MODELS_MOUNT}/{name}"),
                        model_path: MODELS_MOUNT.to_string(),
                        model: name,
                    }
                } else {
                    ResolvedModel {
                        model: name,
                        model_file: file.display().to_string(),
                        model_path: file
                            .parent()
                            .map(|p| p.display().to_string())
                            .unwrap_or_default(),
                    }
                }
            }
        })
    }

    /// The size of the model file on this machine; `None` when the model is only a name.
    pub async fn model_file_size(&self) -> Result<Option<u64>, CheckError> {
        match self.host_model().await? {
            HostModel::Name(_) => Ok(None),
            HostModel::File(file) => std::fs::metadata(&file)
                .map(|m| Some(m.len()))
                .map_err(|e| CheckError::Setup(format!("{}: {e}", file.display()))),
        }
    }

    /// The model as this machine has it, downloading `BACKEND_TEST_MODEL_URL` once.
    async fn host_model(&self) -> Result<HostModel, CheckError> {
        let mut cached = self.host_model.lock().await;
        if let Some(model) = &*cached {
            return Ok(model.clone());
        }
        let model = match &self.config.model {
            None => {
                return Err(CheckError::Setup(
                    "no model: set BACKEND_TEST_MODEL_FILE, BACKEND_TEST_MODEL_URL or BACKEND_TEST_MODEL_NAME".into(),
                ));
            }
            Some(ModelSource::Name(name)) => HostModel::Name(name.clone()),
            Some(ModelSource::File(path)) => {
                HostModel::File(std::fs::canonicalize(path).map_err(|e| {
                    CheckError::Setup(format!("BACKEND_TEST_MODEL_FILE {}: {e}", path.display()))
                })?)
            }
            Some(ModelSource::Url(url)) => {
                let dir = std::env::temp_dir().join("e2e-backends-models");
                HostModel::File(download(url, &dir, "BACKEND_TEST_MODEL_URL").await?)
            }
        };
        if let HostModel::File(file) = &model
            && !self.config.extra_files.is_empty()
        {
            // Beside the model, as LocalAI's harness puts them (a model's tokenizer, voices).
            let dir = file.parent().unwrap_or(Path::new("."));
            for entry in &self.config.extra_files {
                download(entry, dir, "BACKEND_TEST_EXTRA_FILES").await?;
            }
        }
        *cached = Some(model.clone());
        Ok(model)
    }

    /// The predict request of LocalAI's `predict` and `stream` checks.
    pub fn predict_options(&self) -> PredictOptions {
        PredictOptions {
            prompt: self.config.prompt.clone(),
            tokens: 20,
            temperature: 0.1,
            top_k: 40,
            top_p: 0.9,
            ..Default::default()
        }
    }

    /// Stops the worker the harness started, if any.
    pub fn shutdown(&self) {
        self.block_on(async {
            if let Some(worker) = self.state.lock().await.worker.take() {
                worker.stop(Duration::from_secs(10)).await;
            }
        });
    }
}

/// A file for a started worker's logs, so that they do not interleave with the trial
/// lines (`--nocapture` shows them instead).
fn worker_log() -> Result<std::fs::File, CheckError> {
    let path = std::env::temp_dir().join(format!("e2e-backends-{}.log", std::process::id()));
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(|e| CheckError::Setup(format!("worker log {}: {e}", path.display())))
}

/// `URL#name` as LocalAI's harness reads it: the URL, and the file name to keep it under
/// (after the first `#`; without one, the URL's last path segment, or `model.bin`).
pub fn split_url_and_name(entry: &str) -> (&str, &str) {
    if let Some((url, name)) = entry.split_once('#')
        && !name.is_empty()
    {
        return (url, name);
    }
    let url = entry.split('#').next().unwrap_or(entry);
    let name = url
        .rsplit('/')
        .next()
        .filter(|n| !n.is_empty())
        .unwrap_or("model.bin");
    (url, name)
}

/// Downloads `entry` (`URL[#name]`, with `curl`) into `dir` once, as LocalAI's harness does;
/// `var` names the variable it came from, for messages.
pub async fn download(entry: &str, dir: &Path, var: &str) -> Result<PathBuf, CheckError> {
    let (url, name) = split_url_and_name(entry);
    if name.contains('/') || name == ".." {
        return Err(CheckError::Setup(format!(
            "{var}: `#{name}` must be a plain file name"
        )));
    }
    let path = dir.join(name);
    if path.is_file() {
        return Ok(path);
    }
    std::fs::create_dir_all(dir)
        .map_err(|e| CheckError::Setup(format!("{}: {e}", dir.display())))?;
    let partial = dir.join(format!("{name}.part"));
    let output = tokio::process::Command::new("curl")
        .args(["--fail", "--location", "--silent", "--show-error"])
        .args(["--connect-timeout", "20", "--output"])
        .arg(&partial)
        .arg(url)
        .output()
        .await
        .map_err(|e| CheckError::Setup(format!("{var} needs curl: {e}")))?;
    if !output.status.success() {
        let _ = std::fs::remove_file(&partial);
        return Err(CheckError::Setup(format!(
            "{var}: {url} cannot be downloaded from this machine ({}): {}; \
             download it elsewhere and use a local file",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    std::fs::rename(&partial, &path)
        .map_err(|e| CheckError::Setup(format!("{}: {e}", path.display())))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hash_names_the_file_as_localai_reads_it() {
        assert_eq!(
            split_url_and_name("https://h/m/resolve/main/enc.onnx#encoder.onnx"),
            ("https://h/m/resolve/main/enc.onnx", "encoder.onnx")
        );
        assert_eq!(
            split_url_and_name("https://h/m/tokens.txt"),
            ("https://h/m/tokens.txt", "tokens.txt")
        );
        assert_eq!(
            split_url_and_name("https://h/"),
            ("https://h/", "model.bin")
        );
        assert_eq!(
            split_url_and_name("https://h/a.gguf#"),
            ("https://h/a.gguf", "a.gguf")
        );
    }

    #[tokio::test]
    async fn downloads_land_under_their_names_beside_each_other() {
        let source = tempfile::tempdir().unwrap();
        let target = tempfile::tempdir().unwrap();
        let file = source.path().join("weights.gguf");
        std::fs::write(&file, b"weights").unwrap();
        let url = format!("file://{}", file.display());
        let kept = download(&format!("{url}#renamed.gguf"), target.path(), "TEST")
            .await
            .unwrap();
        assert_eq!(kept, target.path().join("renamed.gguf"));
        assert_eq!(std::fs::read(&kept).unwrap(), b"weights");
        let plain = download(&url, target.path(), "TEST").await.unwrap();
        assert_eq!(plain, target.path().join("weights.gguf"));
        let escape = download(&format!("{url}#../x"), target.path(), "TEST").await;
        assert!(
            matches!(&escape, Err(CheckError::Setup(m)) if m.contains("plain file name")),
            "{:?}",
            escape.err()
        );
        let missing = download("file:///nonexistent/x.bin", target.path(), "TEST_VAR").await;
        assert!(
            matches!(&missing, Err(CheckError::Setup(m)) if m.starts_with("TEST_VAR:")),
            "{:?}",
            missing.err()
        );
    }
}
