# Rules every sample policy includes. Data: policies/data.json.
package weir.lib.baseline

# Plans restrict tiers. A key's plan comes from its metadata (`metadata = { plan = "pro" }`);
# keys without a plan are not restricted; an unknown plan is refused.
deny contains msg if {
	plan := input.caller.metadata.plan
	not data.plans[plan]
	msg := sprintf("The plan `%s` is not known to this gateway.", [plan])
}

deny contains msg if {
	plan := input.caller.metadata.plan
	allowed := data.plans[plan]
	not "*" in allowed
	not input.model.requested in allowed
	not tier
	msg := sprintf("Your plan `%s` does not include `%s` (it includes: %s).", [plan, input.model.requested, concat(", ", allowed)])
}

# A plan may be served a cheaper tier instead of being refused.
tier := data.plan_downgrades[input.caller.metadata.plan][input.model.requested]

# Some teams have a ceiling on output tokens.
max_tokens := data.team_caps[input.caller.team]

# Some tiers are open to some teams only in business hours (local time of the office).
local_seconds := input.time.unix + (data.business_hours.utc_offset_hours * 3600)

local_weekday := ((floor(local_seconds / 86400) + 3) % 7) + 1

local_hour := floor((local_seconds % 86400) / 3600)

in_business_hours if {
	local_weekday in data.business_hours.days
	local_hour >= data.business_hours.start_hour
	local_hour < data.business_hours.end_hour
}

deny contains msg if {
	input.caller.team in data.business_hours.teams
	input.model.requested in data.business_hours.tiers
	not in_business_hours
	bh := data.business_hours
	msg := sprintf("`%s` is open to your team only %02d:00-%02d:00 (%s), Monday to Friday.", [input.model.requested, bh.start_hour, bh.end_hour, utc(bh.utc_offset_hours)])
}

utc(offset) := sprintf("UTC+%d", [offset]) if offset >= 0

utc(offset) := sprintf("UTC%d", [offset]) if offset < 0
