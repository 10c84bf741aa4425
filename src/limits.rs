//! Rate limits, budgets, runs and idempotency over a small counter store: proxy-wasm shared
//! data in Envoy (shared by every worker, compare-and-swap), an in-memory map in tests.
//!
//! A counter is one store key holding `(window start, value)`: when the window rolls over
//! the value starts again from zero, so memory does not grow with time. Requests are
//! counted when they arrive; tokens and spend are *reserved* (the worst case: the prompt
//! estimate plus `max_tokens`, priced) before forwarding and *settled* with the real usage
//! when the response ends. Concurrent requests therefore cannot take a budget past its
//! limit except by what they use beyond their reservations (see the README).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::cost::Price;

/// Why the store could not be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreError {
    /// Someone else wrote since we read: read again.
    Conflict,
    /// The store cannot be read or written.
    Unavailable,
}

/// Shared data with compare-and-swap.
pub trait Store {
    fn get(&self, key: &str) -> Result<(Option<Vec<u8>>, Option<u32>), StoreError>;
    /// Writes only if nobody wrote since the caller's `get`: the value's CAS is still `cas`,
    /// or, with `None` (the caller read no value), there is still no value. A first write
    /// racing another worker's then conflicts and is retried instead of overwriting it.
    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError>;
}

const RETRIES: usize = 64;

fn decode(value: Option<Vec<u8>>) -> (u64, u64) {
    match value {
        Some(v) if v.len() == 16 => {
            let mut a = [0u8; 8];
            let mut b = [0u8; 8];
            a.copy_from_slice(&v[..8]);
            b.copy_from_slice(&v[8..]);
            (u64::from_le_bytes(a), u64::from_le_bytes(b))
        }
        _ => (0, 0),
    }
}

/// A counter with its owner: 16 bytes for a named counter (owner 0), 24 for a table slot,
/// whose last 8 bytes say which subject holds it.
fn decode_owned(value: Option<Vec<u8>>) -> (u64, u64, u64) {
    match value {
        Some(v) if v.len() == 24 => {
            let n = |i: usize| u64::from_le_bytes(v[i..i + 8].try_into().unwrap_or([0; 8]));
            (n(0), n(8), n(16))
        }
        other => {
            let (window, value) = decode(other);
            (window, value, 0)
        }
    }
}

fn encode_owned(window: u64, value: u64, owner: u64) -> Vec<u8> {
    let mut out = encode(window, value).to_vec();
    if owner != 0 {
        out.extend_from_slice(&owner.to_le_bytes());
    }
    out
}

fn encode(window: u64, value: u64) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&window.to_le_bytes());
    out[8..].copy_from_slice(&value.to_le_bytes());
    out
}

/// Where a subject's counters live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counters {
    /// One store key per counter, named after the subject: keys and teams, which the
    /// configuration names, so their number is bounded.
    Named,
    /// A slot in a fixed table per counter (kind and window), found from `owner` (a
    /// fingerprint of the key and end user) by open addressing. End users are named by the
    /// client, and Envoy's shared data cannot delete a key: one key per user would grow
    /// without bound with every `x-weir-user` ever sent. A slot written in the current window
    /// belongs to its owner until the window ends; then it is free for anyone.
    Slotted { owner: u64, slots: u64 },
}

/// Slots an end user's counter may occupy: its home slot and the next ones.
pub const USER_PROBES: u64 = 8;
/// Default size of each per-user counter table (`limits.user_slots`).
pub const DEFAULT_USER_SLOTS: u64 = 65_536;

/// A counter found for the current window: its store key, value, CAS and owner.
struct Located {
    key: String,
    current: u64,
    cas: Option<u32>,
    owner: u64,
}

/// The counter of subject `scope`/`id` for `kind` per `window`, as of the window starting at
/// `start`. `None` when a slotted subject has neither its slot nor a free one among its
/// probes (its neighbourhood of the table is held by other users in this window).
fn locate(
    store: &dyn Store,
    scope: &str,
    id: &str,
    counters: Counters,
    kind: &str,
    window: Window,
    start: u64,
) -> Result<Option<Located>, StoreError> {
    match counters {
        Counters::Named => {
            let key = format!("weir:{scope}:{id}:{kind}:{}", window.name());
            let (value, cas) = store.get(&key)?;
            let (stored_window, n) = decode(value);
            let current = if stored_window == start { n } else { 0 };
            Ok(Some(Located {
                key,
                current,
                cas,
                owner: 0,
            }))
        }
        Counters::Slotted { owner, slots } => {
            let slots = slots.max(1);
            for i in 0..USER_PROBES.min(slots) {
                let slot = owner.wrapping_add(i) % slots;
                let key = format!("weir:{scope}-slot:{kind}:{}:{slot}", window.name());
                let (value, cas) = store.get(&key)?;
                let empty = value.is_none();
                let (stored_window, n, holder) = decode_owned(value);
                // Within a window a slot is only ever claimed, never released, so the
                // first slot that is the owner's or free is where the owner counts.
                if empty || stored_window != start || holder == owner {
                    let current = if !empty && stored_window == start {
                        n
                    } else {
                        0
                    };
                    return Ok(Some(Located {
                        key,
                        current,
                        cas,
                        owner,
                    }));
                }
            }
            Ok(None)
        }
    }
}

/// What `reserve` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reserved {
    /// Added: the counter's store key and its new value.
    Added { key: String, value: u64 },
    /// Not added: it would exceed the limit; the current value.
    Over(u64),
    /// Not counted: an end user's table has no slot for them in this window.
    NoSlot,
}

