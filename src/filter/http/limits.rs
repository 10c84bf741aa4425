//! Rate limits, budgets, runs and idempotency around one request.

use super::*;

impl WeirHttp {
    /// Idempotency, run limits, rate limits and budgets, in that order. Reservations are
    /// settled in the log phase.
    pub(super) fn apply_limits(
        &mut self,
        gateway: &Gateway,
        limits: &LimitsConfig,
        request: &LlmRequest<'_>,
        plan: &Plan,
    ) -> Result<(), Action> {
        let store = SharedData;
        let now = host::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let key_id = self.record.key_id.clone().unwrap_or_default();
        let unavailable = |this: &mut Self| -> Result<(), Action> {
            match limits.fail_mode {
                FailMode::Closed => Err(this.reject(
                    GatewayError::new(
                        ErrorKind::Unavailable,
                        "Weir cannot check the limits right now; the request was not forwarded.",
                    )
                    .with_code("limits_unavailable"),
                )),
                FailMode::Open => {
                    this.record.limits_unavailable = true;
                    Ok(())
                }
            }
        };

        if self.client_request_id && limits.idempotency_window_seconds > 0 {
            let id = RequestIdAt {
                key_id: &key_id,
                request_id: &self.record.request_id,
                window: limits.idempotency_window_seconds,
                slots: limits.idempotency_slots,
            };
            match first_use(&store, id, now) {
                Ok(Ok(remembered)) => {
                    self.idempotency_evicted = remembered == Remembered::Evicted;
                }
                Ok(Err(first)) => {
                    let at = humantime::format_rfc3339_seconds(
                        SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(first),
                    );
                    return Err(self.reject(
                        GatewayError::new(
                            ErrorKind::Conflict,
                            format!(
                                "The request id `{}` was already used by this key at {at}; this repeat was not forwarded.",
                                self.record.request_id
                            ),
                        )
                        .with_code("duplicate_request"),
                    ));
                }
                Err(_) => unavailable(self)?,
            }
        }

        if let (Some(run_limits), Some(run_id)) = (&limits.per_run, self.directives.run_id.clone())
        {
            let run = RunAt {
                key_id: &key_id,
                run_id: &run_id,
                slots: limits.run_slots,
            };
            match run_call(&store, run, run_limits, self.new_run, now) {
                Ok(Some(Ok(_))) => self.run_counted = true,
                Ok(None) => self.record.limits_uncounted = true,
                Ok(Some(Err(state))) => {
                    return Err(self.reject(
                        GatewayError::new(
                            ErrorKind::Conflict,
                            format!(
                                "The run `{run_id}` is closed: it reached its limits ({} calls, {} tokens). \
                                 Start a new run with `x-weir-new-run: true` or another run id.",
                                state.calls, state.tokens
                            ),
                        )
                        .with_code("run_closed"),
                    ))
                }
                Err(_) => unavailable(self)?,
            }
        }

        let team = self.record.team.clone().unwrap_or_default();
        let subjects = limit_subjects(limits, &key_id, &team, self.directives.user.as_deref());
        if subjects.is_empty() {
            return Ok(());
        }
        // The worst case: the prompt (about 3 characters a token, plus per-message overhead)
        // and every output token the request may ask for.
        let essentials = request.essentials(false);
        let prompt = (essentials.input_chars / 3 + 4 * essentials.message_count + 16) as u64;
        let output = plan
            .max_tokens
            .or(essentials.max_tokens)
            .unwrap_or(limits.default_max_tokens);
        let usage = Usage {
            prompt_tokens: prompt,
            completion_tokens: output,
            total_tokens: prompt + output,
            ..Default::default()
        };
        let spend_micros = gateway
            .price(None, Some(&plan.target.model))
            .map(|(_, price)| price.cost(&usage).picos.div_ceil(1_000_000) as u64)
            .unwrap_or(0);
        let estimate = Estimate {
            tokens: prompt + output,
            spend_micros,
        };
        match admit(&store, &subjects, now, estimate) {
            Ok(admission) => {
                self.headroom = (admission.requests, admission.tokens);
                self.record.limits_uncounted |= admission.uncounted;
                self.admission = Some(admission);
                Ok(())
            }
            Err(Refusal::RateLimited {
                what,
                retry_after,
                requests,
                tokens,
            }) => {
                self.headroom = (requests, tokens);
                let mut error = GatewayError::new(
                    ErrorKind::RateLimited,
                    format!("Rate limit reached: {what}. Try again in {retry_after} s."),
                );
                error.retry_after = Some(retry_after);
                Err(self.reject(error))
            }
            Err(Refusal::Budget { what }) => Err(self.reject(
                GatewayError::new(
                    ErrorKind::PaymentRequired,
                    format!("This request would exceed {what}."),
                )
                .with_code("budget_exhausted"),
            )),
            Err(Refusal::Unavailable) => unavailable(self),
        }
    }
    /// `x-ratelimit-*` headers (OpenAI's names) for the tightest request and token limits.
    pub(super) fn ratelimit_headers(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for (kind, room) in [("requests", self.headroom.0), ("tokens", self.headroom.1)] {
            if let Some(r) = room {
                out.push((format!("x-ratelimit-limit-{kind}"), r.limit.to_string()));
                out.push((
                    format!("x-ratelimit-remaining-{kind}"),
                    r.remaining.to_string(),
                ));
                out.push((
                    format!("x-ratelimit-reset-{kind}"),
                    format!("{}s", r.reset_seconds),
                ));
            }
        }
        out
    }
    /// Replaces the limit reservations with the real usage and adds it to the run.
    pub(super) fn settle_limits(&mut self) {
        let tokens = self.record.usage.map(|u| u.total_tokens).unwrap_or(0);
        let spend = self
            .record
            .cost
            .as_ref()
            .map(|c| c.picos.div_ceil(1_000_000) as u64)
            .unwrap_or(0);
        let store = SharedData;
        if let Some(admission) = self.admission.take() {
            if settle(&store, &admission, tokens, spend).is_err() {
                log::warn!("weir: could not settle the limit reservations");
            }
        }
        if self.run_counted {
            let limits = self.gateway.as_ref().and_then(|g| g.limits.as_ref());
            let per_run = limits.and_then(|l| l.per_run.as_ref());
            if let (Some(limits), Some(per_run), Some(key), Some(run)) = (
                limits,
                per_run,
                self.record.key_id.as_deref(),
                self.directives.run_id.as_deref(),
            ) {
                let now = host::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                let at = RunAt {
                    key_id: key,
                    run_id: run,
                    slots: limits.run_slots,
                };
                if run_usage(&store, at, per_run, tokens, spend, now).is_err() {
                    log::warn!("weir: could not add the usage to run {run}");
                }
            }
        }
    }
}
