//! A worker test shared by both workers: Free hands the process's memory back by replacing
//! its image in place (same PID, same port), ends the streams still running on the freed
//! model with OK, and leaves a worker that loads and answers as before; with
//! `LOCALAI_BACKEND_RESTART_ON_FREE=false` the process and its connections stay.
use std::path::Path;
use std::time::{Duration, Instant};

use backend_common::pb::status_response::State;
use backend_common::pb::{HealthMessage, PredictOptions};

use crate::client::Client;
use crate::testing::{collect, load, load_options, peak_rss, raw, text};
use crate::worker::Worker;

const MODEL: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

fn long_stream() -> PredictOptions {
    PredictOptions {
        ignore_eos: true,
        ..raw("Once upon a time", 400)
    }
}

async fn greedy(client: &mut Client) -> String {
    text(&collect(client, raw("The capital of France is", 8)).await)
}

async fn status(client: &mut Client) -> State {
    let status = client.status(HealthMessage {}).await.unwrap().into_inner();
    State::try_from(status.state).unwrap()
}

/// Peak resident bytes of `pid` (a new image starts its own count); the largest number
/// while it cannot be read.
fn peak(pid: u32) -> u64 {
    peak_rss(pid).unwrap_or(u64::MAX)
}

/// Whether `pid` runs a new process image since its peak was `loaded`: a new image's peak
/// is a few MiB. Half is the line because the kernel's peak figure is not strictly monotonic
/// (taken lazily, from per-CPU counters): an image that stays can read a little below
/// `loaded`.
fn replaced(pid: u32, loaded: u64) -> bool {
    peak(pid) < loaded / 2
}

/// Free restarts `binary`'s worker in place (see the module's text).
pub async fn restarts_in_place(binary: &Path) {
    let worker = Worker::start(binary, &[], None, Duration::from_secs(30))
        .await
        .expect("worker starts");
    let pid = worker.pid().unwrap();
    let fresh = peak(pid);
    let mut client = worker.client(None).await.unwrap();
    load(&mut client, load_options(MODEL)).await;
    let before = greedy(&mut client).await;
    let loaded = peak(pid);
    assert!(
        loaded > 3 * fresh,
        "loading raised the peak from {fresh} to only {loaded}"
    );

    let mut streaming = worker.client(None).await.unwrap();
    let mut stream = streaming
        .predict_stream(long_stream())
        .await
        .unwrap()
        .into_inner();
    stream.message().await.unwrap().expect("a first chunk");
    let freed = client.free(HealthMessage {}).await.unwrap().into_inner();
    assert!(freed.success, "{}", freed.message);
    let mut chunks = 1;
    let mut last = None;
    while let Some(reply) = stream
        .message()
        .await
        .expect("a stream running at Free ends with OK")
    {
        chunks += 1;
        last = Some(reply);
    }
    let generated = last.map_or(0, |r| r.tokens);
    assert!(
        chunks < 400 && generated < 400,
        "the stream ran on after Free: {chunks} chunks, {generated} tokens"
    );

    let deadline = Instant::now() + Duration::from_secs(20);
    while !replaced(pid, loaded) {
        assert!(
            Instant::now() < deadline,
            "the process image was not replaced after Free (peak {} bytes)",
            peak(pid)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut client = worker.client(None).await.unwrap();
    assert_eq!(status(&mut client).await, State::Uninitialized);
    assert_eq!(worker.pid(), Some(pid), "the worker's PID changed");
    load(&mut client, load_options(MODEL)).await;
    assert_eq!(greedy(&mut client).await, before);
    worker.stop(Duration::from_secs(10)).await.unwrap();
}

/// An image-like folder around `binary` for `run_sh` to start it through the image's
/// loader (`lib/ld.so`, here the system's): then the process is the loader, and a restart
/// must start the worker through it again. Returns the folder; start its `run.sh`.
pub fn through_loader(run_sh: &Path, binary: &Path) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let path = dir.path();
    std::fs::create_dir(path.join("lib")).unwrap();
    std::os::unix::fs::symlink("/lib64/ld-linux-x86-64.so.2", path.join("lib/ld.so")).unwrap();
    std::os::unix::fs::symlink(binary, path.join(binary.file_name().unwrap())).unwrap();
    std::fs::copy(run_sh, path.join("run.sh")).unwrap();
    dir
}

/// With the restart turned off, Free keeps the process and the connection.
pub async fn keeps_the_process_when_told(binary: &Path) {
    let env = [("LOCALAI_BACKEND_RESTART_ON_FREE", "false")];
    let worker = Worker::start(binary, &env, None, Duration::from_secs(30))
        .await
        .expect("worker starts");
    let pid = worker.pid().unwrap();
    let mut client = worker.client(None).await.unwrap();
    load(&mut client, load_options(MODEL)).await;
    let before = greedy(&mut client).await;
    let loaded = peak(pid);
    let freed = client.free(HealthMessage {}).await.unwrap().into_inner();
    assert!(freed.success, "{}", freed.message);
    assert_eq!(status(&mut client).await, State::Uninitialized);
    load(&mut client, load_options(MODEL)).await;
    assert_eq!(greedy(&mut client).await, before);
    assert!(
        !replaced(pid, loaded),
        "the peak fell from {loaded} to {}: the image was replaced",
        peak(pid)
    );
    worker.stop(Duration::from_secs(10)).await.unwrap();
}