/// Adds `amount` to the counter of subject `scope`/`id` (`kind` per `window`, the window
/// starting at `start`) if the result stays within `limit`.
#[allow(clippy::too_many_arguments)]
fn reserve_counter(
    store: &dyn Store,
    scope: &str,
    id: &str,
    counters: Counters,
    kind: &str,
    window: Window,
    start: u64,
    amount: u64,
    limit: u64,
) -> Result<Reserved, StoreError> {
    for _ in 0..RETRIES {
        let Some(at) = locate(store, scope, id, counters, kind, window, start)? else {
            return Ok(Reserved::NoSlot);
        };
        let Some(new) = at.current.checked_add(amount).filter(|n| *n <= limit) else {
            return Ok(Reserved::Over(at.current));
        };
        match store.set(&at.key, &encode_owned(start, new, at.owner), at.cas) {
            Ok(()) => {
                return Ok(Reserved::Added {
                    key: at.key,
                    value: new,
                })
            }
            Err(StoreError::Conflict) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(StoreError::Unavailable)
}

/// Adds `delta` (may be negative; the value never goes below zero) to counter `key` in
/// `window`, held by `owner` (0 for a named counter). A counter already in a later window,
/// or a slot another owner holds, is left alone.
pub fn adjust(
    store: &dyn Store,
    key: &str,
    window: u64,
    owner: u64,
    delta: i64,
) -> Result<(), StoreError> {
    for _ in 0..RETRIES {
        let (value, cas) = store.get(key)?;
        let (stored_window, n, holder) = decode_owned(value);
        if stored_window > window || (stored_window == window && holder != owner) {
            return Ok(());
        }
        let current = if stored_window == window { n } else { 0 };
        let new = if delta >= 0 {
            current.saturating_add(delta as u64)
        } else {
            current.saturating_sub(delta.unsigned_abs())
        };
        match store.set(key, &encode_owned(window, new, owner), cas) {
            Ok(()) => return Ok(()),
            Err(StoreError::Conflict) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(StoreError::Unavailable)
}

/// Calendar windows in UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    Minute,
    Hour,
    Day,
    Month,
}

impl Window {
    pub fn name(self) -> &'static str {
        match self {
            Window::Minute => "minute",
            Window::Hour => "hour",
            Window::Day => "day",
            Window::Month => "month",
        }
    }

    /// (start, end) of the window holding `now` (Unix seconds).
    pub fn bounds(self, now: u64) -> (u64, u64) {
        let span = |s: u64| (now - now % s, now - now % s + s);
        match self {
            Window::Minute => span(60),
            Window::Hour => span(3600),
            Window::Day => span(86_400),
            Window::Month => {
                let (y, m, _) = civil_from_days((now / 86_400) as i64);
                let start = days_from_civil(y, m, 1) as u64 * 86_400;
                let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
                (start, days_from_civil(ny, nm, 1) as u64 * 86_400)
            }
        }
    }
}

// Howard Hinnant's civil-date algorithms (public domain).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = i64::from((m + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Limits of one subject (a key, a team, a user). Every field is optional.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitSet {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_minute: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_hour: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_day: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_minute: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_day: Option<u64>,
    /// In the price table's currency (decimals, e.g. "25.00").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spend_per_day: Option<Price>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spend_per_month: Option<Price>,
}

/// Limits of one run (`x-weir-run-id`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunLimits {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calls: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spend: Option<Price>,
    /// A run with no counted call for this long is forgotten (its slot may go to another
    /// run; the run starts afresh if used again). Default: 7 days.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forget_after_seconds: Option<u64>,
}

impl RunLimits {
    pub fn forget_after(&self) -> u64 {
        self.forget_after_seconds
            .unwrap_or(DEFAULT_RUN_FORGET_AFTER)
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailMode {
    /// The counter store cannot be used: refuse (503).
    #[default]
    Closed,
    /// The counter store cannot be used: let the request through, and say so in the audit.
    Open,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Every key, unless `keys.<id>` replaces it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_key: Option<LimitSet>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub keys: BTreeMap<String, LimitSet>,
    /// Each team as a whole.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub teams: BTreeMap<String, LimitSet>,
    /// Each end user (`x-weir-user`), per key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_user: Option<LimitSet>,
    /// Slots of each per-user counter table (one table per limit kind and window): the
    /// most end users counted at once in a window. A user whose neighbourhood of the table
    /// is full is let through uncounted (`limits_uncounted` in the audit record).
    #[serde(default = "default_user_slots")]
    pub user_slots: u64,
    /// Slots of the run table: the most runs counted at once. A new run whose neighbourhood
    /// holds active runs only is let through uncounted (`limits_uncounted`).
    #[serde(default = "default_run_slots")]
    pub run_slots: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_run: Option<RunLimits>,
    #[serde(default)]
    pub fail_mode: FailMode,
    /// A repeated `x-weir-request-id` from the same key within this many seconds is refused
    /// (409); 0 turns it off.
    #[serde(default = "default_idempotency_window")]
    pub idempotency_window_seconds: u64,
    /// Slots of the idempotency table: the most request ids remembered at once.
    #[serde(default = "default_idempotency_slots")]
    pub idempotency_slots: u64,
    /// `max_tokens` assumed for the reservation when a request sets none.
    #[serde(default = "default_reserve_tokens")]
    pub default_max_tokens: u64,
}

/// The same defaults as an empty `[limits]` table.
impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            per_key: None,
            keys: BTreeMap::new(),
            teams: BTreeMap::new(),
            per_user: None,
            user_slots: default_user_slots(),
            run_slots: default_run_slots(),
            per_run: None,
            fail_mode: FailMode::default(),
            idempotency_window_seconds: default_idempotency_window(),
            idempotency_slots: default_idempotency_slots(),
            default_max_tokens: default_reserve_tokens(),
        }
    }
}

fn default_run_slots() -> u64 {
    DEFAULT_RUN_SLOTS
}
fn default_user_slots() -> u64 {
    DEFAULT_USER_SLOTS
}
fn default_idempotency_slots() -> u64 {
    DEFAULT_IDEMPOTENCY_SLOTS
}
fn default_idempotency_window() -> u64 {
    600
}
fn default_reserve_tokens() -> u64 {
    4096
}

/// A subject limits apply to: `(scope, id, limits)`, and where its counters live.
pub struct Subject<'a> {
    pub scope: &'static str,
    pub id: String,
    pub limits: &'a LimitSet,
    pub counters: Counters,
}

/// The subjects a request counts against: its key (or the key's override), its team, and
/// its end user (per key).
pub fn subjects<'a>(
    config: &'a LimitsConfig,
    key_id: &str,
    team: &str,
    user: Option<&str>,
) -> Vec<Subject<'a>> {
    let mut out = Vec::new();
    if let Some(l) = config.keys.get(key_id).or(config.per_key.as_ref()) {
        out.push(Subject {
            scope: "key",
            id: key_id.to_string(),
            limits: l,
            counters: Counters::Named,
        });
    }
    if let Some(l) = config.teams.get(team) {
        out.push(Subject {
            scope: "team",
            id: team.to_string(),
            limits: l,
            counters: Counters::Named,
        });
    }
    if let (Some(l), Some(user)) = (&config.per_user, user) {
        out.push(Subject {
            scope: "user",
            id: format!("{key_id}/{user}"),
            limits: l,
            counters: Counters::Slotted {
                owner: fingerprint(key_id, user),
                slots: config.user_slots,
            },
        });
    }
    out
}

