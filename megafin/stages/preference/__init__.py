"""The DPO family (stage `dpo`): preference pairs, a pair loss chosen by `dpo.loss` (losses/), and the frozen
reference's log-probs (reference.py) for the losses that use one."""
