"""Reinforcement learning for MiniCPM-V 4.5 (training spec §5): hybrid short/long GRPO with rule and
RLPR rewards, then RLAIF-V preference pairs and DPO.

    rewards   one pure function per reward term, the router and the group scorer
    grpo      modes per prompt, group advantages, the clipped policy loss, the policy update
    rollout   prompts, batched rollouts through the inference engine, teacher-forced log-probs,
              RLPR scoring, greedy evaluation per mode
    vllm_rollout  the same rollouts from vLLM serving the current policy (CUDA + vLLM only)
    dpo       DPO loss and pair log-probs; RLAIF-V claims -> questions -> judge -> pairs
    cli       `minicpmv train rl`, `minicpmv train dpo`, `minicpmv data rlaifv`

The programs are `recipes/rl.py` and `recipes/dpo.py`. Submodules are imported explicitly
(`from minicpmv.rl import rewards`); `rewards` and `cli` do not import torch.
"""
