# The paper's stage 2 at α × 0.25: about the α the paper's 150k-token vocabulary gives the same
# uncertainty that a 14-token vocabulary gives α (H / log V).
out_dir = 'out/rcd_paper_alpha025'
alpha_mode = 'entropy'
alpha_scale = 0.25
rollout_steps = 0
