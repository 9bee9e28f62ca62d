"""shaped_reward.py's score, three seconds late: for a test that must keep a GRPO job running until its time limit, so
that the minutes it waits pass asleep in the reward rather than computing steps nobody reads (measured on the lab, a
4:30 job: 68 steps without the pause, 31 with 1 s, 12 with 3 s, 7 with 6 s). Short enough not to delay the first step much: it
must come before the time-limit warning, ~2 min after the job starts on a slow machine."""

import time

from shaped_reward import compute_score as shaped


def compute_score(data_source, solution_str, ground_truth, extra_info=None, **kwargs):
    time.sleep(3.0)
    return shaped(data_source, solution_str, ground_truth, extra_info, **kwargs)
