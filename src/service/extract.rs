//! Extractors that answer bad input with the contract's JSON errors.
//!
//! axum's own `Json`, `Path` and `Query` rejections are plain text; these
//! wrappers do the same work and return an [`ApiError`] that names the bad
//! field or value: a JSON syntax error quotes the text around it, a type error
//! gives the field's path (`features.momentum_score: invalid type: …`).

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use serde::de::DeserializeOwned;

use super::error::ApiError;

/// A JSON request body, strictly checked.
pub struct JsonBody<T>(pub T);

impl<S, T> FromRequest<S> for JsonBody<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        check_json_content_type(req.headers())?;
        let limit = req.extensions().get::<BodyLimit>().map(|l| l.0).unwrap_or(usize::MAX);
        let size =
            req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::TooLarge { size, limit }
            } else {
                ApiError::MalformedJson(format!("cannot read the body: {}", rejection.body_text()))
            }
        })?;
        parse_json(&bytes).map(JsonBody)
    }
}

/// The body size limit in force, put in the request's extensions so that the
/// 413 answer can say what it is.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimit(pub usize);

fn check_json_content_type(headers: &axum::http::HeaderMap) -> Result<(), ApiError> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Err(ApiError::UnsupportedMediaType("missing Content-Type; expected application/json".to_string()));
    };
    let text = value.to_str().unwrap_or("");
    let essence = text.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    if essence == "application/json" || (essence.starts_with("application/") && essence.ends_with("+json")) {
        Ok(())
    } else {
        Err(ApiError::UnsupportedMediaType(format!(
            "Content-Type {text:?} is not supported; expected application/json"
        )))
    }
}

/// Parses `bytes` as one JSON value of type `T`. Syntax errors are 400;
/// well-formed JSON of the wrong shape is 422, with the path of the offending
/// field, and so is a number that is not finite (`NaN`, `Infinity`, `1e999`).
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::MalformedJson("the body is empty; expected a JSON object".to_string()));
    }
    // serde's derived structs also accept a JSON array of the fields in
    // order; the contract's bodies are objects, and only objects.
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
    if first != Some(&b'{') {
        let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| json_error(bytes, ".", &e))?;
        let kind = match value {
            serde_json::Value::Null => "null",
            serde_json::Value::Bool(_) => "a boolean",
            serde_json::Value::Number(_) => "a number",
            serde_json::Value::String(_) => "a string",
            serde_json::Value::Array(_) => "an array",
            serde_json::Value::Object(_) => "an object",
        };
        return Err(ApiError::Invalid(format!("the body must be a JSON object, got {kind}: {}", snippet(bytes, 0))));
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        json_error(bytes, &path, &inner)
    })?;
    de.end().map_err(|e| json_error(bytes, ".", &e))?;
    Ok(value)
}

fn json_error(bytes: &[u8], path: &str, e: &serde_json::Error) -> ApiError {
    use serde_json::error::Category;
    if e.to_string().starts_with("recursion limit exceeded") {
        // Well-formed as far as it was read, just too deep to read further.
        return ApiError::Invalid(format!(
            "the body nests objects and arrays deeper than 128 levels (at line {} column {})",
            e.line(),
            e.column()
        ));
    }
    match e.classify() {
        Category::Data => {
            // serde_json appends " at line L column C"; the path says more.
            let msg = e.to_string();
            let msg = msg.rsplit_once(" at line ").map(|(m, _)| m.to_string()).unwrap_or(msg);
            let msg = plain_types(&msg);
            if path == "." {
                ApiError::Invalid(msg)
            } else {
                ApiError::Invalid(format!("{path}: {msg}"))
            }
        }
        Category::Syntax | Category::Eof | Category::Io => {
            let offset = byte_offset(bytes, e.line(), e.column());
            let msg = e.to_string();
            // JSON has no NaN or Infinity, and a number past f64 is not
            // finite either: the contract answers every non-finite number
            // with 422 ("not a finite number"), whatever the parser made of it.
            let near = &bytes[offset.saturating_sub(2).min(bytes.len())..(offset + 9).min(bytes.len())];
            let near = String::from_utf8_lossy(near);
            if let Some(literal) = ["-Infinity", "Infinity", "NaN"].into_iter().find(|l| near.contains(l)) {
                return ApiError::Invalid(format!(
                    "{literal} is not a finite number (JSON has no such literal), at line {} column {}",
                    e.line(),
                    e.column()
                ));
            }
            if msg.starts_with("number out of range") {
                let token = number_before(bytes, offset);
                return ApiError::Invalid(format!(
                    "number {token} is out of range (not a finite number), at line {} column {}",
                    e.line(),
                    e.column()
                ));
            }
            ApiError::MalformedJson(format!("{msg}, near {}", snippet(bytes, offset)))
        }
    }
}

