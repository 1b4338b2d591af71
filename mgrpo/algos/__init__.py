"""The algorithm core: pure functions on tensors and plain values (no config, no I/O).

Each step of DESIGN.md section 1 maps to one function:
- trajectory entropy H(y):            entropy.logprobs_and_entropy, entropy.trajectory_entropy
- IQR filter T = Q1 - k * IQR:        filtering.iqr_keep_mask
- majority vote over equivalent answers: answers.extract_answer, voting.majority_vote
- binary rewards, GRPO advantages:    rewards.pseudo_label_rewards / ground_truth_rewards, rewards.grpo_advantages
- clipped PG - beta * KL:             losses.policy_loss (ppo_clip_loss, kl_penalty, agg_loss)
- theta_k <- m theta_k + (1 - m) theta_q: ema.ema_update_
- presets mgrpo / srt / gt_grpo:      registry.ALGORITHM_PRESETS
"""
