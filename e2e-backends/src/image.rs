//! Backend images laid out the way LocalAI's are: `FROM scratch`, `run.sh` at `/`, the worker
//! binaries beside it, and `lib/` with every shared library `ldd` names plus the dynamic
//! loader as `lib/ld.so`, so `run.sh` can start a binary with the image's own loader on any
//! host LocalAI extracts the image to. A static shell (`/bin/sh`, from busybox) may be added
//! so the image also runs as a container. The build context is assembled here, in memory,
//! and built by the local engine through bollard: nothing is pulled.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use bollard::Docker;
use tokio_stream::StreamExt;

/// The port a worker in our images listens on when started as a container.
pub const CONTAINER_PORT: u16 = 50051;

/// One line of `ldd`'s output that matters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dependency {
    /// `libfoo.so.1 => /path/libfoo.so.1`: a library to bundle.
    Library {
        /// The soname the binary asks for.
        name: String,
        /// Where the host has it.
        path: PathBuf,
    },
    /// The program interpreter (`/lib64/ld-linux-x86-64.so.2`).
    Loader(PathBuf),
    /// `libfoo.so => not found`: the binary cannot run here either.
    Missing(String),
}

/// The image could not be assembled or built.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// A file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// `ldd` or `strip` could not be run or failed.
    #[error("{tool} {path}: {reason}")]
    Tool {
        /// The tool.
        tool: &'static str,
        /// The file it ran on.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// A binary needs a library the host does not have.
    #[error("{binary} needs {library}, which ldd cannot find on this machine")]
    MissingLibrary {
        /// The binary.
        binary: PathBuf,
        /// The soname.
        library: String,
    },
    /// The shell given for `/bin/sh` is not a static binary.
    #[error("{0} is not statically linked; /bin/sh in a scratch image must be (busybox-static)")]
    DynamicShell(PathBuf),
    /// Two files would land on the same path in the image.
    #[error("two files would be /{0} in the image")]
    Clash(String),
    /// The engine refused or failed.
    #[error("docker: {0}")]
    Docker(#[from] bollard::errors::Error),
    /// The build ran but reported an error.
    #[error("docker build: {0}")]
    Build(String),
}

/// Reads `ldd` output. Lines for the vDSO and anything unrecognised are skipped.
pub fn parse_ldd(output: &str) -> Vec<Dependency> {
    let mut out = Vec::new();
    for line in output.lines().map(str::trim) {
        let without_addr = match line.rfind(" (0x") {
            Some(i) => &line[..i],
            None => line,
        };
        if let Some((name, target)) = without_addr.split_once(" => ") {
            let target = target.trim();
            if target == "not found" {
                out.push(Dependency::Missing(name.trim().to_string()));
            } else if target.starts_with('/') {
                out.push(Dependency::Library {
                    name: name.trim().to_string(),
                    path: PathBuf::from(target),
                });
            }
        } else if without_addr.starts_with('/') && !without_addr.contains(' ') {
            out.push(Dependency::Loader(PathBuf::from(without_addr)));
        }
    }
    out
}

/// What `ldd` says `binary` needs; empty for a static binary.
pub fn dependencies(binary: &Path) -> Result<Vec<Dependency>, ImageError> {
    let output = Command::new("ldd")
        .arg(binary)
        .output()
        .map_err(|e| ImageError::Tool {
            tool: "ldd",
            path: binary.into(),
            reason: e.to_string(),
        })?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        // glibc's ldd says this of static binaries, and exits 1.
        if stdout.contains("not a dynamic executable")
            || stderr.contains("not a dynamic executable")
        {
            return Ok(Vec::new());
        }
        return Err(ImageError::Tool {
            tool: "ldd",
            path: binary.into(),
            reason: format!("{}{}", stdout.trim(), stderr.trim()),
        });
    }
    if stdout.contains("statically linked") {
        return Ok(Vec::new());
    }
    Ok(parse_ldd(&stdout))
}

/// A file of the image.
#[derive(Debug, Clone)]
enum Entry {
    File { data: Vec<u8>, mode: u32 },
    Link(String),
}

/// The root file system of an image, assembled in memory.
#[derive(Debug, Default)]
pub struct RootFs {
    entries: BTreeMap<String, Entry>,
}

impl RootFs {
    /// An empty root.
    pub fn new() -> Self {
        Self::default()
    }

    fn put(&mut self, path: &str, entry: Entry) -> Result<(), ImageError> {
        let path = path.trim_start_matches('/').to_string();
        if self.entries.contains_key(&path) {
            return Err(ImageError::Clash(path));
        }
        self.entries.insert(path, entry);
        Ok(())
    }

    /// Adds `data` at `path` with `mode`.
    pub fn add_bytes(&mut self, path: &str, data: Vec<u8>, mode: u32) -> Result<(), ImageError> {
        self.put(path, Entry::File { data, mode })
    }

