//! The images' `run.sh` scripts, run with `/bin/sh` as LocalAI runs them: the llama.cpp one
//! picks the build the CPU can run (by the flags line of a cpuinfo file), both pass
//! `--addr=...` and `--addr ...` through unchanged, the llama.cpp one sets a short OpenMP spin
//! count unless the operator chose one, and the image's loader is used when the
//! image has one.
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

const LLAMA_RUN_SH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../backend-llamacpp/run.sh");
const VLLM_RUN_SH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../backend-vllm-rs/run.sh");

const AVX512: &str =
    "fpu sse sse2 avx avx2 fma f16c bmi2 avx512f avx512cd avx512vl avx512dq avx512bw";
const AVX2: &str = "fpu sse sse2 avx avx2 fma f16c bmi2";
const OLD: &str = "fpu sse sse2 sse4_2";

/// An image-like folder: `run.sh` and stand-in binaries that print their name and arguments.
fn image(run_sh: &str, binaries: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(run_sh, dir.path().join("run.sh")).unwrap();
    for name in binaries {
        write_exec(
            &dir.path().join(name),
            &format!("#!/bin/sh\necho \"{name} $*\"\n"),
        );
    }
    dir
}

fn write_exec(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

fn cpuinfo(dir: &Path, flags: &str) -> PathBuf {
    let path = dir.join("cpuinfo");
    std::fs::write(
        &path,
        format!(
            "processor\t: 0\nmodel name\t: Test CPU\nflags\t\t: {flags}\nbugs\t\t: spectre_v1\n"
        ),
    )
    .unwrap();
    path
}

/// Runs `run.sh ARGS` with `/bin/sh` and returns (success, stdout, stderr).
fn run(dir: &Path, flags: &str, env: &[(&str, &str)], args: &[&str]) -> (bool, String, String) {
    let info = cpuinfo(dir, flags);
    let output = Command::new("/bin/sh")
        .arg(dir.join("run.sh"))
        .args(args)
        .env("RUN_SH_CPUINFO", info)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

const VARIANTS: [&str; 3] = [
    "backend-llamacpp-avx512",
    "backend-llamacpp-avx2",
    "backend-llamacpp-fallback",
];

#[test]
fn llama_picks_the_fastest_build_the_cpu_runs() {
    let dir = image(LLAMA_RUN_SH, &VARIANTS);
    for (flags, expected) in [
        (AVX512, "backend-llamacpp-avx512"),
        (AVX2, "backend-llamacpp-avx2"),
        (OLD, "backend-llamacpp-fallback"),
        // AVX-512F alone (no BW/VL) is not enough for the AVX-512 build.
        (
            "fpu avx avx2 fma f16c bmi2 avx512f",
            "backend-llamacpp-avx2",
        ),
    ] {
        let (ok, out, err) = run(dir.path(), flags, &[], &["--addr", "127.0.0.1:1"]);
        assert!(ok, "{flags}: {err}");
        assert_eq!(
            out.trim(),
            format!("{expected} --addr 127.0.0.1:1"),
            "{flags}"
        );
    }
}

#[test]
fn llama_skips_builds_the_image_lacks() {
    // An image built with the AVX2 build only (as CI builds it) on an AVX-512 machine.
    let dir = image(LLAMA_RUN_SH, &["backend-llamacpp-avx2"]);
    let (ok, out, _) = run(dir.path(), AVX512, &[], &["--addr=0.0.0.0:50051"]);
    assert!(ok);
    assert_eq!(out.trim(), "backend-llamacpp-avx2 --addr=0.0.0.0:50051");
    // ... and on a CPU without AVX2 it refuses clearly instead of dying of SIGILL.
    let (ok, out, err) = run(dir.path(), OLD, &[], &["--addr=0.0.0.0:50051"]);
    assert!(!ok);
    assert!(out.is_empty());
    assert!(err.contains("no llama.cpp build"), "{err}");
    assert!(
        err.contains("sse4_2"),
        "the message shows the CPU's flags: {err}"
    );
}

#[test]
fn llama_variant_can_be_forced_but_not_past_the_cpu() {
    let dir = image(LLAMA_RUN_SH, &VARIANTS);
    let (ok, out, _) = run(
        dir.path(),
        AVX512,
        &[("LLAMACPP_VARIANT", "fallback")],
        &["x"],
    );
    assert!(ok);
    assert_eq!(out.trim(), "backend-llamacpp-fallback x");
    let (ok, _, err) = run(dir.path(), AVX2, &[("LLAMACPP_VARIANT", "avx512")], &["x"]);
    assert!(!ok, "an AVX-512 build forced on an AVX2 CPU must not start");
    assert!(err.contains("avx512"), "{err}");
}

#[test]
fn both_scripts_start_through_the_images_loader() {
    for (script, binary) in [
        (LLAMA_RUN_SH, "backend-llamacpp-avx2"),
        (VLLM_RUN_SH, "backend-vllm-rs"),
    ] {
        let dir = image(script, &[binary]);
        std::fs::create_dir(dir.path().join("lib")).unwrap();
        // A stand-in loader that shows how it was called.
        write_exec(
            &dir.path().join("lib/ld.so"),
            "#!/bin/sh\necho \"ld.so $*\"\n",
        );
        let (ok, out, err) = run(dir.path(), AVX2, &[], &["--addr", "h:1"]);
        assert!(ok, "{err}");
        let d = dir.path().display();
        assert_eq!(
            out.trim(),
            format!("ld.so --library-path {d}/lib {d}/{binary} --addr h:1")
        );
    }
}

#[test]
fn vllm_passes_arguments_through() {
    let dir = image(VLLM_RUN_SH, &["backend-vllm-rs"]);
    let (ok, out, err) = run(dir.path(), OLD, &[], &["--addr=127.0.0.1:9"]);
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "backend-vllm-rs --addr=127.0.0.1:9");
}

#[test]
fn llama_spin_count_is_set_unless_the_operator_chose_a_wait_policy() {
    let dir = image(LLAMA_RUN_SH, &[]);
    write_exec(
        &dir.path().join("backend-llamacpp-avx2"),
        "#!/bin/sh\necho \"spin=${GOMP_SPINCOUNT:-unset}\"\n",
    );
    let info = cpuinfo(dir.path(), AVX2);
    for (env, expected) in [
        (None, "spin=10000"),
        (Some(("GOMP_SPINCOUNT", "500")), "spin=500"),
        (Some(("OMP_WAIT_POLICY", "passive")), "spin=unset"),
    ] {
        let mut command = Command::new("/bin/sh");
        command
            .arg(dir.path().join("run.sh"))
            .env("RUN_SH_CPUINFO", &info)
            .env_remove("GOMP_SPINCOUNT")
            .env_remove("OMP_WAIT_POLICY");
        if let Some((name, value)) = env {
            command.env(name, value);
        }
        let output = command.output().unwrap();
        assert!(output.status.success());
        assert_eq!(
            String::from_utf8_lossy(&output.stdout).trim(),
            expected,
            "{env:?}"
        );
    }
}
