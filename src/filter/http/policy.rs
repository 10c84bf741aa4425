//! Scopes, policy and routing decisions, and the advice endpoint.

use super::*;

impl WeirHttp {
    /// Scopes, policy and routing: everything that decides where a request goes, shared
    /// by forwarding and the advice endpoint.
    pub(super) fn decide(
        &mut self,
        gateway: &Gateway,
        request: &LlmRequest<'_>,
    ) -> Result<Plan, GatewayError> {
        let may_use =
            scopes_of(gateway, &self.caller).is_some_and(|s| s.allows_model(&request.model));
        if !may_use {
            let name = printable(&request.model);
            return Err(GatewayError::new(
                ErrorKind::Forbidden,
                format!("This key may not use the model `{name}`: it lacks a scope such as `model:{name}`."),
            )
            .with_param(Some("model")));
        }

        let mut model = request.model.clone();
        let mut max_tokens = None;
        if let Some(name) = self.policy_name(gateway)? {
            let decision = self.evaluate_policy(gateway, &name, request)?;
            if let Some(denial) = decision.denial() {
                let kind = match denial.status {
                    402 => ErrorKind::PaymentRequired,
                    429 => ErrorKind::RateLimited,
                    _ => ErrorKind::Forbidden,
                };
                let mut error = GatewayError::new(kind, denial.reason).with_code("policy_denied");
                if kind == ErrorKind::RateLimited {
                    error.retry_after = Some(denial.retry_after.unwrap_or(60));
                }
                return Err(error);
            }
            for tag in decision.tags {
                if !self.record.tags.contains(&tag) {
                    self.record.tags.push(tag);
                }
            }
            if let Some(tier) = decision.tier {
                if !gateway.tiers.contains_key(&tier) {
                    log::error!("weir: policy {name} forced the unknown tier {tier:?}");
                    return Err(GatewayError::new(
                        ErrorKind::Internal,
                        "The policy chose a tier that does not exist; the request was not forwarded.",
                    )
                    .with_code("policy_error"));
                }
                self.record.policy_tier = Some(tier.clone());
                model = tier;
            }
            max_tokens = decision.max_tokens;
            self.record.max_tokens_cap = max_tokens;
        }

        let empty = Scopes::default();
        let scopes = scopes_of(gateway, &self.caller).unwrap_or(&empty);
        let route = route(gateway, self.api, &model, scopes, &self.record.request_id)?;
        Ok(Plan {
            tier: route.tier.map(str::to_string),
            failover: route.failover,
            target: route.target,
            provider: route.provider.name.clone(),
            max_tokens,
        })
    }
    /// The policy for this request: the caller's directive, else the key's default, else
    /// the global default. `None` when no policy applies.
    pub(super) fn policy_name(
        &mut self,
        gateway: &Gateway,
    ) -> Result<Option<String>, GatewayError> {
        // Borrowed, not copied: one name is copied at the end, for the record.
        let key_default = match &self.caller {
            Some(Caller::Key(i)) => gateway
                .keys
                .get(*i)
                .and_then(|k| k.default_policy.as_deref()),
            _ => None,
        };
        // The set's default sits behind its RefCell: copied, and only when it is the fallback.
        let global_default = match key_default {
            Some(_) => None,
            None => gateway
                .policies
                .as_ref()
                .and_then(|p| p.borrow().default.clone()),
        };
        let otherwise = key_default.or(global_default.as_deref());
        let chosen = self.directives.policy.as_deref();
        // Choosing a policy other than the one that applies anyway needs a `policy:` scope:
        // otherwise any caller could step around its policy (e.g. DLP) with a header.
        if let Some(choice) = chosen.filter(|c| Some(*c) != otherwise) {
            let allowed = scopes_of(gateway, &self.caller).is_some_and(|s| s.allows_policy(choice));
            if !allowed {
                let name = printable(choice);
                return Err(GatewayError::new(
                    ErrorKind::Forbidden,
                    format!("This key may not choose the policy `{name}`: it lacks a scope such as `policy:{name}`."),
                )
                .with_code("policy_not_allowed"));
            }
        }
        let Some(name) = chosen.or(otherwise).map(str::to_string) else {
            return Ok(None);
        };
        let known = gateway
            .policies
            .as_ref()
            .is_some_and(|p| p.borrow().contains(&name));
        if !known {
            let names = gateway
                .policies
                .as_ref()
                .map(|p| p.borrow().names().join(", "))
                .unwrap_or_default();
            let message = if names.is_empty() {
                format!(
                    "Unknown policy `{}`: no policies are configured.",
                    printable(&name)
                )
            } else {
                format!(
                    "Unknown policy `{}`. Known policies: {names}.",
                    printable(&name)
                )
            };
            return Err(match chosen {
                Some(_) => {
                    GatewayError::new(ErrorKind::BadRequest, message).with_code("unknown_policy")
                }
                // A key's default that does not exist is the operator's error: fail closed.
                None => GatewayError::new(ErrorKind::Internal, message).with_code("policy_error"),
            });
        }
        self.record.policy = Some(name.clone());
        Ok(Some(name))
    }
    pub(super) fn evaluate_policy(
        &mut self,
        gateway: &Gateway,
        name: &str,
        request: &LlmRequest<'_>,
    ) -> Result<Decision, GatewayError> {
        let Some(policies) = &gateway.policies else {
            return Err(GatewayError::new(
                ErrorKind::Internal,
                "No policies are configured.",
            ));
        };
        // The request's second (its headers' arrival): the policy's `time`, and the second
        // whose decisions are kept. No clock read for a kept decision.
        let now_unix = self
            .started
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        // A decision the policy already made for this API key and model (this second) needs
        // no input at all: looked up before any is built.
        let kept = match &self.caller {
            Some(Caller::Key(i)) => gateway.keys.get(*i).and_then(|k| {
                policies
                    .borrow_mut()
                    .kept_for_key(name, &k.id, &request.model, now_unix)
            }),
            _ => None,
        };
        let (result, micros) = match kept {
            // A lookup, not an evaluation: well under the microsecond `policy_us` counts.
            Some(decision) => (Ok((decision, true)), 0),
            None => {
                let start = host::now();
                let result = self.decide_with_input(gateway, policies, name, request, now_unix);
                let micros = host::now()
                    .duration_since(start)
                    .map(|d| d.as_micros() as u64)
                    .unwrap_or(0);
                (result, micros)
            }
        };
        self.record.policy_us = Some(micros);
        // The `weir_policy_eval_us` histogram is recorded with the request's other metrics.
        result
            .map(|(decision, cached)| {
                self.record.policy_cached = cached;
                decision
            })
            .map_err(|e| {
                log::error!("weir: policy {name} failed: {e}");
                GatewayError::new(
                    ErrorKind::Internal,
                    "The policy could not be evaluated; the request was not forwarded.",
                )
                .with_code("policy_error")
            })
    }

