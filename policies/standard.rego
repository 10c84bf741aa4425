# The default policy: plans, team caps and business hours.
package weir.policy.standard

import data.weir.lib.baseline

deny contains msg if some msg in baseline.deny

max_tokens := baseline.max_tokens

tier := baseline.tier

tags contains "policy:standard"
