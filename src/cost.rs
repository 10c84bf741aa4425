//! Cost from a price table, in integers only.
//!
//! Prices are written per million tokens as decimals ("0.15") and held as integer
//! micro-units per million tokens. tokens × (micro-units / 1M tokens) is then an exact
//! integer number of pico-units (10^-12): no rounding until a total is shown, and no
//! floating point anywhere.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::usage::Usage;

/// A price in micro-units per million tokens, parsed exactly from its decimal text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Price(pub u64);

impl Price {
    pub fn parse(text: &str) -> Result<Price, String> {
        let bad = || {
            format!(
                "{text:?} is not a price: write a decimal such as \"0.15\" (at most 6 decimals)"
            )
        };
        let (whole, frac) = text.trim().split_once('.').unwrap_or((text.trim(), ""));
        if whole.is_empty() && frac.is_empty()
            || !whole.bytes().all(|b| b.is_ascii_digit())
            || !frac.bytes().all(|b| b.is_ascii_digit())
            || frac.len() > 6
        {
            return Err(bad());
        }
        let whole: u64 = if whole.is_empty() {
            0
        } else {
            whole.parse().map_err(|_| bad())?
        };
        let frac_micros: u64 = format!("{frac:0<6}").parse().map_err(|_| bad())?;
        whole
            .checked_mul(1_000_000)
            .and_then(|w| w.checked_add(frac_micros))
            .map(Price)
            .ok_or_else(bad)
    }
}

impl fmt::Display for Price {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = format!("{}.{:06}", self.0 / 1_000_000, self.0 % 1_000_000);
        f.write_str(text.trim_end_matches('0').trim_end_matches('.'))
    }
}

impl Serialize for Price {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Price {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Text {
            S(String),
            U(u64),
            // A TOML/JSON float: its shortest round-trip text is the decimal that was written.
            F(f64),
        }
        let text = match Text::deserialize(d)? {
            Text::S(s) => s,
            Text::U(u) => u.to_string(),
            Text::F(f) if f.is_finite() && f >= 0.0 => format!("{f}"),
            Text::F(f) => return Err(serde::de::Error::custom(format!("{f} is not a price"))),
        };
        Price::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// A model's prices, per million tokens. Cached input and cache writes default to the
/// input price when the provider does not price them differently.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelPrice {
    pub input: Price,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cached_input: Option<Price>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_write: Option<Price>,
    pub output: Price,
}

/// What a request cost, exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cost {
    pub picos: u128,
}

impl Cost {
    /// Rounded half up to whole micro-units, for display and metrics.
    pub fn micros(&self) -> u64 {
        u64::try_from((self.picos + 500_000) / 1_000_000).unwrap_or(u64::MAX)
    }
}

impl ModelPrice {
    /// Each token is priced once: cached and cache-write tokens are part of
    /// `prompt_tokens` and are taken out of the uncached input; reasoning tokens are part
    /// of `completion_tokens`.
    pub fn cost(&self, usage: &Usage) -> Cost {
        let uncached = usage
            .prompt_tokens
            .saturating_sub(usage.cached_tokens)
            .saturating_sub(usage.cache_write_tokens);
        let p = |tokens: u64, price: Price| u128::from(tokens) * u128::from(price.0);
        Cost {
            picos: p(uncached, self.input)
                + p(usage.cached_tokens, self.cached_input.unwrap_or(self.input))
                + p(
                    usage.cache_write_tokens,
                    self.cache_write.unwrap_or(self.input),
                )
                + p(usage.completion_tokens, self.output),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parse_prices() {
        assert_eq!(Price::parse("0.15").unwrap(), Price(150_000));
        assert_eq!(Price::parse("2.5").unwrap(), Price(2_500_000));
        assert_eq!(Price::parse("10").unwrap(), Price(10_000_000));
        assert_eq!(Price::parse(".075").unwrap(), Price(75_000));
        assert_eq!(Price::parse("0.000001").unwrap(), Price(1));
        for bad in ["", ".", "-1", "1.0000001", "1e3", "abc", "1.2.3"] {
            assert!(Price::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(Price(150_000).to_string(), "0.15");
        assert_eq!(Price(10_000_000).to_string(), "10");
    }

    #[test]
    fn floats_from_toml_are_read_as_written() {
        let p: ModelPrice =
            toml::from_str("input = 0.15\noutput = 0.6\ncached_input = \"0.075\"").unwrap();
        assert_eq!(
            (p.input, p.output, p.cached_input),
            (Price(150_000), Price(600_000), Some(Price(75_000)))
        );
        assert!(toml::from_str::<ModelPrice>("input = -1.0\noutput = 1").is_err());
    }

    #[test]
    fn cost_counts_each_token_once() {
        let price = ModelPrice {
            input: Price::parse("2.50").unwrap(),
            cached_input: Some(Price::parse("1.25").unwrap()),
            cache_write: Some(Price::parse("3.75").unwrap()),
            output: Price::parse("10").unwrap(),
        };
        let usage = Usage {
            prompt_tokens: 1000, // 600 uncached + 300 cached + 100 written to the cache
            cached_tokens: 300,
            cache_write_tokens: 100,
            completion_tokens: 50, // reasoning tokens are inside this
            reasoning_tokens: 20,
            total_tokens: 1050,
        };
        // 600*2.5 + 300*1.25 + 100*3.75 + 50*10 = 1500 + 375 + 375 + 500 = 2750 micro-units
        let cost = price.cost(&usage);
        assert_eq!(cost.picos, 2_750_000_000);
        assert_eq!(cost.micros(), 2750);
    }

    #[test]
    fn tiny_costs_stay_exact() {
        let price = ModelPrice {
            input: Price(150_000),
            cached_input: None,
            cache_write: None,
            output: Price(600_000),
        };
        let one = Usage {
            prompt_tokens: 7,
            completion_tokens: 0,
            ..Default::default()
        };
        // 7 tokens at 0.15 per million = 1.05 micro-units, exactly 1_050_000 picos.
        assert_eq!(price.cost(&one).picos, 1_050_000);
        assert_eq!(price.cost(&one).micros(), 1);
    }

    proptest! {
        #[test]
        fn summing_exact_costs_never_drifts(n in 1u64..10_000, tokens in 0u64..100_000) {
            let price = ModelPrice { input: Price(150_000), cached_input: None, cache_write: None, output: Price(600_000) };
            let u = Usage { prompt_tokens: tokens, completion_tokens: tokens / 3, ..Default::default() };
            let sum: u128 = (0..n).map(|_| price.cost(&u).picos).sum();
            let whole = Usage { prompt_tokens: tokens * n, completion_tokens: (tokens / 3) * n, ..Default::default() };
            prop_assert_eq!(sum, price.cost(&whole).picos);
        }
    }
}
