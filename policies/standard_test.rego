package weir.policy.standard_test

import data.weir.policy.standard

# Monday 2026-11-23 10:00 UTC and 22:00 UTC.
monday_10 := 1795428000

monday_22 := 1795471200

req(team, plan, model, unix) := {
	"caller": {"team": team, "metadata": {"plan": plan}},
	"model": {"requested": model},
	"time": {"unix": unix},
}

test_free_plan_cannot_use_best if {
	reasons := standard.deny with input as req("web", "free", "best", monday_10)
	count(reasons) == 1
	some r in reasons
	contains(r, "plan `free` does not include `best`")
}

test_free_plan_can_use_fast if {
	count(standard.deny) == 0 with input as req("web", "free", "fast", monday_10)
}

test_enterprise_can_use_anything if {
	count(standard.deny) == 0 with input as req("web", "enterprise", "best", monday_22)
}

test_unknown_plan_is_refused if {
	some r in standard.deny with input as req("web", "platinum", "fast", monday_10)
	contains(r, "not known")
}

test_key_without_plan_is_not_restricted if {
	count(standard.deny) == 0 with input as {"caller": {"team": "web", "metadata": {}}, "model": {"requested": "best"}, "time": {"unix": monday_10}}
}

test_support_is_capped if {
	standard.max_tokens == 256 with input as req("support", "pro", "fast", monday_10)
}

test_other_teams_are_not_capped if {
	not standard.max_tokens with input as req("web", "pro", "fast", monday_10)
}

test_contractors_get_best_in_business_hours_only if {
	count(standard.deny) == 0 with input as req("contractors", "enterprise", "best", monday_10)
	some r in standard.deny with input as req("contractors", "enterprise", "best", monday_22)
	contains(r, "08:00-18:00")
}

test_contractors_get_other_tiers_any_time if {
	count(standard.deny) == 0 with input as req("contractors", "enterprise", "fast", monday_22)
}

test_free_plan_asking_for_balanced_is_served_fast if {
	standard.tier == "fast" with input as req("web", "free", "balanced", monday_10)
	count(standard.deny) == 0 with input as req("web", "free", "balanced", monday_10)
}

test_no_tier_is_forced_otherwise if {
	not standard.tier with input as req("web", "pro", "balanced", monday_10)
}