/// serde names the Rust type it wanted (`expected struct ContextBody`); a
/// caller knows JSON, not our types.
fn plain_types(msg: &str) -> String {
    let mut out = String::with_capacity(msg.len());
    let mut rest = msg;
    while let Some(i) = rest.find("struct ") {
        out.push_str(&rest[..i]);
        let after = &rest[i + "struct ".len()..];
        let end = after.find(|c: char| !(c.is_alphanumeric() || c == '_')).unwrap_or(after.len());
        out.push_str("a JSON object");
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

/// The byte offset of serde_json's 1-based line and column.
fn byte_offset(bytes: &[u8], line: usize, column: usize) -> usize {
    let mut offset = 0;
    for _ in 1..line {
        match bytes[offset..].iter().position(|&b| b == b'\n') {
            Some(i) => offset += i + 1,
            None => break,
        }
    }
    (offset + column).min(bytes.len())
}

/// The number token that ends at or just before `offset`.
fn number_before(bytes: &[u8], offset: usize) -> String {
    let is_num = |b: u8| b.is_ascii_digit() || matches!(b, b'-' | b'+' | b'.' | b'e' | b'E');
    let mut end = offset.min(bytes.len());
    while end < bytes.len() && is_num(bytes[end]) {
        end += 1;
    }
    let mut start = end;
    while start > 0 && is_num(bytes[start - 1]) {
        start -= 1;
    }
    String::from_utf8_lossy(&bytes[start..end]).into_owned()
}

/// Up to 24 characters either side of `offset`, quoted.
fn snippet(bytes: &[u8], offset: usize) -> String {
    let start = offset.saturating_sub(24);
    let end = (offset + 24).min(bytes.len());
    format!("{:?}", String::from_utf8_lossy(&bytes[start..end]))
}

/// Path parameters, with rejections as JSON errors.
pub struct PathParams<T>(pub T);

impl<S, T> FromRequestParts<S> for PathParams<T>
where
    S: Send + Sync,
    T: DeserializeOwned + Send,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| PathParams(p.0))
            .map_err(|r| ApiError::Invalid(format!("bad path: {}", r.body_text())))
    }
}

/// Query parameters as (name, value) pairs, in order. Each route checks the
/// names it knows and refuses the rest by name.
pub struct QueryPairs(pub Vec<(String, String)>);

impl<S: Send + Sync> FromRequestParts<S> for QueryPairs {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        let query = parts.uri.query().unwrap_or("");
        serde_urlencoded::from_str(query)
            .map(QueryPairs)
            .map_err(|e| ApiError::Invalid(format!("bad query string {query:?}: {e}")))
    }
}

impl QueryPairs {
    /// The value of each name in `known`; an unknown or repeated name is an error naming it.
    pub fn take<const N: usize>(&self, known: [&str; N]) -> Result<[Option<String>; N], ApiError> {
        let mut out: [Option<String>; N] = std::array::from_fn(|_| None);
        for (name, value) in &self.0 {
            let Some(i) = known.iter().position(|k| k == name) else {
                return Err(ApiError::Invalid(format!(
                    "unknown query parameter {name:?}; expected {}",
                    known.join(", ")
                )));
            };
            if out[i].is_some() {
                return Err(ApiError::Invalid(format!("query parameter {name:?} is given twice")));
            }
            out[i] = Some(value.clone());
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn rust_type_names_become_json_words() {
        assert_eq!(
            super::plain_types("invalid type: string \"x\", expected struct ContextBody"),
            "invalid type: string \"x\", expected a JSON object"
        );
        assert_eq!(super::plain_types("expected f64"), "expected f64");
    }
}