/// Current usage against every configured limit, for the policy input:
/// `{"key": {"requests_per_minute": {"used": 3, "limit": 20, "reset_seconds": 40}, ...}, "team": ...}`.
pub fn usage_snapshot(store: &dyn Store, subjects: &[Subject<'_>], now: u64) -> serde_json::Value {
    let mut out = serde_json::Map::new();
    for s in subjects {
        let l = s.limits;
        let mut this = serde_json::Map::new();
        for (name, kind, window, limit) in [
            (
                "requests_per_minute",
                "requests",
                Window::Minute,
                l.requests_per_minute,
            ),
            (
                "requests_per_hour",
                "requests",
                Window::Hour,
                l.requests_per_hour,
            ),
            (
                "requests_per_day",
                "requests",
                Window::Day,
                l.requests_per_day,
            ),
            (
                "tokens_per_minute",
                "tokens",
                Window::Minute,
                l.tokens_per_minute,
            ),
            ("tokens_per_day", "tokens", Window::Day, l.tokens_per_day),
            (
                "spend_per_day",
                "spend",
                Window::Day,
                l.spend_per_day.map(|p| p.0),
            ),
            (
                "spend_per_month",
                "spend",
                Window::Month,
                l.spend_per_month.map(|p| p.0),
            ),
        ] {
            let Some(limit) = limit else { continue };
            let (start, end) = window.bounds(now);
            // Unknown (null) when the store fails or an end user has no slot.
            let used = locate(store, s.scope, &s.id, s.counters, kind, window, start)
                .ok()
                .flatten()
                .map(|at| at.current);
            this.insert(
                name.to_string(),
                serde_json::json!({"used": used, "limit": limit, "reset_seconds": end - now}),
            );
        }
        out.insert(s.scope.to_string(), serde_json::Value::Object(this));
    }
    serde_json::Value::Object(out)
}

/// What a request is expected to cost at most.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Estimate {
    pub tokens: u64,
    pub spend_micros: u64,
}

/// One reservation made, to settle (or roll back) later.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    pub key: String,
    pub window: u64,
    /// Who holds the counter: 0 for a named one, the end user's fingerprint for a slot.
    pub owner: u64,
    pub amount: u64,
    /// `tokens` or `spend` (settled with real usage); `requests` are never settled.
    pub kind: &'static str,
}

/// For the `x-ratelimit-*` headers: the tightest limit of one kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Headroom {
    pub limit: u64,
    pub remaining: u64,
    pub reset_seconds: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Admission {
    pub reservations: Vec<Reservation>,
    /// Some end-user limit was not counted: the user's neighbourhood of its table was full.
    pub uncounted: bool,
    pub requests: Option<Headroom>,
    pub tokens: Option<Headroom>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// 429 with `Retry-After`.
    RateLimited {
        what: String,
        retry_after: u64,
        requests: Option<Headroom>,
        tokens: Option<Headroom>,
    },
    /// 402.
    Budget { what: String },
    /// The store failed and the mode is fail-closed (503).
    Unavailable,
}

fn tighter(current: Option<Headroom>, candidate: Headroom) -> Option<Headroom> {
    match current {
        Some(c) if c.remaining <= candidate.remaining => Some(c),
        _ => Some(candidate),
    }
}

fn rollback(store: &dyn Store, reservations: &[Reservation]) {
    for r in reservations {
        let _ = adjust(store, &r.key, r.window, r.owner, -(r.amount as i64));
    }
}

