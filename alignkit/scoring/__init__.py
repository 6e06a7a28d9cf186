"""Scorers: what `alignkit sample` ranks candidates by, and what `grpo` rewards and `eval` will reuse.

`specs` holds the recipe shapes (light, with `check_scorers`, run before any weights load); `build` turns
specs into scorers (`rules`: exact_match and regex, `custom`: your Python function, `reward_model`: a
trained reward model, `reasoning`: math answers, the think format and the overlong penalty) and weighs their
values into one total per candidate; `trl_rewards` hands built scorers to TRL as reward functions.
"""