    /// The policy's decision on an input built from this request (only the fields it
    /// reads), kept or new; `true` with a kept one.
    fn decide_with_input(
        &self,
        gateway: &Gateway,
        policies: &std::cell::RefCell<crate::policy::PolicySet>,
        name: &str,
        request: &LlmRequest<'_>,
        now_unix: u64,
    ) -> Result<(Decision, bool), String> {
        // Read-only until the input is built; evaluating needs the set mutably.
        let set = policies.borrow();
        let needs_messages = set.needs_messages(name);
        // Only what the policy reads is built (headers, usage and time cost host calls).
        let fields = set.input_fields(name);
        let wants = |f: &str| crate::policy::reads(fields, f);
        // Parsing the messages and tools is the costly part of the input: only for a policy
        // that reads them (a kept decision of `standard` needs none of it).
        let essentials = if needs_messages || wants("params") {
            request.essentials(needs_messages)
        } else {
            Essentials::default()
        };
        let caller = match &self.caller {
            Some(Caller::Key(i)) => match gateway.keys.get(*i) {
                Some(k) => CallerInput {
                    kind: "api_key",
                    key_id: Some(&k.id),
                    team: Some(&k.team),
                    project: k.project.as_deref(),
                    scopes: k.scopes.as_strings(),
                    metadata: &k.metadata,
                    claims: None,
                },
                None => CallerInput::default(),
            },
            Some(Caller::Jwt(j)) => CallerInput {
                kind: "jwt",
                key_id: Some(&j.id),
                team: Some(&j.team),
                project: j.project.as_deref(),
                scopes: j.scopes.as_strings(),
                claims: Some(&j.claims),
                ..Default::default()
            },
            None => CallerInput::default(),
        };
        let headers: Vec<(String, String)> = if wants("request.headers") {
            // All of them, or only those the policy reads by name.
            self.headers
                .pairs()
                .filter(|(k, _)| {
                    !k.starts_with(':') && !SECRET_HEADERS.contains(k) && !k.starts_with("x-weir-")
                })
                .filter(|(k, _)| crate::policy::reads_header(fields, k))
                .map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v).into_owned()))
                .collect()
        } else {
            Vec::new()
        };
        let locale = if wants("directives.locale") {
            self.headers
                .get_str("accept-language")
                .and_then(|l| l.split([',', ';']).next().map(|l| l.trim().to_string()))
        } else {
            None
        };
        // Policies see the caller's usage against its limits (read, not reserved).
        let usage_now = gateway
            .limits
            .as_ref()
            .filter(|_| wants("usage"))
            .map(|limits| {
                let key_id = self.record.key_id.clone().unwrap_or_default();
                let team = self.record.team.clone().unwrap_or_default();
                let subjects =
                    limit_subjects(limits, &key_id, &team, self.directives.user.as_deref());
                usage_snapshot(&SharedData, &subjects, now_unix)
            });
        let run_id = self.run_id().to_string();
        let parts = InputParts {
            request_id: &self.record.request_id,
            method: &self.record.method,
            path: &self.record.path,
            endpoint: self.record.endpoint.unwrap_or(""),
            api: self.api.as_str(),
            headers,
            caller,
            user: self.directives.user.as_deref(),
            run_id: &run_id,
            tags: &self.record.tags,
            locale: locale.as_deref(),
            policy: name,
            model: &request.model,
            is_tier: gateway.tiers.contains_key(&request.model),
            params: ParamsInput::new(request.stream, &essentials),
            messages: essentials.messages,
            now_unix,
            usage: usage_now,
        };
        drop(set);
        let result = policies.borrow_mut().decide(name, &parts);
        result
    }
    /// The answer of `POST /v1/weir/advice`: what Weir would do, without doing it.
    pub(super) fn advise(&mut self, plan: Result<&Plan, GatewayError>) -> Action {
        let body = match plan {
            Ok(plan) => {
                self.advised = Some("allow");
                serde_json::json!({
                    "decision": "allow",
                    "request_id": self.record.request_id,
                    "policy": self.record.policy,
                    "tier": plan.tier,
                    "model": plan.target.model,
                    "provider": plan.provider,
                    "cluster": plan.target.cluster,
                    "max_tokens": plan.max_tokens,
                    "tags": self.record.tags,
                })
            }
            Err(e) => {
                self.advised = Some(if e.kind == ErrorKind::Internal {
                    "error"
                } else {
                    "deny"
                });
                self.record.reason = Some(e.message.clone());
                self.record.error = Some(e.code());
                serde_json::json!({
                    "decision": self.advised,
                    "request_id": self.record.request_id,
                    "policy": self.record.policy,
                    "status": e.status(),
                    "code": e.code(),
                    "reason": e.message,
                    "retry_after": e.retry_after,
                })
            }
        };
        self.answer(&serde_json::to_vec(&body).unwrap_or_default())
    }
}
