# The paper's stage 2: the frozen stage-1 reference (reference_ckpt, by default the checkpoint the
# target starts from) reads the same x_t; entropy α, every row a residual row.
out_dir = 'out/rcd_paper'
alpha_mode = 'entropy'
alpha_scale = 1.0
rollout_steps = 0
