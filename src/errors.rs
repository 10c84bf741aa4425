//! Errors Weir answers itself, rendered in the shape of the API the client called.

use crate::config::Api;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// 400: the body is not JSON, a field is missing or of the wrong type.
    BadRequest,
    /// 401: no key, unknown key, expired or revoked key.
    Unauthorized,
    /// 402: a policy (or budget) refuses for payment reasons.
    PaymentRequired,
    /// 403: the caller lacks a scope, or a policy denies.
    Forbidden,
    /// 404: unknown model or tier.
    ModelNotFound,
    /// 404: an endpoint Weir does not serve.
    EndpointNotFound,
    /// 405: the endpoint exists, the method does not.
    MethodNotAllowed,
    /// 409: a closed run, a repeated request id.
    Conflict,
    /// 413: body over the configured limit.
    PayloadTooLarge,
    /// 415: a body that says it is not JSON.
    UnsupportedMediaType,
    /// 429: a policy (or rate limit) says later; always with `Retry-After`.
    RateLimited,
    /// 500: Weir itself failed; the request is not forwarded.
    Internal,
    /// 502: the provider's answer cannot be given to the client (e.g. it is content-encoded
    /// and had to be translated).
    BadGateway,
    /// 503: a store Weir needs (the limit counters) is unavailable and Weir fails closed.
    Unavailable,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayError {
    pub kind: ErrorKind,
    pub message: String,
    pub param: Option<&'static str>,
    code: Option<&'static str>,
    /// Seconds for `Retry-After` (429).
    pub retry_after: Option<u64>,
}

impl GatewayError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        GatewayError {
            kind,
            message: message.into(),
            param: None,
            code: None,
            retry_after: None,
        }
    }

    /// A more specific code than the kind's default (e.g. `key_expired`).
    pub fn with_code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }

    pub fn with_param(mut self, param: Option<&'static str>) -> Self {
        self.param = param;
        self
    }

    pub fn status(&self) -> u32 {
        match self.kind {
            ErrorKind::BadRequest => 400,
            ErrorKind::Unauthorized => 401,
            ErrorKind::PaymentRequired => 402,
            ErrorKind::Forbidden => 403,
            ErrorKind::RateLimited => 429,
            ErrorKind::ModelNotFound | ErrorKind::EndpointNotFound => 404,
            ErrorKind::MethodNotAllowed => 405,
            ErrorKind::Conflict => 409,
            ErrorKind::PayloadTooLarge => 413,
            ErrorKind::UnsupportedMediaType => 415,
            ErrorKind::Internal => 500,
            ErrorKind::BadGateway => 502,
            ErrorKind::Unavailable => 503,
        }
    }

    /// A short machine-readable code, also used as the audit record's `error` field.
    pub fn code(&self) -> &'static str {
        if let Some(code) = self.code {
            return code;
        }
        match self.kind {
            ErrorKind::BadRequest => "invalid_request",
            ErrorKind::Unauthorized => "invalid_api_key",
            ErrorKind::Forbidden => "missing_scope",
            ErrorKind::PaymentRequired => "payment_required",
            ErrorKind::RateLimited => "rate_limit_exceeded",
            ErrorKind::ModelNotFound => "model_not_found",
            ErrorKind::EndpointNotFound => "unknown_url",
            ErrorKind::MethodNotAllowed => "method_not_allowed",
            ErrorKind::PayloadTooLarge => "request_too_large",
            ErrorKind::UnsupportedMediaType => "unsupported_media_type",
            ErrorKind::Internal => "internal_error",
            ErrorKind::BadGateway => "bad_gateway",
            ErrorKind::Conflict => "conflict",
            ErrorKind::Unavailable => "unavailable",
        }
    }

    /// The JSON error body in the client's API shape.
    pub fn render(&self, api: Api) -> Vec<u8> {
        let value = match api {
            Api::Openai => {
                let error_type = match self.kind {
                    ErrorKind::Internal | ErrorKind::BadGateway | ErrorKind::Unavailable => {
                        "server_error"
                    }
                    ErrorKind::Forbidden => "permission_error",
                    ErrorKind::RateLimited => "rate_limit_error",
                    ErrorKind::PaymentRequired => "insufficient_quota",
                    _ => "invalid_request_error",
                };
                serde_json::json!({
                    "error": {
                        "message": self.message,
                        "type": error_type,
                        "param": self.param,
                        "code": self.code(),
                    }
                })
            }
            Api::Anthropic => {
                let error_type = match self.kind {
                    ErrorKind::BadRequest
                    | ErrorKind::MethodNotAllowed
                    | ErrorKind::UnsupportedMediaType => "invalid_request_error",
                    ErrorKind::Unauthorized => "authentication_error",
                    ErrorKind::Forbidden | ErrorKind::PaymentRequired => "permission_error",
                    ErrorKind::RateLimited => "rate_limit_error",
                    ErrorKind::ModelNotFound | ErrorKind::EndpointNotFound => "not_found_error",
                    ErrorKind::PayloadTooLarge => "request_too_large",
                    ErrorKind::Internal | ErrorKind::BadGateway => "api_error",
                    ErrorKind::Unavailable => "overloaded_error",
                    ErrorKind::Conflict => "invalid_request_error",
                };
                serde_json::json!({
                    "type": "error",
                    "error": {"type": error_type, "message": self.message}
                })
            }
        };
        serde_json::to_vec(&value).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn openai_shape() {
        let e = GatewayError::new(ErrorKind::ModelNotFound, "nope").with_param(Some("model"));
        let v: Value = serde_json::from_slice(&e.render(Api::Openai)).unwrap();
        assert_eq!(v["error"]["message"], "nope");
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert_eq!(v["error"]["param"], "model");
        assert_eq!(v["error"]["code"], "model_not_found");
        assert_eq!(e.status(), 404);
    }

    #[test]
    fn anthropic_shape() {
        let e = GatewayError::new(ErrorKind::Unauthorized, "no key");
        let v: Value = serde_json::from_slice(&e.render(Api::Anthropic)).unwrap();
        assert_eq!(v["type"], "error");
        assert_eq!(v["error"]["type"], "authentication_error");
        assert_eq!(v["error"]["message"], "no key");
        assert_eq!(e.status(), 401);
    }

    #[test]
    fn a_bad_gateway_is_the_providers_fault_in_both_shapes() {
        let e = GatewayError::new(ErrorKind::BadGateway, "encoded")
            .with_code("provider_answer_encoded");
        assert_eq!(e.status(), 502);
        let openai: Value = serde_json::from_slice(&e.render(Api::Openai)).unwrap();
        assert_eq!(openai["error"]["type"], "server_error");
        assert_eq!(openai["error"]["code"], "provider_answer_encoded");
        let anthropic: Value = serde_json::from_slice(&e.render(Api::Anthropic)).unwrap();
        assert_eq!(anthropic["error"]["type"], "api_error");
        assert_eq!(anthropic["error"]["message"], "encoded");
    }
}