    /// Adds the host file `source` at `path`, following links.
    pub fn add_file(&mut self, path: &str, source: &Path, mode: u32) -> Result<(), ImageError> {
        let data = std::fs::read(source).map_err(|e| ImageError::Read {
            path: source.into(),
            source: e,
        })?;
        self.add_bytes(path, data, mode)
    }

    /// Adds a worker binary at `/NAME` (stripped of symbols when `strip`) and every library
    /// it needs under `lib/`, with the loader as `lib/ld.so`. Libraries several binaries
    /// share are added once.
    pub fn add_binary(&mut self, source: &Path, name: &str, strip: bool) -> Result<(), ImageError> {
        let data = if strip {
            stripped(source)?
        } else {
            std::fs::read(source).map_err(|e| ImageError::Read {
                path: source.into(),
                source: e,
            })?
        };
        self.add_bytes(name, data, 0o755)?;
        for dependency in dependencies(source)? {
            let (target, host) = match dependency {
                Dependency::Missing(library) => {
                    return Err(ImageError::MissingLibrary {
                        binary: source.into(),
                        library,
                    });
                }
                Dependency::Library { name, path } => (format!("lib/{name}"), path),
                Dependency::Loader(path) => ("lib/ld.so".to_string(), path),
            };
            if !self.entries.contains_key(&target) {
                self.add_file(&target, &host, 0o755)?;
            }
        }
        Ok(())
    }

    /// Adds a static shell as `/bin/sh` (busybox picks its applet from the name).
    pub fn add_shell(&mut self, shell: &Path) -> Result<(), ImageError> {
        if !dependencies(shell)?.is_empty() {
            return Err(ImageError::DynamicShell(shell.into()));
        }
        self.add_file("bin/busybox", shell, 0o755)?;
        self.put("bin/sh", Entry::Link("busybox".into()))
    }

    /// The paths in the image, sorted.
    pub fn paths(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    /// The bytes of the file at `path`.
    pub fn file(&self, path: &str) -> Option<&[u8]> {
        match self.entries.get(path.trim_start_matches('/')) {
            Some(Entry::File { data, .. }) => Some(data),
            _ => None,
        }
    }

    /// The total size of the files, in bytes.
    pub fn size(&self) -> u64 {
        self.entries
            .values()
            .map(|e| match e {
                Entry::File { data, .. } => data.len() as u64,
                Entry::Link(_) => 0,
            })
            .sum()
    }

    /// The docker build context: a `Dockerfile` (`FROM scratch`, the root copied to `/`,
    /// `/run.sh` as the entrypoint) and the root under `rootfs/`, as a tar archive with fixed
    /// owners and times so the same inputs give the same layer.
    pub fn build_context(&self) -> std::io::Result<Vec<u8>> {
        let dockerfile = format!(
            "FROM scratch\nCOPY rootfs/ /\nEXPOSE {CONTAINER_PORT}\nENTRYPOINT [\"/run.sh\"]\n"
        );
        let mut builder = tar::Builder::new(Vec::new());
        append(
            &mut builder,
            "Dockerfile",
            &Entry::File {
                data: dockerfile.into_bytes(),
                mode: 0o644,
            },
        )?;
        for (path, entry) in &self.entries {
            append(&mut builder, &format!("rootfs/{path}"), entry)?;
        }
        builder.into_inner()
    }
}

impl RootFs {
    /// Writes the build context to `dir` (emptied first).
    pub fn write_context(&self, dir: &Path) -> std::io::Result<()> {
        if dir.exists() {
            std::fs::remove_dir_all(dir)?;
        }
        std::fs::create_dir_all(dir)?;
        tar::Archive::new(self.build_context()?.as_slice()).unpack(dir)
    }
}

fn append(builder: &mut tar::Builder<Vec<u8>>, path: &str, entry: &Entry) -> std::io::Result<()> {
    let mut header = tar::Header::new_gnu();
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    match entry {
        Entry::File { data, mode } => {
            header.set_entry_type(tar::EntryType::Regular);
            header.set_mode(*mode);
            header.set_size(data.len() as u64);
            builder.append_data(&mut header, path, data.as_slice())
        }
        Entry::Link(target) => {
            header.set_entry_type(tar::EntryType::Symlink);
            header.set_mode(0o777);
            header.set_size(0);
            builder.append_link(&mut header, path, target)
        }
    }
}

/// `source` without symbols and debug information (`strip` writes a copy).
fn stripped(source: &Path) -> Result<Vec<u8>, ImageError> {
    let dir = tempfile::tempdir().map_err(|e| ImageError::Read {
        path: std::env::temp_dir(),
        source: e,
    })?;
    let out = dir.path().join("stripped");
    let status = Command::new("strip")
        .arg("--strip-all")
        .arg("-o")
        .arg(&out)
        .arg(source)
        .output()
        .map_err(|e| ImageError::Tool {
            tool: "strip",
            path: source.into(),
            reason: e.to_string(),
        })?;
    if !status.status.success() {
        return Err(ImageError::Tool {
            tool: "strip",
            path: source.into(),
            reason: String::from_utf8_lossy(&status.stderr).trim().to_string(),
        });
    }
    std::fs::read(&out).map_err(|e| ImageError::Read {
        path: out,
        source: e,
    })
}

/// Connects to the local engine, at the API version it speaks.
pub async fn engine() -> Result<Docker, ImageError> {
    let docker = Docker::connect_with_local_defaults()?;
    Ok(docker.negotiate_version().await?)
}

/// Builds `root` into the image `tag` and returns the image's size in bytes as the engine
/// reports it.
pub async fn build(docker: &Docker, root: &RootFs, tag: &str) -> Result<u64, ImageError> {
    let context = root.build_context().map_err(|e| ImageError::Read {
        path: PathBuf::from("(build context)"),
        source: e,
    })?;
    let options = bollard::query_parameters::BuildImageOptionsBuilder::default()
        .dockerfile("Dockerfile")
        .t(tag)
        .rm(true)
        .forcerm(true)
        .build();
    let mut progress = docker.build_image(
        options,
        None,
        Some(bollard::body_full(bytes::Bytes::from(context))),
    );
    while let Some(step) = progress.next().await {
        let step = step?;
        if let Some(error) = step.error_detail.and_then(|d| d.message) {
            return Err(ImageError::Build(error));
        }
    }
    let inspected = docker.inspect_image(tag).await?;
    Ok(inspected.size.unwrap_or_default().max(0) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LDD: &str = "\tlinux-vdso.so.1 (0x00007ffd4a5f2000)
\tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f0e0b1e0000)
\tlibm.so.6 => /lib/x86_64-linux-gnu/libm.so.6 (0x00007f0e0b101000)
\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f0e0af20000)
\tlibfoo.so.2 => not found
\t/lib64/ld-linux-x86-64.so.2 (0x00007f0e0c5a1000)
";

