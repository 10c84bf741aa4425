//! Which API a request path belongs to.

use crate::config::Api;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `POST /v1/chat/completions` (OpenAI).
    ChatCompletions,
    /// `POST /v1/messages` (Anthropic).
    Messages,
    /// `POST /v1/messages/count_tokens` (Anthropic; Claude Code calls it every turn): sent
    /// to the tier's Anthropic target, not metered, not counted against limits.
    CountTokens,
    /// `GET /v1/models` (what the caller may use) and `GET /v1/models/{id}` (one of them),
    /// answered by Weir itself.
    Models,
    /// `POST /v1/weir/advice`: the decision and route for a request, without calling a provider.
    Advice,
    /// `POST /v1/embeddings` (OpenAI).
    Embeddings,
    /// `POST /v1/completions` (OpenAI, legacy).
    Completions,
    /// `POST /v1/responses` (OpenAI).
    Responses,
    /// Any other `/v1/` path, when the configuration passes them through.
    Passthrough,
}

/// Whether `path` (the `:path` header, query string included) reads one way only: it starts
/// with `/` and has no empty segment (but a trailing `/`), no `.` or `..` segment, no
/// backslash and no percent-escape before its query. A pass-through path must: a server that
/// merges slashes, removes dot segments or decodes escapes could read
/// `/v1//chat/completions` as the chat endpoint, which passed through would skip the policy,
/// the model scopes and the metering. (envoy.yaml's `normalize_path` and `merge_slashes`
/// bring most such paths to this form before Weir sees them.)
pub fn is_canonical_path(path: &str) -> bool {
    let path = path.split(['?', '#']).next().unwrap_or("");
    let Some(rest) = path.strip_prefix('/') else {
        return false;
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    !path.contains(['\\', '%'])
        && (rest.is_empty()
            || rest
                .split('/')
                .all(|segment| !matches!(segment, "" | "." | "..")))
}

impl Endpoint {
    /// `path` is the `:path` header, query string included.
    pub fn classify(path: &str) -> Option<Endpoint> {
        let path = path.split(['?', '#']).next().unwrap_or("");
        let path = path.strip_suffix('/').unwrap_or(path);
        match path {
            "/v1/chat/completions" => Some(Endpoint::ChatCompletions),
            "/v1/messages" => Some(Endpoint::Messages),
            "/v1/messages/count_tokens" => Some(Endpoint::CountTokens),
            "/v1/models" => Some(Endpoint::Models),
            "/v1/weir/advice" => Some(Endpoint::Advice),
            "/v1/embeddings" => Some(Endpoint::Embeddings),
            "/v1/completions" => Some(Endpoint::Completions),
            "/v1/responses" => Some(Endpoint::Responses),
            p if model_id(p).is_some() => Some(Endpoint::Models),
            _ => None,
        }
    }

    /// The API whose shapes the endpoint uses; `None` when both are served (the client's
    /// `anthropic-version` header decides).
    pub fn api(self) -> Option<Api> {
        match self {
            Endpoint::ChatCompletions
            | Endpoint::Embeddings
            | Endpoint::Completions
            | Endpoint::Responses
            | Endpoint::Passthrough => Some(Api::Openai),
            Endpoint::Messages | Endpoint::CountTokens => Some(Api::Anthropic),
            Endpoint::Models | Endpoint::Advice => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "chat_completions",
            Endpoint::Messages => "messages",
            Endpoint::CountTokens => "count_tokens",
            Endpoint::Models => "models",
            Endpoint::Advice => "advice",
            Endpoint::Embeddings => "embeddings",
            Endpoint::Completions => "completions",
            Endpoint::Responses => "responses",
            Endpoint::Passthrough => "passthrough",
        }
    }

    /// The scope a key needs to call this endpoint: its name, but `chat` for chat completions
    /// and `messages` for counting a message's tokens.
    pub fn scope(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "chat",
            Endpoint::CountTokens => "messages",
            other => other.name(),
        }
    }

    /// OpenAI endpoints whose streams carry usage only when asked (`include_usage`).
    pub fn needs_stream_usage_option(self) -> bool {
        matches!(self, Endpoint::ChatCompletions | Endpoint::Completions)
    }

    pub fn method(self) -> &'static str {
        match self {
            Endpoint::Models => "GET",
            Endpoint::Passthrough => "*",
            _ => "POST",
        }
    }
}