/// Checks and reserves every limit of every subject, or refuses (undoing what it reserved).
pub fn admit(
    store: &dyn Store,
    subjects: &[Subject<'_>],
    now: u64,
    estimate: Estimate,
) -> Result<Admission, Refusal> {
    let mut admission = Admission::default();
    for s in subjects {
        let l = s.limits;
        let checks: [(&'static str, Window, Option<u64>, u64); 7] = [
            ("requests", Window::Minute, l.requests_per_minute, 1),
            ("requests", Window::Hour, l.requests_per_hour, 1),
            ("requests", Window::Day, l.requests_per_day, 1),
            (
                "tokens",
                Window::Minute,
                l.tokens_per_minute,
                estimate.tokens,
            ),
            ("tokens", Window::Day, l.tokens_per_day, estimate.tokens),
            (
                "spend",
                Window::Day,
                l.spend_per_day.map(|p| p.0),
                estimate.spend_micros,
            ),
            (
                "spend",
                Window::Month,
                l.spend_per_month.map(|p| p.0),
                estimate.spend_micros,
            ),
        ];
        for (kind, window, limit, amount) in checks {
            let Some(limit) = limit else { continue };
            let (start, end) = window.bounds(now);
            let what = format!(
                "{} {}s per {} ({} {})",
                limit,
                kind.trim_end_matches('s'),
                window.name(),
                s.scope,
                s.id
            );
            let reserved = reserve_counter(
                store, s.scope, &s.id, s.counters, kind, window, start, amount, limit,
            );
            match reserved {
                Ok(Reserved::Added { key, value: used }) => {
                    let room = Headroom {
                        limit,
                        remaining: limit - used,
                        reset_seconds: end - now,
                    };
                    match kind {
                        "requests" => admission.requests = tighter(admission.requests, room),
                        "tokens" => admission.tokens = tighter(admission.tokens, room),
                        _ => {}
                    }
                    let owner = match s.counters {
                        Counters::Named => 0,
                        Counters::Slotted { owner, .. } => owner,
                    };
                    admission.reservations.push(Reservation {
                        key,
                        window: start,
                        owner,
                        amount,
                        kind,
                    });
                }
                // Refusing would let one key's many users lock every other key's users out
                // for the rest of the window; key and team limits still count this request.
                Ok(Reserved::NoSlot) => admission.uncounted = true,
                Ok(Reserved::Over(_)) => {
                    rollback(store, &admission.reservations);
                    return Err(if kind == "spend" {
                        let amount = Price(limit);
                        Refusal::Budget {
                            what: format!(
                                "the {} budget of {amount} per {} ({} {})",
                                s.scope,
                                window.name(),
                                s.scope,
                                s.id
                            ),
                        }
                    } else {
                        let room = Headroom {
                            limit,
                            remaining: 0,
                            reset_seconds: end - now,
                        };
                        let (requests, tokens) = if kind == "requests" {
                            (Some(room), admission.tokens)
                        } else {
                            (admission.requests, Some(room))
                        };
                        Refusal::RateLimited {
                            what,
                            retry_after: (end - now).max(1),
                            requests,
                            tokens,
                        }
                    });
                }
                Err(_) => {
                    rollback(store, &admission.reservations);
                    return Err(Refusal::Unavailable);
                }
            }
        }
    }
    Ok(admission)
}

/// Replaces the reservations with what the request really used.
pub fn settle(
    store: &dyn Store,
    admission: &Admission,
    tokens: u64,
    spend_micros: u64,
) -> Result<(), StoreError> {
    for r in &admission.reservations {
        let actual = match r.kind {
            "tokens" => tokens,
            "spend" => spend_micros,
            _ => continue,
        };
        adjust(
            store,
            &r.key,
            r.window,
            r.owner,
            actual as i64 - r.amount as i64,
        )?;
    }
    Ok(())
}

/// A run's state: closed, calls, tokens, spend (micro-units).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunState {
    pub closed: bool,
    pub calls: u64,
    pub tokens: u64,
    pub spend_micros: u64,
}

/// Default slots of the run table (`limits.run_slots`). Runs live in a fixed table (open
/// addressing, `RUN_PROBES` slots per run) rather than one store key per run: Envoy's shared
/// data cannot delete a key, so per-run keys would grow without bound with the number of
/// runs ever seen.
pub const DEFAULT_RUN_SLOTS: u64 = 65_536;
/// Largest `limits.user_slots` or `limits.run_slots` accepted.
pub const MAX_TABLE_SLOTS: u64 = 1 << 24;
/// Slots a run may occupy: its home slot and the next ones.
pub const RUN_PROBES: u64 = 4;
/// A run with no counted call or usage for this long may give its slot to another run.
pub const DEFAULT_RUN_FORGET_AFTER: u64 = 7 * 86_400;

/// Which (key, client-chosen id) a table slot holds: the first 8 bytes of SHA-256 of the
/// pair. A cryptographic hash, so a caller cannot craft an id that lands on another key's
/// run or request id; never 0, which marks an empty slot.
fn fingerprint(key_id: &str, id: &str) -> u64 {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(key_id.as_bytes());
    h.update([0u8]);
    h.update(id.as_bytes());
    let digest = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_le_bytes(first).max(1)
}

/// A slot: (fingerprint, last counted, state); `None` for an empty or unreadable slot.
fn decode_run(v: Option<Vec<u8>>) -> Option<(u64, u64, RunState)> {
    let v = v.filter(|v| v.len() == 41)?;
    let n = |i: usize| u64::from_le_bytes(v[i..i + 8].try_into().unwrap_or([0; 8]));
    Some((
        n(0),
        n(8),
        RunState {
            closed: v[16] == 1,
            calls: n(17),
            tokens: n(25),
            spend_micros: n(33),
        },
    ))
}

fn encode_run(fingerprint: u64, touched: u64, s: RunState) -> Vec<u8> {
    let mut v = Vec::with_capacity(41);
    v.extend_from_slice(&fingerprint.to_le_bytes());
    v.extend_from_slice(&touched.to_le_bytes());
    v.push(u8::from(s.closed));
    for n in [s.calls, s.tokens, s.spend_micros] {
        v.extend_from_slice(&n.to_le_bytes());
    }
    v
}

/// Applies `f` to the run's state: the slot that holds the run, else a free one (empty, or
/// its run idle for `forget_after` seconds), claimed for it. `Ok(None)` when every slot the
/// run may use holds an active run (the table is full there): the run is not counted.
fn update_run(
    store: &dyn Store,
    run: RunAt<'_>,
    now: u64,
    forget_after: u64,
    f: &dyn Fn(RunState) -> Result<RunState, RunState>,
) -> Result<Option<Result<RunState, RunState>>, StoreError> {
    let fingerprint = fingerprint(run.key_id, run.run_id);
    for _ in 0..RETRIES {
        let mut home = None;
        // (key, cas, idle seconds): the best slot to claim if the run is not there.
        let mut free: Option<(String, Option<u32>, u64)> = None;
        let slots = run.slots.max(1);
        for i in 0..RUN_PROBES.min(slots) {
            let key = format!("weir:run:{}", fingerprint.wrapping_add(i) % slots);
            let (value, cas) = store.get(&key)?;
            match decode_run(value) {
                Some((fp, _, state)) if fp == fingerprint => {
                    home = Some((key, cas, state));
                    break;
                }
                Some((_, touched, _)) => {
                    let idle = now.saturating_sub(touched);
                    if idle >= forget_after && free.as_ref().is_none_or(|f| idle > f.2) {
                        free = Some((key, cas, idle));
                    }
                }
                None => {
                    if free.as_ref().is_none_or(|f| f.2 != u64::MAX) {
                        free = Some((key, cas, u64::MAX));
                    }
                }
            }
        }
        let (key, cas, state) = match (home, free) {
            (Some(home), _) => home,
            (None, Some((key, cas, _))) => (key, cas, RunState::default()),
            // Refusing would let one key's many runs lock every other key's new runs out
            // for `forget_after` (a week by default).
            (None, None) => return Ok(None),
        };
        match f(state) {
            Err(state) => return Ok(Some(Err(state))),
            Ok(new) => match store.set(&key, &encode_run(fingerprint, now, new), cas) {
                Ok(()) => return Ok(Some(Ok(new))),
                Err(StoreError::Conflict) => continue,
                Err(e) => return Err(e),
            },
        }
    }
    Err(StoreError::Unavailable)
}

/// A run: its key, its id (`x-weir-run-id`) and the run table's size.
#[derive(Debug, Clone, Copy)]
pub struct RunAt<'a> {
    pub key_id: &'a str,
    pub run_id: &'a str,
    pub slots: u64,
}

/// Counts a call of a run; `Ok(Some(Err(state)))` when the run is closed (409), `Ok(None)`
/// when the run table has no slot for it (not counted). `fresh` starts the run again
/// (`x-weir-new-run: true`).
pub fn run_call(
    store: &dyn Store,
    run: RunAt<'_>,
    limits: &RunLimits,
    fresh: bool,
    now: u64,
) -> Result<Option<Result<RunState, RunState>>, StoreError> {
    update_run(store, run, now, limits.forget_after(), &|s| {
        let s = if fresh { RunState::default() } else { s };
        if s.closed {
            return Err(s);
        }
        let calls = s.calls + 1;
        if limits.calls.is_some_and(|max| calls > max) {
            return Ok(RunState { closed: true, ..s });
        }
        Ok(RunState { calls, ..s })
    })
    .map(|r| {
        r.map(|r| match r {
            Ok(s) if s.closed => Err(s),
            other => other,
        })
    })
}

/// Adds a finished call's usage to its run, closing it once a limit is reached.
pub fn run_usage(
    store: &dyn Store,
    run: RunAt<'_>,
    limits: &RunLimits,
    tokens: u64,
    spend_micros: u64,
    now: u64,
) -> Result<RunState, StoreError> {
    let r = update_run(store, run, now, limits.forget_after(), &|s| {
        let tokens = s.tokens.saturating_add(tokens);
        let spend_micros = s.spend_micros.saturating_add(spend_micros);
        let closed = s.closed
            || limits.tokens.is_some_and(|max| tokens >= max)
            || limits.spend.is_some_and(|max| spend_micros >= max.0);
        Ok(RunState {
            closed,
            tokens,
            spend_micros,
            ..s
        })
    })?;
    Ok(r.map(|r| r.unwrap_or_else(|s| s)).unwrap_or_default())
}

/// Default slots of the idempotency table (`limits.idempotency_slots`): the most request
/// ids remembered at once (bounded memory).
pub const DEFAULT_IDEMPOTENCY_SLOTS: u64 = 65_536;
/// Slots a request id may occupy: its home slot and the next ones.
pub const IDEMPOTENCY_PROBES: u64 = 4;