    #[test]
    fn ldd_lines() {
        assert_eq!(
            parse_ldd(LDD),
            vec![
                Dependency::Library {
                    name: "libgcc_s.so.1".into(),
                    path: "/lib/x86_64-linux-gnu/libgcc_s.so.1".into()
                },
                Dependency::Library {
                    name: "libm.so.6".into(),
                    path: "/lib/x86_64-linux-gnu/libm.so.6".into()
                },
                Dependency::Library {
                    name: "libc.so.6".into(),
                    path: "/lib/x86_64-linux-gnu/libc.so.6".into()
                },
                Dependency::Missing("libfoo.so.2".into()),
                Dependency::Loader("/lib64/ld-linux-x86-64.so.2".into()),
            ]
        );
    }

    #[test]
    fn a_real_binary_brings_its_libraries_and_loader() {
        // `ls` is dynamically linked against libc on every Debian machine.
        let ls = Path::new("/bin/ls");
        let mut root = RootFs::new();
        root.add_binary(ls, "ls", false).unwrap();
        let paths: Vec<&str> = root.paths().collect();
        assert!(paths.contains(&"ls"), "{paths:?}");
        assert!(paths.contains(&"lib/ld.so"), "{paths:?}");
        assert!(paths.contains(&"lib/libc.so.6"), "{paths:?}");
        // The loader copied is the real one, not a link.
        assert!(root.file("lib/ld.so").unwrap().starts_with(b"\x7fELF"));
        // A second binary with the same libraries adds only itself.
        let before = root.paths().count();
        root.add_binary(ls, "ls2", true).unwrap();
        assert_eq!(root.paths().count(), before + 1);
        assert!(root.file("ls2").unwrap().len() <= root.file("ls").unwrap().len());
        assert!(matches!(
            root.add_bytes("/ls", vec![], 0o644),
            Err(ImageError::Clash(p)) if p == "ls"
        ));
    }

    #[test]
    fn a_dynamic_shell_is_refused() {
        let mut root = RootFs::new();
        assert!(matches!(
            root.add_shell(Path::new("/bin/ls")),
            Err(ImageError::DynamicShell(_))
        ));
    }

    #[test]
    fn the_context_holds_a_scratch_dockerfile_and_the_root() {
        let mut root = RootFs::new();
        root.add_bytes("run.sh", b"#!/bin/sh\n".to_vec(), 0o755)
            .unwrap();
        let context = root.build_context().unwrap();
        let mut archive = tar::Archive::new(context.as_slice());
        let mut seen = BTreeMap::new();
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let path = entry.path().unwrap().display().to_string();
            let mode = entry.header().mode().unwrap();
            let mut text = String::new();
            std::io::Read::read_to_string(&mut entry, &mut text).unwrap();
            seen.insert(path, (mode, text));
        }
        let dockerfile = &seen["Dockerfile"].1;
        assert!(dockerfile.starts_with("FROM scratch\n"), "{dockerfile}");
        assert!(dockerfile.contains("ENTRYPOINT [\"/run.sh\"]"));
        assert_eq!(seen["rootfs/run.sh"], (0o755, "#!/bin/sh\n".to_string()));
    }
}