/// The id in `GET /v1/models/{id}` (`path` without its query), if the path is one.
pub fn model_id(path: &str) -> Option<&str> {
    let path = path.split(['?', '#']).next().unwrap_or("");
    let path = path.strip_suffix('/').unwrap_or(path);
    path.strip_prefix("/v1/models/")
        .filter(|id| !id.is_empty() && !id.contains('/'))
}

/// Query parameters that carry credentials in some clients: removed before forwarding
/// (the audit record never holds a query string at all).
pub const CREDENTIAL_QUERY_PARAMS: [&str; 7] = [
    "key",
    "api_key",
    "api-key",
    "apikey",
    "access_token",
    "token",
    "x-api-key",
];

/// The path with credential-looking query parameters removed; `None` when nothing changes.
pub fn strip_credential_params(path: &str) -> Option<String> {
    let (base, query) = path.split_once('?')?;
    let mut removed = false;
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| {
            let name = pair.split('=').next().unwrap_or("");
            let secret = CREDENTIAL_QUERY_PARAMS
                .iter()
                .any(|c| name.eq_ignore_ascii_case(c));
            removed |= secret;
            !secret
        })
        .collect();
    if !removed {
        return None;
    }
    Some(if kept.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", kept.join("&"))
    })
}

/// Whether a `content-type` is JSON (`application/json`, `...+json`, any parameters).
pub fn is_json_content_type(value: &str) -> bool {
    let media = value
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    media == "application/json" || (media.starts_with("application/") && media.ends_with("+json"))
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
    fn canonical_paths_read_one_way_only() {
        for path in [
            "/v1/files",
            "/v1/files/",
            "/v1/files/file-abc123/content?x=%2F..",
            "/v1/batches?after=b_1&limit=2",
            "/v1/fine_tuning/jobs",
            "/",
        ] {
            assert!(is_canonical_path(path), "{path}");
        }
        for path in [
            "/v1//chat/completions",
            "//v1/chat/completions",
            "/v1/./chat/completions",
            "/v1/x/../chat/completions",
            "/v1/chat/completions/..",
            "/v1/%63hat/completions",
            "/v1/chat%2Fcompletions",
            "/v1/chat\\completions",
            "/v1/files//",
            "v1/files",
            "",
        ] {
            assert!(!is_canonical_path(path), "{path}");
        }
    }

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
        let count = Endpoint::classify("/v1/messages/count_tokens?beta=true");
        assert_eq!(count, Some(Endpoint::CountTokens));
        assert_eq!(
            count.map(|e| (e.api(), e.scope(), e.method())),
            Some((Some(Api::Anthropic), "messages", "POST"))
        );
        assert_eq!(
            Endpoint::classify("/v1/models/fast?x=1"),
            Some(Endpoint::Models)
        );
        assert_eq!(model_id("/v1/models/fast/"), Some("fast"));
        assert_eq!(model_id("/v1/models"), None);
        assert_eq!(model_id("/v1/models/"), None);
        assert_eq!(model_id("/v1/models/openai/gpt-4o"), None);
        assert_eq!(Endpoint::classify("/v1/models/openai/gpt-4o"), None);
        assert_eq!(
            strip_credential_params("/v1/x?api_key=s&api-version=1"),
            Some("/v1/x?api-version=1".into())
        );
        assert_eq!(strip_credential_params("/v1/x?KEY=s"), Some("/v1/x".into()));
        assert_eq!(strip_credential_params("/v1/x?api-version=1"), None);
        assert_eq!(strip_credential_params("/v1/x"), None);
        assert!(is_json_content_type("application/json; charset=utf-8"));
        assert!(is_json_content_type("application/vnd.api+json"));
        assert!(!is_json_content_type("text/plain"));
        assert!(!is_json_content_type("application/x-www-form-urlencoded"));
        assert_eq!(error_api("/v1/models", true), Api::Anthropic);
        assert_eq!(error_api("/v1/models", false), Api::Openai);
    }
}
