# The recipe's RCD arm (train_stage2.py's defaults): onpolicy's rollout states, half the rows also
# reading the rollout's residual at α × 0.25.
out_dir = 'out/rcd_onpolicy'
alpha_mode = 'entropy'
alpha_scale = 0.25
rollout_steps = 4
rollout_plain = 0.5
