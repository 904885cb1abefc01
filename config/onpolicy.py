# The recipe's onpolicy arm: every row a 0-4-step no-grad threshold-decoding rollout state of the
# target itself, no residual: decoding's own states alone.
out_dir = 'out/onpolicy'
alpha_mode = 'none'
rollout_steps = 4
rollout_plain = 0.0
