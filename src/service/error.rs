//! The one error type of the HTTP service and its single mapping to the contract's answers.
//!
//! API.md: "Every 4xx and 5xx answer is `{"error": "<what was wrong, naming the
//! bad value>"}`". Every handler, extractor and middleware returns an
//! [`ApiError`], so that promise is kept in exactly one place
//! ([`ApiError::into_response`]). Internal failures are logged with their
//! details and answered with a generic message: callers never see internals.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::agent::AgentError;

use super::store::StoreError;

/// Everything a request can be refused for.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The agent refused the call; the variant decides the status.
    #[error(transparent)]
    Agent(#[from] AgentError),
    /// The body is not JSON at all (syntax error, empty, trailing bytes).
    #[error("malformed JSON: {0}")]
    MalformedJson(String),
    /// Well-formed JSON that does not fit the request: wrong type, unknown or
    /// missing field, unknown context value, bad query or path parameter.
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("request body{} is larger than the limit of {limit} bytes", .size.map(|n| format!(" of {n} bytes")).unwrap_or_default())]
    TooLarge { size: Option<u64>, limit: usize },
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    MethodNotAllowed(String),
    #[error("{0}")]
    Timeout(String),
    /// A checkpoint or outcome store refused or failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A part of the service is down (`/healthz`); the message says which.
    #[error("{0}")]
    Unavailable(String),
    /// A bug or an unexpected failure. The message is logged, never sent.
    #[error("internal error: {0}")]
    Internal(String),
}

#[cfg(test)]
mod tests {
    #[test]
    fn long_messages_are_bounded_and_keep_both_ends() {
        let msg = format!("unknown module \"{}\"; expected one of crypto", "x".repeat(60_000));
        let cut = super::bounded(&msg);
        assert!(cut.len() < 500, "{}", cut.len());
        assert!(cut.starts_with("unknown module \"xxx") && cut.ends_with("expected one of crypto"), "{cut}");
        assert!(cut.contains("bytes in all"));
        assert_eq!(super::bounded("short"), "short");
    }
}

/// Every 4xx and 5xx body; nothing else is in it.
#[derive(Serialize, schemars::JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct ErrorBody<'a> {
    /// What was wrong, naming the bad value.
    pub error: &'a str,
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Agent(e) => match e {
                AgentError::UnknownModule(_)
                | AgentError::UnknownFeature { .. }
                | AgentError::NonFiniteFeature { .. }
                | AgentError::NonFiniteReward { .. }
                | AgentError::MissingReward(_)
                | AgentError::UnknownStrategy { .. }
                | AgentError::StrategyMismatch { .. }
                | AgentError::NonFiniteEvidence { .. } => StatusCode::UNPROCESSABLE_ENTITY,
                AgentError::UnknownDecision(_) | AgentError::ExpiredDecision(_) => StatusCode::NOT_FOUND,
                AgentError::DuplicateOutcome(_) => StatusCode::CONFLICT,
                AgentError::TooManyOpenDecisions { .. } => StatusCode::TOO_MANY_REQUESTS,
                AgentError::ShuttingDown | AgentError::Journal(_) => StatusCode::SERVICE_UNAVAILABLE,
            },
            ApiError::MalformedJson(_) => StatusCode::BAD_REQUEST,
            ApiError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Timeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::Store(e) => e.status(),
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The text the caller sees.
    fn public_message(&self) -> String {
        match self {
            ApiError::Internal(_) => "internal error; the server log has the details".to_string(),
            ApiError::Agent(AgentError::Journal(_)) => {
                "the request could not be recorded durably and was not accepted; retry later".to_string()
            }
            ApiError::Store(e) => e.public_message(),
            other => bounded(&other.to_string()),
        }
    }
}

/// Longest error message answered; a longer one (a huge module name sent
/// back, say) keeps its start and end.
const MAX_MESSAGE: usize = 400;

/// `message`, cut in the middle when it is over [`MAX_MESSAGE`] bytes.
fn bounded(message: &str) -> String {
    if message.len() <= MAX_MESSAGE {
        return message.to_string();
    }
    let head: String = message.chars().take(MAX_MESSAGE / 2).collect();
    let tail: Vec<char> = message.chars().rev().take(MAX_MESSAGE / 4).collect();
    let tail: String = tail.into_iter().rev().collect();
    format!("{head}… ({} bytes in all) …{tail}", message.len())
}

/// Builds a contract error response from a status and a message. Used by the
/// middleware that rewrites error answers produced outside the handlers.
pub fn error_response(status: StatusCode, message: &str) -> Response {
    let body = serde_json::to_vec(&ErrorBody { error: message }).unwrap_or_else(|_| b"{\"error\":\"?\"}".to_vec());
    let mut response = (status, body).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        // Details stay in the log, tied to the request by the span's request id.
        if matches!(self, ApiError::Internal(_) | ApiError::Store(StoreError::Internal(_))) {
            tracing::error!(status = status.as_u16(), error = %self, "request failed");
        } else if status.is_server_error() {
            tracing::warn!(status = status.as_u16(), error = %self, "request failed");
        } else {
            tracing::debug!(status = status.as_u16(), error = %self, "request refused");
        }
        let mut response = error_response(status, &self.public_message());
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}
