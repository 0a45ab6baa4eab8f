//! The command line every worker accepts, as LocalAI starts it:
//! `run.sh --addr 127.0.0.1:PORT` or `run.sh --addr=127.0.0.1:PORT`; and the `render`
//! subcommand every worker offers.
use std::fmt;
use std::path::PathBuf;

use crate::chat::{ChatSetup, PromptRequest};
use crate::engine::{EngineError, ModelInfo};
use crate::load::LoadRequest;
use crate::pb::ModelOptions;

/// The default listening address, LocalAI's.
pub const DEFAULT_ADDR: &str = "localhost:50051";

/// A worker's command line: serving (the default, as LocalAI starts it) or one of the
/// worker's own subcommands `C`.
#[derive(Debug, clap::Parser)]
pub struct WorkerCli<C: clap::Subcommand> {
    /// A subcommand instead of serving.
    #[command(subcommand)]
    pub command: Option<C>,
    /// The server's arguments.
    #[command(flatten)]
    pub serve: ServeArgs,
}

impl<C: clap::Subcommand> WorkerCli<C> {
    /// Parses the process's arguments for the worker binary `name` (`about` is its one-line
    /// description in `--help`); exits with clap's message on a bad command line.
    pub fn parse_for(name: &'static str, about: &'static str) -> Self {
        use clap::{CommandFactory, FromArgMatches};
        let matches = Self::command()
            .name(name)
            .about(about)
            .version(env!("CARGO_PKG_VERSION"))
            .get_matches();
        Self::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
    }
}

/// Arguments of the gRPC server.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Address to listen on, HOST:PORT (IPv6 as [::1]:PORT).
    #[arg(long, default_value = DEFAULT_ADDR, value_parser = parse_addr)]
    pub addr: ListenAddr,
    /// After Free, replace the process image with a fresh one (same PID, arguments and
    /// listening socket) so all the memory the model's load touched goes back to the system;
    /// open connections are closed gracefully ([`crate::restart`]). `false` keeps the process.
    #[arg(
        long,
        env = "LOCALAI_BACKEND_RESTART_ON_FREE",
        default_value_t = true,
        action = clap::ArgAction::Set,
        value_parser = clap::builder::BoolishValueParser::new(),
    )]
    pub restart_on_free: bool,
}

/// Arguments of the `render` subcommand: print the prompt a request renders to through the
/// model's chat template (a dry run; no weights are read).
#[derive(Debug, Clone, clap::Args)]
pub struct RenderArgs {
    /// The model (only its metadata and vocabulary are read).
    #[arg(long)]
    pub model: PathBuf,
    /// A JSON file with `Messages`, `Tools`, `ToolChoice`, `Metadata` (or `Prompt`).
    #[arg(long)]
    pub request: PathBuf,
    /// `key:value` model options, as in LoadModel (e.g. `tool_parser:hermes`).
    #[arg(long = "option")]
    pub options: Vec<String>,
}

impl RenderArgs {
    /// The prompt the request file renders to for a model described by `info` (what the
    /// worker's LoadModel would report for `model`).
    pub fn render(&self, info: &ModelInfo) -> Result<String, EngineError> {
        let json = std::fs::read_to_string(&self.request).map_err(|e| {
            EngineError::InvalidArgument(format!("cannot read {}: {e}", self.request.display()))
        })?;
        let req = PromptRequest::from_json(&json)?.into_predict_options();
        let file_name = self
            .model
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let load = LoadRequest::from_proto(&ModelOptions {
            model_file: self.model.to_string_lossy().into_owned(),
            options: self.options.clone(),
            ..Default::default()
        })?;
        let setup = ChatSetup::new(info, &file_name, &load.parsers)?;
        Ok(setup.prepare(&req)?.prompt.text)
    }
}

/// A validated `HOST:PORT`; the host may be a name (resolved when binding).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenAddr {
    /// Host name or IP literal (brackets kept for IPv6).
    pub host: String,
    /// TCP port.
    pub port: u16,
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// Parses `HOST:PORT`, telling what to fix when it is not one.
pub fn parse_addr(raw: &str) -> Result<ListenAddr, String> {
    let hint = "expected HOST:PORT, e.g. 127.0.0.1:50051, localhost:50051 or [::1]:50051";
    let (host, port) = raw
        .rsplit_once(':')
        .ok_or_else(|| format!("`{raw}` has no port; {hint}"))?;
    let port: u16 = port
        .parse()
        .map_err(|_| format!("`{port}` in `{raw}` is not a port number (0-65535); {hint}"))?;
    let valid_host = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => v6.parse::<std::net::Ipv6Addr>().is_ok(),
        None => {
            !host.is_empty()
                && host
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        }
    };
    if !valid_host {
        return Err(format!(
            "`{host}` in `{raw}` is not a host name or IP address; {hint}"
        ));
    }
    Ok(ListenAddr {
        host: host.to_string(),
        port,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        serve: ServeArgs,
    }

    #[test]
    fn both_flag_forms_and_default() {
        let a = Cli::try_parse_from(["w", "--addr", "127.0.0.1:5000"]).unwrap();
        let b = Cli::try_parse_from(["w", "--addr=127.0.0.1:5000"]).unwrap();
        assert_eq!(a.serve.addr, b.serve.addr);
        assert_eq!(a.serve.addr.to_string(), "127.0.0.1:5000");
        let d = Cli::try_parse_from(["w"]).unwrap();
        assert_eq!(d.serve.addr.to_string(), DEFAULT_ADDR);
    }

    #[test]
    fn restart_on_free_is_on_unless_turned_off() {
        let parse = |args: &[&str]| Cli::try_parse_from(args).map(|c| c.serve.restart_on_free);
        assert!(parse(&["w"]).unwrap());
        for off in ["false", "no", "0", "off"] {
            assert!(!parse(&["w", "--restart-on-free", off]).unwrap(), "{off}");
        }
        assert!(parse(&["w", "--restart-on-free=yes"]).unwrap());
        assert!(parse(&["w", "--restart-on-free=maybe"]).is_err());
    }

    #[test]
    fn ipv6_and_names() {
        assert_eq!(parse_addr("[::1]:9").unwrap().host, "[::1]");
        assert_eq!(parse_addr("my-host.local:80").unwrap().port, 80);
    }

    #[test]
    fn bad_addresses_say_what_to_fix() {
        for bad in [
            "localhost",
            "host:port",
            "host:70000",
            ":50051",
            "a b:1",
            "::1:5",
        ] {
            let e = parse_addr(bad).unwrap_err();
            assert!(e.contains("HOST:PORT"), "{bad}: {e}");
        }
    }
}
