//! Metric names with labels. proxy-wasm metrics have no labels, so Weir encodes them in
//! the name (`weir_requests_total;endpoint=chat_completions;status=200`) and Envoy's
//! `stats_tags` (see envoy/envoy.yaml) turns each `;label=value` into a real Prometheus label.

/// The labels Weir uses; envoy.yaml has one `stats_tags` entry for each.
pub const LABELS: [&str; 8] = [
    "endpoint",
    "tier",
    "decision",
    "status",
    "direction",
    "model",
    "team",
    "policy",
];

/// A label value that cannot break the encoding: no `;` or `=`, printable, bounded.
pub fn label_value(value: &str) -> String {
    let v: String = value
        .chars()
        .take(128)
        .map(|c| {
            if c.is_ascii_graphic() && c != ';' && c != '=' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if v.is_empty() {
        "none".to_string()
    } else {
        v
    }
}

/// `name;label=value;...` with sanitised values.
pub fn name(base: &str, labels: &[(&str, &str)]) -> String {
    let mut out = String::from(base);
    for (label, value) in labels {
        out.push(';');
        out.push_str(label);
        out.push('=');
        out.push_str(&label_value(value));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(
            name(
                "weir_requests_total",
                &[
                    ("endpoint", "chat"),
                    ("model", "gpt-4.1"),
                    ("team", "a;b=c")
                ]
            ),
            "weir_requests_total;endpoint=chat;model=gpt-4.1;team=a_b_c"
        );
        assert_eq!(label_value(""), "none");
        assert_eq!(label_value("x y\n"), "x_y_");
    }
}
