# The recipe's baseline arm: stage 1 continued for stage 2's schedule, no residual and no rollout
# (stage 1's loss on the same data).  python train_stage2.py config/baseline.py
out_dir = 'out/baseline'
alpha_mode = 'none'
rollout_steps = 0
