package weir.policy.dlp_test

import data.weir.policy.dlp

with_text(text) := {
	"caller": {"team": "web", "metadata": {}},
	"model": {"requested": "fast"},
	"time": {"unix": 1795428000},
	"messages": [{"role": "system", "text": "You are helpful."}, {"role": "user", "text": text}],
}

test_declares_it_reads_messages if {
	dlp.needs_messages
}

test_card_numbers_are_blocked if {
	some r in dlp.deny with input as with_text("charge 4111 1111 1111 1111 please")
	contains(r, "payment card")
}

test_card_numbers_without_spaces_are_blocked if {
	count(dlp.deny) == 1 with input as with_text("card 5500005555555559")
}

test_api_keys_are_blocked_without_echoing_them if {
	reasons := dlp.deny with input as with_text("my key is sk-proj-abcdefghijklmnopqrstuvwx123")
	some r in reasons
	contains(r, "an OpenAI API key")
	not contains(r, "abcdefghij")
}

test_aws_keys_are_blocked if {
	some r in dlp.deny with input as with_text("AKIAIOSFODNN7EXAMPLE")
	contains(r, "AWS")
}

test_ordinary_text_passes if {
	count(dlp.deny) == 0 with input as with_text("Order 12345 ships on 2026-11-30; call 555-0100.")
}

test_baseline_still_applies if {
	some r in dlp.deny with input as {"caller": {"team": "web", "metadata": {"plan": "free"}}, "model": {"requested": "best"}, "time": {"unix": 1795428000}, "messages": []}
	contains(r, "plan")
}
