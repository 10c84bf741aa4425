//! Which API a request path belongs to.

use crate::config::Api;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `POST /v1/chat/completions` (OpenAI).
    ChatCompletions,
    /// `POST /v1/messages` (Anthropic).
    Messages,
    /// `GET /v1/models`: what the caller may use, answered by Weir itself.
    Models,
    /// `POST /v1/weir/advice`: the decision and route for a request, without calling a provider.
    Advice,
}

impl Endpoint {
    /// `path` is the `:path` header, query string included.
    pub fn classify(path: &str) -> Option<Endpoint> {
        let path = path.split(['?', '#']).next().unwrap_or("");
        let path = path.strip_suffix('/').unwrap_or(path);
        match path {
            "/v1/chat/completions" => Some(Endpoint::ChatCompletions),
            "/v1/messages" => Some(Endpoint::Messages),
            "/v1/models" => Some(Endpoint::Models),
            "/v1/weir/advice" => Some(Endpoint::Advice),
            _ => None,
        }
    }

    /// The API whose shapes the endpoint uses; `None` when both are served (the client's
    /// `anthropic-version` header decides).
    pub fn api(self) -> Option<Api> {
        match self {
            Endpoint::ChatCompletions => Some(Api::Openai),
            Endpoint::Messages => Some(Api::Anthropic),
            Endpoint::Models | Endpoint::Advice => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "chat_completions",
            Endpoint::Messages => "messages",
            Endpoint::Models => "models",
            Endpoint::Advice => "advice",
        }
    }

    /// The scope a key needs to call this endpoint.
    pub fn scope(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "chat",
            Endpoint::Messages => "messages",
            Endpoint::Models => "models",
            Endpoint::Advice => "advice",
        }
    }

    pub fn method(self) -> &'static str {
        match self {
            Endpoint::Models => "GET",
            _ => "POST",
        }
    }
}

/// The error shape for a request Weir cannot place: Anthropic's when the client speaks
/// Anthropic (its path or its `anthropic-version` header), else OpenAI's.
pub fn error_api(path: &str, has_anthropic_version: bool) -> Api {
    match Endpoint::classify(path).and_then(Endpoint::api) {
        Some(api) => api,
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
        assert_eq!(Endpoint::classify("/v1/models"), Some(Endpoint::Models));
        assert_eq!(error_api("/v1/models", true), Api::Anthropic);
        assert_eq!(error_api("/v1/models", false), Api::Openai);
    }
}