/// A request id of `key_id` to check: the id, the window (seconds) and the table's size.
#[derive(Debug, Clone, Copy)]
pub struct RequestIdAt<'a> {
    pub key_id: &'a str,
    pub request_id: &'a str,
    pub window: u64,
    pub slots: u64,
}

/// What recording a first use did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Remembered {
    /// In a free slot (empty, or its id's window over).
    Free,
    /// Over the oldest live id of the neighbourhood, whose repeat is no longer caught.
    Evicted,
}

/// Records a request id; `Ok(Err(first_seen))` when it was seen within the window. An id is
/// written to the first of its slots that is empty or holds an expired id, so it is
/// remembered for its whole window unless more ids than the neighbourhood holds arrive
/// within one window: then the oldest of them gives way (its repeat is no longer caught).
pub fn first_use(
    store: &dyn Store,
    id: RequestIdAt<'_>,
    now: u64,
) -> Result<Result<Remembered, u64>, StoreError> {
    let h = fingerprint(id.key_id, id.request_id);
    let slots = id.slots.max(1);
    for _ in 0..RETRIES {
        // (key, cas, seen, free): where to write; a free slot beats the oldest live one.
        let mut target: Option<(String, Option<u32>, u64, bool)> = None;
        for i in 0..IDEMPOTENCY_PROBES.min(slots) {
            let key = format!("weir:idem:{}", h.wrapping_add(i) % slots);
            let (value, cas) = store.get(&key)?;
            let empty = value.is_none();
            let (stored_hash, seen) = decode(value);
            let live = !empty && now.saturating_sub(seen) < id.window;
            if live && stored_hash == h {
                return Ok(Err(seen));
            }
            let better = match &target {
                None => true,
                Some((.., free)) if *free => false,
                Some((_, _, oldest, _)) => !live || seen < *oldest,
            };
            if better {
                target = Some((key, cas, seen, !live));
            }
            // Ids go to the first free slot, and a slot once written is never empty again:
            // no id of this neighbourhood was written past an empty slot.
            if empty {
                break;
            }
        }
        let Some((key, cas, _, free)) = target else {
            return Err(StoreError::Unavailable);
        };
        match store.set(&key, &encode(h, now), cas) {
            Ok(()) => {
                return Ok(Ok(if free {
                    Remembered::Free
                } else {
                    Remembered::Evicted
                }))
            }
            Err(StoreError::Conflict) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(StoreError::Unavailable)
}

#[cfg(test)]
pub mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::collections::HashMap;

    /// The store the filter gets from Envoy, in memory.
    #[derive(Default)]
    pub struct MemStore {
        pub data: RefCell<HashMap<String, (Vec<u8>, u32)>>,
        pub broken: bool,
    }

    impl Store for MemStore {
        fn get(&self, key: &str) -> Result<(Option<Vec<u8>>, Option<u32>), StoreError> {
            if self.broken {
                return Err(StoreError::Unavailable);
            }
            Ok(match self.data.borrow().get(key) {
                Some((v, cas)) => (Some(v.clone()), Some(*cas)),
                None => (None, None),
            })
        }
        fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError> {
            let mut data = self.data.borrow_mut();
            let current = data.get(key).map(|(_, c)| *c);
            if cas != current {
                return Err(StoreError::Conflict);
            }
            data.insert(key.to_string(), (value.to_vec(), current.unwrap_or(0) + 1));
            Ok(())
        }
    }

    impl MemStore {
        pub fn keys(&self) -> Vec<String> {
            self.data.borrow().keys().cloned().collect()
        }
    }

    /// A counter's value in `window` (0 if absent or older).
    fn read(store: &MemStore, key: &str, window: u64) -> u64 {
        let (stored_window, n, _) = decode_owned(store.get(key).unwrap().0);
        if stored_window == window {
            n
        } else {
            0
        }
    }

    fn run<'a>(key_id: &'a str, run_id: &'a str) -> RunAt<'a> {
        RunAt {
            key_id,
            run_id,
            slots: DEFAULT_RUN_SLOTS,
        }
    }

    fn idem<'a>(key_id: &'a str, request_id: &'a str, window: u64) -> RequestIdAt<'a> {
        RequestIdAt {
            key_id,
            request_id,
            window,
            slots: DEFAULT_IDEMPOTENCY_SLOTS,
        }
    }

    fn limits(toml_text: &str) -> LimitSet {
        toml::from_str(toml_text).unwrap()
    }

    #[test]
    fn windows() {
        let now = 1_795_336_805; // 2026-11-22T08:40:05Z
        assert_eq!(Window::Minute.bounds(now), (1_795_336_800, 1_795_336_860));
        let (start, end) = Window::Month.bounds(now);
        assert_eq!(
            humantime::format_rfc3339_seconds(
                std::time::UNIX_EPOCH + std::time::Duration::from_secs(start)
            )
            .to_string(),
            "2026-11-01T00:00:00Z"
        );
        assert_eq!(
            humantime::format_rfc3339_seconds(
                std::time::UNIX_EPOCH + std::time::Duration::from_secs(end)
            )
            .to_string(),
            "2026-12-01T00:00:00Z"
        );
        let (_, end) = Window::Month.bounds(1_796_604_800); // 2026-12-06
        assert_eq!(
            humantime::format_rfc3339_seconds(
                std::time::UNIX_EPOCH + std::time::Duration::from_secs(end)
            )
            .to_string(),
            "2027-01-01T00:00:00Z"
        );
    }

    /// What another worker does to the store.
    type OtherWorker<'a> = Box<dyn FnOnce(&MemStore) + 'a>;

    /// Another worker's write lands between this worker's read and its write, once.
    struct Racing<'a> {
        store: &'a MemStore,
        race: RefCell<Option<OtherWorker<'a>>>,
    }

    impl Store for Racing<'_> {
        fn get(&self, key: &str) -> Result<(Option<Vec<u8>>, Option<u32>), StoreError> {
            self.store.get(key)
        }
        fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), StoreError> {
            if let Some(race) = self.race.borrow_mut().take() {
                race(self.store);
            }
            self.store.set(key, value, cas)
        }
    }

    #[test]
    fn a_first_write_racing_another_is_retried_not_lost() {
        let store = MemStore::default();
        // Both workers read "no counter"; the other one creates it first.
        let first = |store: &dyn Store, counters| {
            reserve_counter(
                store,
                "user",
                "k/u",
                counters,
                "requests",
                Window::Minute,
                7,
                1,
                10,
            )
            .unwrap()
        };
        let named = "weir:user:k/u:requests:minute";
        let racing = Racing {
            store: &store,
            race: RefCell::new(Some(Box::new(move |s: &MemStore| {
                assert!(matches!(
                    first(s, Counters::Named),
                    Reserved::Added { value: 1, .. }
                ));
            }))),
        };
        assert!(matches!(
            first(&racing, Counters::Named),
            Reserved::Added { value: 2, .. }
        ));
        assert_eq!(read(&store, named, 7), 2);
        // A user's slot: the other worker claims it first, for the same user.
        let slotted = Counters::Slotted {
            owner: 3,
            slots: 16,
        };
        let racing = Racing {
            store: &store,
            race: RefCell::new(Some(Box::new(move |s: &MemStore| {
                assert!(matches!(
                    first(s, slotted),
                    Reserved::Added { value: 1, .. }
                ));
            }))),
        };
        assert_eq!(
            first(&racing, slotted),
            Reserved::Added {
                key: "weir:user-slot:requests:minute:3".into(),
                value: 2
            }
        );
        // The same for a write after a read of an existing value.
        let racing = Racing {
            store: &store,
            race: RefCell::new(Some(Box::new(|s: &MemStore| {
                adjust(s, named, 7, 0, 5).unwrap();
            }))),
        };
        adjust(&racing, named, 7, 0, 1).unwrap();
        assert_eq!(read(&store, named, 7), 8);
        // And for idempotency: the racing first use of the same id wins, this one is a repeat.
        let racing = Racing {
            store: &store,
            race: RefCell::new(Some(Box::new(|s: &MemStore| {
                assert_eq!(
                    first_use(s, idem("k", "req-1", 60), 100).unwrap(),
                    Ok(Remembered::Free)
                );
            }))),
        };
        assert_eq!(
            first_use(&racing, idem("k", "req-1", 60), 100).unwrap(),
            Err(100)
        );
    }

    #[test]
    fn requests_per_minute_allows_exactly_n_then_frees() {
        let store = MemStore::default();
        let l = limits("requests_per_minute = 3");
        let subjects = [Subject {
            scope: "key",
            id: "k".into(),
            limits: &l,
            counters: Counters::Named,
        }];
        let now = 1_000_040; // 20 s into a minute
        for i in 0..3 {
            let a = admit(&store, &subjects, now, Estimate::default()).unwrap();
            assert_eq!(a.requests.unwrap().remaining, 2 - i);
        }
        match admit(&store, &subjects, now, Estimate::default()).unwrap_err() {
            Refusal::RateLimited {
                retry_after,
                requests,
                ..
            } => {
                assert_eq!(retry_after, 40);
                assert_eq!(requests.unwrap().remaining, 0);
            }
            other => panic!("{other:?}"),
        }
        assert!(admit(&store, &subjects, now + 40, Estimate::default()).is_ok());
    }

    #[test]
    fn reservations_settle_and_refusals_roll_back() {
        let store = MemStore::default();
        let key = limits("tokens_per_day = 1000");
        let team = limits("requests_per_minute = 1");
        let subjects = [
            Subject {
                scope: "key",
                id: "k".into(),
                limits: &key,
                counters: Counters::Named,
            },
            Subject {
                scope: "team",
                id: "t".into(),
                limits: &team,
                counters: Counters::Named,
            },
        ];
        let a = admit(
            &store,
            &subjects,
            100,
            Estimate {
                tokens: 600,
                spend_micros: 0,
            },
        )
        .unwrap();
        settle(&store, &a, 150, 0).unwrap();
        assert_eq!(read(&store, "weir:key:k:tokens:day", 0), 150);
        // The team refuses: the key's tokens reserved first are given back.
        assert!(matches!(
            admit(
                &store,
                &subjects,
                101,
                Estimate {
                    tokens: 600,
                    spend_micros: 0
                }
            ),
            Err(Refusal::RateLimited { .. })
        ));
        assert_eq!(read(&store, "weir:key:k:tokens:day", 0), 150);
    }

    #[test]
    fn spend_budget_is_402() {
        let store = MemStore::default();
        let l = limits("spend_per_day = \"1.00\"");
        let subjects = [Subject {
            scope: "team",
            id: "t".into(),
            limits: &l,
            counters: Counters::Named,
        }];
        let a = admit(
            &store,
            &subjects,
            100,
            Estimate {
                tokens: 0,
                spend_micros: 600_000,
            },
        )
        .unwrap();
        settle(&store, &a, 0, 700_000).unwrap();
        match admit(
            &store,
            &subjects,
            100,
            Estimate {
                tokens: 0,
                spend_micros: 400_000,
            },
        )
        .unwrap_err()
        {
            Refusal::Budget { what } => assert!(what.contains("budget of 1 per day"), "{what}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn unavailable_store() {
        let store = MemStore {
            broken: true,
            ..Default::default()
        };
        let l = limits("requests_per_minute = 3");
        let subjects = [Subject {
            scope: "key",
            id: "k".into(),
            limits: &l,
            counters: Counters::Named,
        }];
        assert_eq!(
            admit(&store, &subjects, 1, Estimate::default()),
            Err(Refusal::Unavailable)
        );
    }

    #[test]
    fn usage_snapshot_for_policies() {
        let store = MemStore::default();
        let config: LimitsConfig = toml::from_str(
            "[per_key]\nrequests_per_minute = 5\n[teams.t]\nspend_per_day = \"2.5\"",
        )
        .unwrap();
        let subjects = subjects(&config, "k", "t", None);
        admit(
            &store,
            &subjects,
            100,
            Estimate {
                tokens: 0,
                spend_micros: 700,
            },
        )
        .unwrap();
        let snap = usage_snapshot(&store, &subjects, 100);
        assert_eq!(snap["key"]["requests_per_minute"]["used"], 1);
        assert_eq!(snap["key"]["requests_per_minute"]["limit"], 5);
        assert_eq!(snap["team"]["spend_per_day"]["used"], 700);
        assert_eq!(snap["team"]["spend_per_day"]["limit"], 2_500_000);
    }

    /// Admits one request of `user` (of key `k`); the user's remaining requests, or `None`
    /// when the user was not counted, or the refusal.
    fn admit_user(
        store: &MemStore,
        config: &LimitsConfig,
        user: &str,
        now: u64,
    ) -> Result<Option<u64>, Refusal> {
        let subjects = subjects(config, "k", "t", Some(user));
        let a = admit(store, &subjects, now, Estimate::default())?;
        assert_eq!(a.uncounted, a.requests.is_none());
        Ok(a.requests.map(|r| r.remaining))
    }

    #[test]
    fn end_users_live_in_a_bounded_table() {
        let store = MemStore::default();
        let config: LimitsConfig =
            toml::from_str("user_slots = 64\n[per_user]\nrequests_per_minute = 2").unwrap();
        let minute = 6_000_000; // a minute's start
        let mut uncounted = 0;
        for i in 0..1_000 {
            let now = minute + (i / 100) * 60; // ten minutes, 100 new users in each
            match admit_user(&store, &config, &format!("user-{i}"), now).unwrap() {
                Some(remaining) => assert_eq!(remaining, 1),
                None => uncounted += 1,
            }
        }
        // 64 slots, one table: the store never holds more, however many users were seen.
        assert_eq!(store.keys().len(), 64, "{:?}", store.keys());
        // Each minute 100 users want 64 slots: the rest are let through uncounted; a
        // neighbourhood fills before the table does.
        assert!((360..=800).contains(&uncounted), "{uncounted}");
        // A counted user is limited in its own slot, the same minute...
        let now = minute + 9 * 60 + 30;
        let counted = (900..1_000)
            .map(|i| format!("user-{i}"))
            .find(|u| {
                let subjects = subjects(&config, "k", "t", Some(u));
                usage_snapshot(&store, &subjects, now)["user"]["requests_per_minute"]["used"] == 1
            })
            .unwrap();
        assert_eq!(admit_user(&store, &config, &counted, now).unwrap(), Some(0));
        assert!(matches!(
            admit_user(&store, &config, &counted, now),
            Err(Refusal::RateLimited { .. })
        ));
        // ...and the next minute every slot is free again: the first 64 users are counted.
        let next = minute + 10 * 60;
        let counted = (0..64)
            .filter(|i| admit_user(&store, &config, &format!("new-{i}"), next).unwrap() == Some(1))
            .count();
        assert!(counted >= 40, "{counted}");
        assert_eq!(store.keys().len(), 64);
    }

    #[test]
    fn users_sharing_a_home_slot_count_apart() {
        let store = MemStore::default();
        let l = limits("requests_per_minute = 2\ntokens_per_day = 1000");
        let user = |owner| Subject {
            scope: "user",
            id: format!("k/{owner}"),
            limits: &l,
            counters: Counters::Slotted { owner, slots: 16 },
        };
        // Owners 5 and 21 both start at slot 5 of 16.
        let (a, b) = ([user(5)], [user(21)]);
        let estimate = Estimate {
            tokens: 400,
            spend_micros: 0,
        };
        let first_a = admit(&store, &a, 100, estimate).unwrap();
        let first_b = admit(&store, &b, 100, estimate).unwrap();
        assert_eq!(first_a.requests.unwrap().remaining, 1);
        assert_eq!(first_b.requests.unwrap().remaining, 1);
        assert_eq!(
            first_a.reservations[0].key,
            "weir:user-slot:requests:minute:5"
        );
        assert_eq!(
            first_b.reservations[0].key,
            "weir:user-slot:requests:minute:6"
        );
        // Settling goes to each one's own slot.
        settle(&store, &first_a, 10, 0).unwrap();
        settle(&store, &first_b, 20, 0).unwrap();
        assert_eq!(read(&store, "weir:user-slot:tokens:day:5", 0), 10);
        assert_eq!(read(&store, "weir:user-slot:tokens:day:6", 0), 20);
        admit(&store, &a, 100, estimate).unwrap();
        assert!(admit(&store, &a, 100, estimate).is_err());
        assert_eq!(
            admit(&store, &b, 100, estimate)
                .unwrap()
                .requests
                .unwrap()
                .remaining,
            0
        );
        // A refusal gives back the tokens reserved in the user's own slot only.
        assert_eq!(read(&store, "weir:user-slot:tokens:day:5", 0), 410);
        assert_eq!(read(&store, "weir:user-slot:tokens:day:6", 0), 420);
        // The user's usage, for policies.
        let snap = usage_snapshot(&store, &b, 100);
        assert_eq!(snap["user"]["requests_per_minute"]["used"], 2);
        assert_eq!(snap["user"]["tokens_per_day"]["used"], 420);
    }

    #[test]
    fn a_full_neighbourhood_lets_users_through_uncounted_and_keys_still_count() {
        let store = MemStore::default();
        let config: LimitsConfig = toml::from_str(
            "user_slots = 8\n[per_user]\nrequests_per_minute = 1\n[per_key]\nrequests_per_minute = 10",
        )
        .unwrap();
        for i in 0..8 {
            assert_eq!(
                admit_user(&store, &config, &format!("u{i}"), 60).unwrap(),
                Some(0)
            );
        }
        let subjects = subjects(&config, "k", "t", Some("u8"));
        let a = admit(&store, &subjects, 60, Estimate::default()).unwrap();
        assert!(a.uncounted);
        assert_eq!(
            a.requests.unwrap().remaining,
            1,
            "the key's limit counted it"
        );
        assert_eq!(
            usage_snapshot(&store, &subjects, 60)["user"]["requests_per_minute"]["used"],
            serde_json::Value::Null
        );
        let a = admit(&store, &subjects, 60, Estimate::default()).unwrap();
        assert_eq!(a.requests.unwrap().remaining, 0);
        assert!(matches!(
            admit(&store, &subjects, 60, Estimate::default()),
            Err(Refusal::RateLimited { what, .. }) if what.contains("(key k)")
        ));
        // Counted users are still refused at their limit.
        assert!(admit_user(&store, &config, "u3", 60).is_err());
    }

    #[test]
    fn default_is_an_empty_table() {
        assert_eq!(LimitsConfig::default(), toml::from_str("").unwrap());
    }

    #[test]
    fn a_users_counters_are_found_by_key_and_user() {
        let config: LimitsConfig = toml::from_str("[per_user]\nrequests_per_minute = 1").unwrap();
        let owner = |key, user| match subjects(&config, key, "t", Some(user))[0].counters {
            Counters::Slotted { owner, slots } => {
                assert_eq!(slots, DEFAULT_USER_SLOTS);
                owner
            }
            Counters::Named => panic!("a user's counters are slotted"),
        };
        assert_eq!(owner("k", "alice"), owner("k", "alice"));
        assert_ne!(owner("k", "alice"), owner("k2", "alice"));
        assert_ne!(owner("k", "alice"), owner("k", "bob"));
        assert_ne!(owner("k/a", "b"), owner("k", "a/b"));
    }

    #[test]
    fn runs_close_at_their_limits() {
        let store = MemStore::default();
        let l = RunLimits {
            calls: Some(2),
            tokens: Some(100),
            spend: None,
            forget_after_seconds: None,
        };
        let call = |id: &str, fresh: bool| {
            run_call(&store, run("k", id), &l, fresh, 1000)
                .unwrap()
                .unwrap()
        };
        assert!(call("r", false).is_ok());
        assert!(call("r", false).is_ok());
        assert!(call("r", false).is_err(), "third call closes the run");
        assert!(call("r", false).is_err());
        assert!(call("r", true).is_ok(), "a fresh run starts again");
        run_usage(&store, run("k", "r"), &l, 120, 0, 1000).unwrap();
        assert!(call("r", false).is_err(), "the token limit closed it");
        assert!(call("other", false).is_ok());
        // The same run id under another key is another run.
        assert!(run_call(&store, run("k2", "r"), &l, false, 1000)
            .unwrap()
            .unwrap()
            .is_ok());
    }

    /// Runs never add store keys beyond the fixed table, however many there are.
    #[test]
    fn runs_live_in_a_bounded_table() {
        let store = MemStore::default();
        let l = RunLimits::default();
        for i in 0..5000 {
            run_call(&store, run("k", &format!("run-{i}")), &l, false, 1000)
                .unwrap()
                .unwrap()
                .unwrap();
        }
        let keys = store.keys();
        assert!(keys.len() <= 5000);
        assert!(keys.iter().all(|k| {
            k.strip_prefix("weir:run:")
                .and_then(|n| n.parse::<u64>().ok())
                .is_some_and(|n| n < DEFAULT_RUN_SLOTS)
        }));
        // Each run kept its own count.
        let again = run_call(&store, run("k", "run-42"), &l, false, 1000)
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(again.calls, 2);
    }

    #[test]
    fn a_small_run_table_counts_as_many_runs_as_it_has_slots() {
        let store = MemStore::default();
        let l = RunLimits::default();
        let counted: Vec<bool> = (0..10)
            .map(|i| {
                let id = format!("r{i}");
                let at = RunAt {
                    key_id: "k",
                    run_id: &id,
                    slots: 4,
                };
                run_call(&store, at, &l, false, 1000).unwrap().is_some()
            })
            .collect();
        assert_eq!(counted, [[true; 4].as_slice(), &[false; 6]].concat());
        assert_eq!(store.keys().len(), 4);
    }

    /// When every slot a run may use holds an active run, the run is not counted (and not
    /// refused); once a holder has been idle long enough, its slot goes to the newcomer, and
    /// the forgotten run starts afresh.
    #[test]
    fn a_full_neighbourhood_leaves_a_run_uncounted_until_a_run_is_forgotten() {
        let store = MemStore::default();
        let l = RunLimits {
            calls: Some(1),
            forget_after_seconds: Some(3600),
            ..RunLimits::default()
        };
        let newcomer = fingerprint("k", "newcomer");
        for i in 0..RUN_PROBES {
            let key = format!("weir:run:{}", newcomer.wrapping_add(i) % DEFAULT_RUN_SLOTS);
            let closed = RunState {
                closed: true,
                calls: 1,
                ..RunState::default()
            };
            store
                .set(&key, &encode_run(1000 + i, 1000 + i * 10, closed), None)
                .unwrap();
        }
        assert_eq!(
            run_call(&store, run("k", "newcomer"), &l, false, 2000),
            Ok(None)
        );
        assert_eq!(
            run_usage(&store, run("k", "newcomer"), &l, 10, 0, 2000),
            Ok(RunState::default())
        );
        // An hour after the oldest holder's last call, the newcomer takes that slot.
        let counted = run_call(&store, run("k", "newcomer"), &l, false, 1000 + 3600)
            .unwrap()
            .unwrap();
        assert_eq!(counted.map(|s| s.calls), Ok(1));
        let home = format!("weir:run:{}", newcomer % DEFAULT_RUN_SLOTS);
        let (value, _) = store.get(&home).unwrap();
        assert_eq!(decode_run(value).map(|(fp, _, _)| fp), Some(newcomer));
        // The call over the limit closes the run (and is recorded); a refused call on the
        // closed run writes nothing, so it does not keep the run alive.
        assert!(run_call(&store, run("k", "newcomer"), &l, false, 5000)
            .unwrap()
            .unwrap()
            .is_err());
        assert!(run_call(&store, run("k", "newcomer"), &l, false, 6000)
            .unwrap()
            .unwrap()
            .is_err());
        let (value, _) = store.get(&home).unwrap();
        assert_eq!(
            decode_run(value).map(|(_, touched, s)| (touched, s.closed)),
            Some((5000, true))
        );
    }

    #[test]
    fn fingerprints_are_never_zero_and_differ() {
        assert_ne!(fingerprint("k", "r"), 0);
        assert_ne!(fingerprint("k", "r"), fingerprint("k2", "r"));
        // The separator keeps ("ab", "c") and ("a", "bc") apart.
        assert_ne!(fingerprint("ab", "c"), fingerprint("a", "bc"));
    }

    #[test]
    fn idempotency() {
        let store = MemStore::default();
        assert_eq!(
            first_use(&store, idem("k", "req-1", 600), 100).unwrap(),
            Ok(Remembered::Free)
        );
        assert_eq!(
            first_use(&store, idem("k", "req-1", 600), 200).unwrap(),
            Err(100)
        );
        assert_eq!(
            first_use(&store, idem("other-key", "req-1", 600), 200).unwrap(),
            Ok(Remembered::Free)
        );
        assert_eq!(
            first_use(&store, idem("k", "req-1", 600), 800).unwrap(),
            Ok(Remembered::Free),
            "outside the window"
        );
    }

    #[test]
    fn request_ids_are_remembered_for_their_window_in_a_small_table() {
        let store = MemStore::default();
        let at = |id: &'static str| RequestIdAt {
            key_id: "k",
            request_id: id,
            window: 600,
            slots: 4,
        };
        // Four ids fill the table; each repeat is caught, whatever slots they share.
        for (i, id) in ["a", "b", "c", "d"].into_iter().enumerate() {
            assert_eq!(
                first_use(&store, at(id), 100 + i as u64).unwrap(),
                Ok(Remembered::Free)
            );
        }
        for (i, id) in ["a", "b", "c", "d"].into_iter().enumerate() {
            assert_eq!(first_use(&store, at(id), 200).unwrap(), Err(100 + i as u64));
        }
        assert_eq!(store.keys().len(), 4);
        // A fifth id within the window: the oldest gives way.
        assert_eq!(
            first_use(&store, at("e"), 300).unwrap(),
            Ok(Remembered::Evicted)
        );
        assert_eq!(first_use(&store, at("e"), 301).unwrap(), Err(300));
        assert_eq!(first_use(&store, at("b"), 301).unwrap(), Err(101));
        // Once "b" has expired, a new id takes its slot, and every live id stays.
        assert_eq!(
            first_use(&store, at("f"), 101 + 600).unwrap(),
            Ok(Remembered::Free)
        );
        for (id, seen) in [("c", 102), ("d", 103), ("e", 300), ("f", 701)] {
            assert_eq!(first_use(&store, at(id), 701).unwrap(), Err(seen), "{id}");
        }
        // "a" gave way to "e": its repeat is a first use again.
        assert_eq!(
            first_use(&store, at("a"), 701).unwrap(),
            Ok(Remembered::Evicted)
        );
        assert_eq!(store.keys().len(), 4);
    }
}
