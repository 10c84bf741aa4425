//! Which API a request path belongs to.

use crate::config::Api;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `POST /v1/chat/completions` (OpenAI).
    ChatCompletions,
    /// `POST /v1/messages` (Anthropic).
    Messages,
}

impl Endpoint {
    /// `path` is the `:path` header, query string included.
    pub fn classify(path: &str) -> Option<Endpoint> {
        let path = path.split(['?', '#']).next().unwrap_or("");
        let path = path.strip_suffix('/').unwrap_or(path);
        match path {
            "/v1/chat/completions" => Some(Endpoint::ChatCompletions),
            "/v1/messages" => Some(Endpoint::Messages),
            _ => None,
        }
    }

    pub fn api(self) -> Api {
        match self {
            Endpoint::ChatCompletions => Api::Openai,
            Endpoint::Messages => Api::Anthropic,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "chat_completions",
            Endpoint::Messages => "messages",
        }
    }
}

/// The error shape for a request Weir cannot place: Anthropic's when the client speaks
/// Anthropic (its path or its `anthropic-version` header), else OpenAI's.
pub fn error_api(path: &str, has_anthropic_version: bool) -> Api {
    match Endpoint::classify(path) {
        Some(e) => e.api(),
        None if has_anthropic_version => Api::Anthropic,
        None => Api::Openai,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classify_paths() {
        assert_eq!(
            Endpoint::classify("/v1/chat/completions"),
            Some(Endpoint::ChatCompletions)
        );
        assert_eq!(
            Endpoint::classify("/v1/chat/completions?x=1"),
            Some(Endpoint::ChatCompletions)
        );
        assert_eq!(
            Endpoint::classify("/v1/messages/"),
            Some(Endpoint::Messages)
        );
        assert_eq!(Endpoint::classify("/v1/chat/completionsx"), None);
        assert_eq!(Endpoint::classify("/"), None);
        assert_eq!(error_api("/v1/x", true), Api::Anthropic);
        assert_eq!(error_api("/v1/x", false), Api::Openai);
    }
}
