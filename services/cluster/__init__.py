"""The cluster's parts as the driver and the CLI hold them: the Ray edges of the other packages.

rollout_pool.py (N rollout workers behind one call, elastic, fault-tolerant), learner_group.py (M DeepSpeed
ranks in one placement group), reward_client.py (the reward actor, recreated after a crash), control.py (the
run's named control actor and JobStatus), fault_log.py (every fault a line and a count), startup.py (join or
start Ray; the one CPU process environment).
"""
