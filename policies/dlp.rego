# Data-loss prevention: the standard rules, plus no card numbers and no credentials in
# prompts. Reads message text, so it declares needs_messages.
package weir.policy.dlp

import data.weir.lib.baseline

needs_messages := true

deny contains msg if some msg in baseline.deny

max_tokens := baseline.max_tokens

tier := baseline.tier

# 13-19 digits in groups of 4 with optional spaces or dashes: the shape of a card number.
# (The engine's regex has no Unicode classes: `(?-u)` makes \d and \b ASCII.)
card_number := `(?-u)\b(?:\d{4}[ -]?){3}\d{1,7}\b`

# Secrets that must never go to a model provider.
credential_patterns := {
	"an OpenAI API key": `(?-u)\bsk-(?:proj-)?[A-Za-z0-9_-]{20,}`,
	"an Anthropic API key": `(?-u)\bsk-ant-[A-Za-z0-9_-]{20,}`,
	"a Weir API key": `(?-u)\bwk_live_[A-Za-z0-9]{20,}`,
	"an AWS access key id": `(?-u)\bAKIA[0-9A-Z]{16}\b`,
	"a GitHub token": `(?-u)\bghp_[A-Za-z0-9]{36}\b`,
}

deny contains "The request contains what looks like a payment card number; remove it and try again." if {
	some m in input.messages
	regex.match(card_number, m.text)
}

# The reason names the kind of secret, never the secret.
deny contains msg if {
	some m in input.messages
	some kind, pattern in credential_patterns
	regex.match(pattern, m.text)
	msg := sprintf("The request contains what looks like %s; remove it and try again.", [kind])
}

tags contains "policy:dlp"
