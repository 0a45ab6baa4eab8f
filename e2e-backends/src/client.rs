//! A `backend.Backend` client that sends `authorization: Bearer <token>` like LocalAI.
use std::time::Duration;

use backend_common::pb::backend_client::BackendClient;
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Status};

/// Adds the bearer token, when there is one, to every call.
#[derive(Clone, Debug, Default)]
pub struct BearerToken(Option<MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for BearerToken {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// A connected client.
pub type Client = BackendClient<InterceptedService<Channel, BearerToken>>;

/// A client could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The address is not a valid URI.
    #[error("bad address {addr}: {reason}")]
    Address {
        /// The address given.
        addr: String,
        /// Why it is not one.
        reason: String,
    },
    /// The token cannot be sent as metadata.
    #[error("the auth token must be printable ASCII")]
    Token,
    /// The worker does not answer.
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// The address given.
        addr: String,
        /// The transport error.
        source: tonic::transport::Error,
    },
}

/// Connects to a worker at `addr` (`HOST:PORT` or a URL), with an optional bearer token.
pub async fn connect(addr: &str, token: Option<&str>) -> Result<Client, ConnectError> {
    let url = if addr.contains("://") {
        addr.to_string()
    } else {
        format!("http://{addr}")
    };
    let endpoint = Endpoint::from_shared(url).map_err(|e| ConnectError::Address {
        addr: addr.to_string(),
        reason: e.to_string(),
    })?;
    let channel = endpoint
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|source| ConnectError::Connect {
            addr: addr.to_string(),
            source,
        })?;
    let bearer = match token {
        Some(t) => Some(
            format!("Bearer {t}")
                .parse()
                .map_err(|_| ConnectError::Token)?,
        ),
        None => None,
    };
    Ok(
        BackendClient::with_interceptor(channel, BearerToken(bearer))
            .max_decoding_message_size(backend_common::server::MESSAGE_LIMIT)
            .max_encoding_message_size(backend_common::server::MESSAGE_LIMIT),
    )
}
