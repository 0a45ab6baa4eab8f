//! The request size limit, checked on the wire: a gRPC message whose length prefix is over the
//! limit is refused with RESOURCE_EXHAUSTED before its bytes are read, as grpc-go and gRPC C++
//! answer (tonic's own check answers OUT_OF_RANGE, which clients do not expect for this).
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use http_body::{Body as HttpBody, Frame, SizeHint};
use tonic::Status;
use tonic::body::Body;

/// Wraps a service so that every request body is read through [`LimitedBody`].
#[derive(Debug, Clone, Copy)]
pub struct MessageLimitLayer {
    limit: usize,
}

impl MessageLimitLayer {
    /// Refuses messages longer than `limit` bytes.
    pub fn new(limit: usize) -> MessageLimitLayer {
        MessageLimitLayer { limit }
    }
}

impl<S> tower_layer::Layer<S> for MessageLimitLayer {
    type Service = MessageLimit<S>;

    fn layer(&self, inner: S) -> MessageLimit<S> {
        MessageLimit {
            inner,
            limit: self.limit,
        }
    }
}

/// The service [`MessageLimitLayer`] makes.
#[derive(Debug, Clone)]
pub struct MessageLimit<S> {
    inner: S,
    limit: usize,
}

impl<S> tower_service::Service<http::Request<Body>> for MessageLimit<S>
where
    S: tower_service::Service<http::Request<Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> S::Future {
        let limit = self.limit;
        self.inner.call(request.map(|body| {
            Body::new(LimitedBody {
                inner: body,
                framing: Framing::new(limit),
            })
        }))
    }
}

/// A request body that fails with RESOURCE_EXHAUSTED at the first message whose length prefix
/// is over the limit; other bytes pass through unchanged.
struct LimitedBody {
    inner: Body,
    framing: Framing,
}

impl HttpBody for LimitedBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = &mut *self;
        let frame = match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => frame,
            other => return other,
        };
        if let Some(data) = frame.data_ref() {
            this.framing.read(data.chunk())?;
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Follows gRPC's length-prefixed messages (a flag byte and a big-endian u32 length, then the
/// message) across however the bytes are cut into frames.
#[derive(Debug)]
struct Framing {
    limit: usize,
    /// Prefix bytes of the next message seen so far.
    prefix: [u8; 5],
    prefix_len: usize,
    /// Bytes of the current message still to come.
    remaining: usize,
}

impl Framing {
    fn new(limit: usize) -> Framing {
        Framing {
            limit,
            prefix: [0; 5],
            prefix_len: 0,
            remaining: 0,
        }
    }

    /// Reads the next bytes of the body; an error for a message over the limit.
    fn read(&mut self, mut bytes: &[u8]) -> Result<(), Status> {
        while !bytes.is_empty() {
            if self.remaining > 0 {
                let skip = self.remaining.min(bytes.len());
                self.remaining -= skip;
                bytes = &bytes[skip..];
                continue;
            }
            let take = (5 - self.prefix_len).min(bytes.len());
            self.prefix[self.prefix_len..self.prefix_len + take].copy_from_slice(&bytes[..take]);
            self.prefix_len += take;
            bytes = &bytes[take..];
            if self.prefix_len == 5 {
                self.prefix_len = 0;
                let len = u32::from_be_bytes([
                    self.prefix[1],
                    self.prefix[2],
                    self.prefix[3],
                    self.prefix[4],
                ]) as usize;
                if len > self.limit {
                    return Err(Status::resource_exhausted(format!(
                        "request message of {len} bytes is over this backend's limit of {} bytes; send a shorter prompt or fewer images",
                        self.limit
                    )));
                }
                self.remaining = len;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(len: usize) -> Vec<u8> {
        let mut bytes = vec![0];
        bytes.extend_from_slice(&(len as u32).to_be_bytes());
        bytes.resize(5 + len, b'x');
        bytes
    }

    #[test]
    fn messages_within_the_limit_pass_however_they_are_cut() {
        let body: Vec<u8> = [message(10), message(0), message(3)].concat();
        for cut in 0..=body.len() {
            let mut framing = Framing::new(10);
            framing.read(&body[..cut]).unwrap();
            framing.read(&body[cut..]).unwrap();
            assert_eq!((framing.prefix_len, framing.remaining), (0, 0));
        }
    }

    #[test]
    fn a_message_over_the_limit_is_resource_exhausted_wherever_its_prefix_is_cut() {
        let body: Vec<u8> = [message(3), message(11)].concat();
        for cut in 0..=body.len() {
            let mut framing = Framing::new(10);
            let status = framing
                .read(&body[..cut])
                .and_then(|()| framing.read(&body[cut..]))
                .unwrap_err();
            assert_eq!(status.code(), tonic::Code::ResourceExhausted);
            assert!(status.message().contains("11 bytes"), "{status:?}");
        }
    }
}
