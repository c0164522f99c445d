//! An HTTP/1.1 client of the service over one keep-alive connection, with
//! TCP_NODELAY: what `paramopt demo`, `loadgen` and the service's socket
//! tests talk to a server with, so the handshake, the headers and reading
//! an answer are written once.

use std::future::Future;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{self, HeaderValue};
use hyper::Request;
use hyper_util::rt::TokioIo;

pub use hyper::Method;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("connecting to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("the bearer token is not a valid header value")]
    Token,
    #[error("building the request: {0}")]
    Request(#[from] hyper::http::Error),
    #[error(transparent)]
    Http(#[from] hyper::Error),
}

/// An answer: its status and whole body.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub body: Bytes,
}

impl Reply {
    /// The body as text, for messages (invalid UTF-8 replaced).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One keep-alive connection, one request in flight at a time. Every request
/// carries `Host`, `Content-Type: application/json` and, when set, the bearer token.
pub struct Client {
    sender: SendRequest<Full<Bytes>>,
    host: String,
    local: SocketAddr,
    auth: Option<HeaderValue>,
}

impl Client {
    /// Connects to `addr`; the connection is driven by a task on the current tokio runtime.
    pub async fn connect(addr: SocketAddr) -> Result<Client, ClientError> {
        let connect = |source| ClientError::Connect { addr, source };
        let tcp = tokio::net::TcpStream::connect(addr).await.map_err(connect)?;
        // The service answers at once; Nagle would hold a request's second segment for the ACK.
        tcp.set_nodelay(true).map_err(connect)?;
        let local = tcp.local_addr().map_err(connect)?;
        let (sender, conn) = http1::handshake(TokioIo::new(tcp)).await?;
        tokio::spawn(async move {
            // A connection that ends shows as the next request's error.
            let _ = conn.await;
        });
        Ok(Client { sender, host: addr.to_string(), local, auth: None })
    }

    /// Sends `Authorization: Bearer <token>` with every request.
    pub fn with_token(mut self, token: &str) -> Result<Client, ClientError> {
        self.auth = Some(HeaderValue::try_from(format!("Bearer {token}")).map_err(|_| ClientError::Token)?);
        Ok(self)
    }

    /// This end's address, as the server sees the connection's peer.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Sends one request once the connection is free and reads the whole answer.
    pub async fn request(&mut self, method: Method, path: &str, body: impl Into<Bytes>) -> Result<Reply, ClientError> {
        self.ready().await?;
        self.send(method, path, body)?.await
    }

    /// Waits until the connection can take a request.
    pub async fn ready(&mut self) -> Result<(), ClientError> {
        Ok(self.sender.ready().await?)
    }

    /// Sends one request on a [`ready`](Client::ready) connection; the answer
    /// is a future of its own, which holds no borrow of the client (a test
    /// can leave it in flight while the server shuts down).
    pub fn send(
        &mut self,
        method: Method,
        path: &str,
        body: impl Into<Bytes>,
    ) -> Result<impl Future<Output = Result<Reply, ClientError>> + Send + 'static, ClientError> {
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, &self.host)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(body.into()))?;
        if let Some(auth) = &self.auth {
            req.headers_mut().insert(header::AUTHORIZATION, auth.clone());
        }
        let answer = self.sender.send_request(req);
        Ok(async move {
            let res = answer.await?;
            let status = res.status().as_u16();
            let body = res.into_body().collect().await?.to_bytes();
            Ok(Reply { status, body })
        })
    }
}
